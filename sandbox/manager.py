"""The sandbox manager: snapshot a workspace, start a sandbox over it, and work inside.

Backends only start and stop isolated environments and hand back a runner channel;
everything done inside (commands, files, git) is the same for all of them and lives here.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from . import bwrap_backend, docker_backend, hosts, layer
from .pool import WarmPool
from .setup import Environment, Setup
from .setup import sweep as sweep_setups
from .channel import ExecResult
from .environment import command_env
from .errors import SandboxError
from .image import DEFAULT_IMAGE
from .layer import parse_size
from .result import ChangedFile, RefusedChange, receive
from .snapshot import Snapshot, take_snapshot

logger = logging.getLogger(__name__)

# The whole environment of every command: nothing of the host's, no keys.
COMMAND_ENV = {
    "HOME": "/home/offload",
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "PYTHONDONTWRITEBYTECODE": "1",
    # a read-only workspace belongs to root: git must still read it; and git's housekeeping stays
    # in its command, since what a command leaves running is killed when it ends
    "GIT_CONFIG_COUNT": "2",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
    "GIT_CONFIG_KEY_1": "gc.autoDetach",
    "GIT_CONFIG_VALUE_1": "false",
}


EXPORT_TIMEOUT = 1800.0  # seconds for git to pack the change: 20,000 files or a 100 MB file take a few
MAX_CHANGE = 8 << 30  # a pack this large is refused rather than filling the host's disk


@dataclass
class SandboxConfig:
    """The `sandbox.*` settings the manager needs."""

    backend: str = "auto"
    image: str = DEFAULT_IMAGE
    network: str = "off"
    memory: str = "2g"
    cpus: float = 2.0
    pids: int = 512
    disk: str = "4g"  # the size of the sandbox's writable layer, /tmp and home together
    docker_host: str | None = None
    docker_hosts: list[str] = field(default_factory=list)  # several engines (hosts.py); empty: docker_host's
    snapshot_cache: str = "20g"  # the bound of the snapshot and setup caches, together
    setup: str = ""  # shell text, or a script file of the repository, run once per environment (setup.py)
    setup_secrets: list[str] = field(default_factory=list)  # host variables only the setup script gets
    setup_timeout: float = 30.0  # minutes
    warm: int = 0  # started, unclaimed sandboxes kept per engine and image (pool.py); 0: none
    env: dict = field(default_factory=dict)  # variables for every command (environment.py)
    ca_bundle: str = ""  # a PEM file on this host the sandbox trusts; "": none


class WarmKey(NamedTuple):
    """What a warm sandbox is started with, beyond the manager's limits; a claim must match it."""

    backend: str
    engine: str  # the Docker engine's URL as configured ("" the default one; "" on bubblewrap)
    image: str | None  # None on bubblewrap
    home: Path | None  # a cached setup's home, below the sandbox's


@dataclass
class Sandbox:
    """A workspace in an isolated environment, at `snapshot.base` when it starts."""

    id: str
    snapshot: Snapshot
    backend: object
    workdir: str
    warm: bool = False  # claimed from the warm pool rather than started for its task
    env: dict = field(default_factory=lambda: dict(COMMAND_ENV))  # its commands' environment
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def runner(self):
        return self.backend.runner

    def resolve(self, workdir: str | None) -> str:
        """An absolute directory inside the workspace for a command's `workdir`."""
        if not workdir:
            return self.workdir
        path = posixpath.normpath(posixpath.join(self.workdir, workdir))
        root = self.backend.workspace
        if path != root and not path.startswith(root + "/"):
            raise SandboxError(f"workdir {workdir!r} is outside the workspace {root}")
        return path

    def run(
        self,
        argv: list[str],
        workdir: str | None = None,
        timeout: float = 600.0,
        on_output: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> ExecResult:
        return self.runner.run(
            argv, cwd=self.resolve(workdir), env=dict(self.env), timeout=timeout,
            on_output=on_output, cancel=cancel,
        )

    def git(self, *args: str, timeout: float = 120.0) -> ExecResult:
        result = self.runner.run(
            ["git", *args], cwd=self.backend.workspace, env=self._git_env(), timeout=timeout
        )
        if result.exit_code != 0:
            raise SandboxError(f"git {shlex.join(args)} failed in the sandbox: {result.output.strip()}")
        return result

    def _git_env(self) -> dict:
        """Offload's own git commands: the fixed environment, on the sandbox's PATH."""
        return {**COMMAND_ENV, "PATH": self.env["PATH"]}

    def _rel(self, path: str) -> str:
        """A workspace-relative path for a path given relative to the task's directory."""
        full = posixpath.normpath(posixpath.join(self.workdir, path))
        return posixpath.relpath(full, self.backend.workspace)

    def read_file(self, path: str) -> bytes | None:
        return self.runner.read_file(self._rel(path))

    def write_file(self, path: str, data: bytes) -> None:
        self.runner.write_file(self._rel(path), data)

    def delete_file(self, path: str) -> None:
        self.runner.delete_file(self._rel(path))

    def commit(self, message: str) -> str | None:
        """Commit everything the agent changed; None when nothing changed. An index the agent's
        commands left unreadable is rebuilt from HEAD: the work tree is what is committed."""
        with self._lock:
            try:
                self.git("add", "-A")
            except SandboxError:
                self.runner.run(["rm", "-f", ".git/index"], cwd=self.backend.workspace, env=self._git_env())
                self.git("read-tree", "HEAD")
                self.git("add", "-A")
            if self.git("status", "--porcelain").output.strip() == "":
                return None
            self.git("commit", "-q", "--no-verify", "-m", message)
            return self.git("rev-parse", "HEAD").output.strip()

    def export(self, dest: Path) -> list[ChangedFile]:
        """Bring the change home: commit what is left, have git here write a pack of the commits on
        top of the base, and let the host's git check it into the result repository `dest`
        (result.py). Returns the changed files; a change that fails the checks raises RefusedChange."""

        def write_pack(path: Path) -> str:
            self.commit("Uncommitted work")
            head = self.git("rev-parse", "--verify", "HEAD^{commit}").output.strip()
            if head == self.snapshot.base:
                return head
            with open(path, "wb") as pack:
                made = self.runner.run(
                    ["git", "pack-objects", "--stdout", "--revs", "-q"], cwd=self.backend.workspace,
                    env=self._git_env(), stdin=f"{head}\n^{self.snapshot.base}\n", timeout=EXPORT_TIMEOUT,
                    max_output=MAX_CHANGE, binary=True, on_output=pack.write)
            if made.output_limited:
                raise RefusedChange(f"the change is over {MAX_CHANGE >> 30} GiB; nothing of it was taken")
            if made.exit_code != 0:
                raise SandboxError(f"git pack-objects failed in the sandbox: {made.output.strip()}")
            return head

        return receive(write_pack, self.snapshot.base, self.snapshot.path / ".git", dest)

    def destroy(self) -> None:
        self.backend.destroy()


class SandboxManager:
    """Creates sandboxes from workspace snapshots on the configured backend."""

    def __init__(self, config: SandboxConfig, cache_dir: Path, owner: str = "offload") -> None:
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.owner = owner
        self._docker = None
        self._backend: str | None = None
        self._sandboxes: dict[str, Sandbox] = {}
        self._pool = WarmPool(config.warm, self._start_warm, self._stop_warm) if config.warm > 0 else None

    def engines(self) -> hosts.DockerHosts:
        """The Docker engines sandboxes are placed on: sandbox.docker_hosts, else the one engine."""
        if self._docker is None:
            self._docker = hosts.DockerHosts(self.config.docker_hosts or [self.config.docker_host or ""])
        return self._docker

    def backend_name(self) -> str:
        """The backend `sandbox.backend` picks here: auto is Docker where an engine answers, else
        bubblewrap. A SandboxError names the fix when the choice cannot work."""
        if self._backend is None:
            self._backend = self._choose_backend()
        return self._backend

    def _choose_backend(self) -> str:
        choice = self.config.backend
        if choice == "docker":
            self.engines().check()
        elif choice == "bubblewrap":
            bwrap_backend.available()
        elif choice == "auto":
            engines = self.engines()  # a malformed sandbox.docker_hosts is an error, not a reason to fall back
            try:
                engines.check()
                return "docker"
            except SandboxError as docker_problem:
                try:
                    bwrap_backend.available()
                except SandboxError as bwrap_problem:
                    raise SandboxError(f"no sandbox backend works here. Docker: {docker_problem} "
                                       f"Bubblewrap: {bwrap_problem}") from bwrap_problem
                return "bubblewrap"
        else:
            raise SandboxError(f"sandbox.backend is {choice!r}; it must be \"auto\", \"docker\" or \"bubblewrap\"")
        return choice

    def snapshot(self, directory: str | Path) -> Snapshot:
        return take_snapshot(directory, self.cache_dir, parse_size(self.config.snapshot_cache))

    def create(self, snapshot: Snapshot, labels: dict | None = None, read_only: bool = False,
               local: bool | None = None, on_setup: Callable[[dict], None] | None = None,
               cancel: threading.Event | None = None) -> Sandbox:
        """A new sandbox over `snapshot`; the agent phase has no network unless configured, and a
        read-only sandbox (Ask) cannot change a byte of its workspace. `local` says whether the
        Docker engine shares this host's filesystem (by default: when it answers on a unix socket).
        With `sandbox.setup`, the sandbox starts from the setup's cached result, made first when
        missing; `on_setup` sees its progress and output, `cancel` stops it. With `sandbox.warm`,
        a warm sandbox of the same engine and image is claimed when one is ready."""
        sandbox_id = uuid.uuid4().hex[:12]
        limits = dict(memory=self.config.memory, cpus=self.config.cpus, pids=self.config.pids,
                      network=self.config.network == "on", read_only=read_only, ca_bundle=self.config.ca_bundle)
        all_labels = {"offload.owner": self.owner, "offload.tree": snapshot.tree, **(labels or {})}
        setup = self._setup(snapshot, on_setup, cancel)
        environment, warm = Environment(image=self.config.image), None
        if self.backend_name() == "docker":
            def make(client, on_local: bool):
                nonlocal environment, warm
                is_local = on_local if local is None else local
                if setup is not None:
                    environment = setup.docker(client, self.config.image, snapshot,
                                               layers=docker_backend.overlay_problem(client, is_local) is None)
                    all_labels.update(environment.labels)
                engine = next((e for e in self.engines().engines if e.client is client), None)
                if engine is not None and docker_backend.overlay_problem(client, is_local) is None:
                    key = WarmKey("docker", engine.url, environment.image, environment.home)
                    if (warm := self._claim(key, snapshot, environment, read_only, all_labels)) is not None:
                        return warm
                return docker_backend.create(
                    client, image=environment.image, snapshot=snapshot, sandbox_id=sandbox_id, labels=all_labels,
                    disk=self.config.disk, cache_dir=self.cache_dir, local=is_local, lowers=environment.lowers,
                    home_lower=environment.home, **limits)

            backend = self.engines().create(self.config.image, make)
        else:
            if setup is not None:
                environment = setup.bubblewrap(snapshot)
                all_labels.update(environment.labels)
            warm = self._claim(WarmKey("bubblewrap", "", None, environment.home), snapshot, environment,
                               read_only, all_labels)
            backend = warm or bwrap_backend.create(
                self.cache_dir, snapshot_path=snapshot.path, sandbox_id=sandbox_id, labels=all_labels, image=self.config.image,
                disk=self.config.disk, lowers=environment.lowers, home_lower=environment.home, **limits)
        if not read_only:
            try:
                environment.exclude_from_git(backend.runner)
            except Exception:
                backend.destroy()
                raise
        workdir = posixpath.join(backend.workspace, snapshot.subdir) if snapshot.subdir else backend.workspace
        env = command_env(COMMAND_ENV, getattr(backend, "env", {}), self.config.ca_bundle, self.config.env)
        sandbox = Sandbox(backend.id, snapshot, backend, workdir, warm=warm is not None, env=env)
        self._sandboxes[sandbox.id] = sandbox
        return sandbox

    def prewarm(self) -> None:
        """Start filling the warm pool now, for sandboxes without `sandbox.setup` (with it, each
        environment's sandboxes are kept warm from its first task on)."""
        if self._pool is None or self.config.setup.strip():
            return
        if self.backend_name() == "bubblewrap":
            return self._pool.want(WarmKey("bubblewrap", "", None, None))
        for engine in self.engines().answering():
            if docker_backend.overlay_problem(engine.client, engine.local) is None:
                self._pool.want(WarmKey("docker", engine.url, self.config.image, None))

    def warm_ready(self) -> int:
        """Warm sandboxes started and not claimed yet."""
        return self._pool.ready() if self._pool is not None else 0

    def _claim(self, key: WarmKey, snapshot: Snapshot, environment: Environment, read_only: bool,
               labels: dict):
        """A warm sandbox of `key` holding the snapshot's workspace, or None: then one starts cold.
        A claim that fails costs that sandbox only; one whose workspace does not show inside (this
        host's mounts do not propagate to the engine) ends warm sandboxes for the key."""
        if self._pool is None:
            return None
        while (warm := self._pool.take(key)) is not None:
            try:
                warm.runner.ping()
            except SandboxError:  # it died since it started (its engine restarted, say): the next one
                self._stop_warm(key, warm)
                continue
            try:
                if key.backend == "docker":
                    docker_backend.claim(warm, snapshot, labels, read_only, environment.lowers)
                else:
                    bwrap_backend.claim(warm, snapshot.path, labels, read_only, environment.lowers)
                if warm.runner.read_file(".git/HEAD") is None:
                    self._pool.drop(key, "the workspace mounted on this host does not show inside the sandbox")
                    raise SandboxError("the claimed workspace does not show inside the sandbox")
                return warm
            except Exception as e:
                self._stop_warm(key, warm)
                logger.warning("a warm sandbox could not be claimed, one starts cold: %s", e)
                return None
        return None

    def _start_warm(self, key: WarmKey):
        """A sandbox started without its workspace, for the pool."""
        sandbox_id = uuid.uuid4().hex[:12]
        # a warm sandbox's home is its setup result's: the label keeps that result cached while it waits
        setup = {"offload.setup": key.home.parent.name} if key.home is not None else {}
        settings = dict(sandbox_id=sandbox_id, labels={"offload.owner": self.owner, **setup}, memory=self.config.memory,
                        cpus=self.config.cpus, pids=self.config.pids, network=self.config.network == "on",
                        disk=self.config.disk, home_lower=key.home, ca_bundle=self.config.ca_bundle)
        if key.backend == "bubblewrap":
            return bwrap_backend.create(self.cache_dir, snapshot_path=None, image=self.config.image, **settings)
        engine = hosts.engine_for(key.engine)
        if not engine.answering():
            raise engine.problem or SandboxError(f"the Docker engine at {engine.name} does not answer")
        return docker_backend.create(engine.client, image=key.image, snapshot=None, cache_dir=self.cache_dir,
                                     local=True, **settings)

    def _stop_warm(self, key: WarmKey, sandbox) -> None:
        if key.backend == "docker":
            sandbox = hosts.EngineSandbox(sandbox, hosts.engine_for(key.engine))  # a gone engine is no error
        sandbox.destroy()

    def _setup(self, snapshot: Snapshot, log: Callable[[dict], None] | None,
               cancel: threading.Event | None) -> Setup | None:
        """The setup phase for a sandbox over `snapshot`, or None without `sandbox.setup`."""
        if not self.config.setup.strip():
            return None
        return Setup(script=self.config.setup, secrets=list(self.config.setup_secrets),
                     network=self.config.network in ("setup", "on"), timeout=self.config.setup_timeout * 60,
                     cache_dir=self.cache_dir, env=dict(COMMAND_ENV), extra_env=dict(self.config.env),
                     ca_bundle=self.config.ca_bundle, image=self.config.image, disk=self.config.disk,
                     limits=dict(memory=self.config.memory, cpus=self.config.cpus, pids=self.config.pids),
                     log=log or (lambda event: None), cancel=cancel, cache_limit=parse_size(self.config.snapshot_cache),
                     labels={"offload.owner": self.owner, "offload.tree": snapshot.tree})

    def get(self, sandbox_id: str) -> Sandbox | None:
        return self._sandboxes.get(sandbox_id)

    def list(self) -> list[dict]:
        if self.backend_name() == "docker":
            # a claimed warm sandbox's tree and task are in its directory's labels, not its container's
            claimed = {labels["offload.sandbox"]: labels for _, labels in layer.directories(self.cache_dir)}
            return [{**claimed.get(s["offload.sandbox"], {}), **s} for s in self.engines().list_sandboxes(self.owner)]
        return bwrap_backend.list_sandboxes(self.cache_dir, self.owner)

    def destroy(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox:
            sandbox.destroy()

    def close(self) -> None:
        """Destroy every sandbox of this manager, the warm ones included."""
        if self._pool is not None:
            self._pool.close()
        for sandbox_id in list(self._sandboxes):
            self.destroy(sandbox_id)

    def sweep(self) -> list[str]:
        """Remove what sandboxes of processes of this machine that died left behind, on both
        backends: containers, volumes, layers, directories, cgroups, processes, unfinished setups.
        Returns their ids."""
        try:
            clients = [engine.client for engine in self.engines().answering()]
        except SandboxError:  # a malformed sandbox.docker_hosts
            clients = []
        removed = [i for client in clients or [None] for i in docker_backend.sweep(client, self.cache_dir)]
        return removed + bwrap_backend.sweep(self.cache_dir) + sweep_setups(self.cache_dir)
