"""The sandbox manager: snapshot a workspace, start a sandbox over it, and work inside.

Backends only start and stop isolated environments and hand back a runner channel;
everything done inside (commands, files, git) is the same for all of them and lives here.
"""

from __future__ import annotations

import posixpath
import shlex
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import bwrap_backend, docker_backend
from .channel import ExecResult
from .errors import SandboxError
from .image import DEFAULT_IMAGE
from .snapshot import Snapshot, take_snapshot

# The whole environment of every command: nothing of the host's, no keys.
COMMAND_ENV = {
    "HOME": "/home/offload",
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "PYTHONDONTWRITEBYTECODE": "1",
    # a read-only workspace belongs to root: git must still read it
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": "*",
}


@dataclass
class SandboxConfig:
    """The `sandbox.*` settings the manager needs."""

    backend: str = "auto"
    image: str = DEFAULT_IMAGE
    network: str = "off"
    memory: str = "2g"
    cpus: float = 2.0
    pids: int = 512
    disk: str = "4g"  # bubblewrap: the size of the sandbox's writable layer, /tmp and home together
    docker_host: str | None = None


@dataclass(frozen=True)
class ChangedFile:
    """One file of a sandbox's result, with both sides for a three-way merge."""

    path: str
    status: str  # "added" | "modified" | "deleted"
    base: bytes | None
    result: bytes | None


@dataclass
class Sandbox:
    """A workspace in an isolated environment, at `snapshot.base` when it starts."""

    id: str
    snapshot: Snapshot
    backend: object
    workdir: str
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
            argv, cwd=self.resolve(workdir), env=dict(COMMAND_ENV), timeout=timeout,
            on_output=on_output, cancel=cancel,
        )

    def git(self, *args: str, timeout: float = 120.0) -> ExecResult:
        result = self.runner.run(
            ["git", *args], cwd=self.backend.workspace, env=dict(COMMAND_ENV), timeout=timeout
        )
        if result.exit_code != 0:
            raise SandboxError(f"git {shlex.join(args)} failed in the sandbox: {result.output.strip()}")
        return result

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
        """Commit everything the agent changed; None when nothing changed."""
        with self._lock:
            self.git("add", "-A")
            if self.git("status", "--porcelain").output.strip() == "":
                return None
            self.git("commit", "-q", "--no-verify", "-m", message)
            return self.git("rev-parse", "HEAD").output.strip()

    def diff(self) -> str:
        """The committed and uncommitted change against the base, as a unified diff."""
        self.git("add", "-A")
        return self.git("diff", "--cached", "--binary", self.snapshot.base).output

    def export(self) -> list[ChangedFile]:
        """Every changed file with its base and result content."""
        self.git("add", "-A")
        listing = self.git("diff", "--cached", "--name-status", "--no-renames", "-z", self.snapshot.base).output
        fields = listing.split("\0")
        changes = []
        for status, path in zip(fields[0::2], fields[1::2]):
            kind = {"A": "added", "D": "deleted"}.get(status, "modified")
            result = None if kind == "deleted" else self.runner.read_file(path)
            changes.append(ChangedFile(path, kind, self.snapshot.base_file(path), result))
        return changes

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

    def docker(self):
        if self._docker is None:
            self._docker = docker_backend.connect(self.config.docker_host)
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
            self.docker()
        elif choice == "bubblewrap":
            bwrap_backend.available()
        elif choice == "auto":
            try:
                self.docker()
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
        return take_snapshot(directory, self.cache_dir)

    def create(self, snapshot: Snapshot, labels: dict | None = None, read_only: bool = False) -> Sandbox:
        """A new sandbox over `snapshot`; the agent phase has no network unless configured, and a
        read-only sandbox (Ask) cannot change a byte of its workspace."""
        sandbox_id = uuid.uuid4().hex[:12]
        limits = dict(memory=self.config.memory, cpus=self.config.cpus, pids=self.config.pids,
                      network=self.config.network == "on", read_only=read_only)
        all_labels = {"offload.owner": self.owner, **(labels or {})}
        if self.backend_name() == "docker":
            backend = docker_backend.create(self.docker(), image=self.config.image, snapshot_path=snapshot.path,
                                            sandbox_id=sandbox_id, labels=all_labels, **limits)
        else:
            backend = bwrap_backend.create(self.cache_dir, snapshot_path=snapshot.path, sandbox_id=sandbox_id,
                                           labels=all_labels, disk=self.config.disk, **limits)
        workdir = posixpath.join(backend.workspace, snapshot.subdir) if snapshot.subdir else backend.workspace
        sandbox = Sandbox(sandbox_id, snapshot, backend, workdir)
        self._sandboxes[sandbox_id] = sandbox
        return sandbox

    def get(self, sandbox_id: str) -> Sandbox | None:
        return self._sandboxes.get(sandbox_id)

    def list(self) -> list[dict]:
        if self.backend_name() == "docker":
            return docker_backend.list_sandboxes(self.docker(), self.owner)
        return bwrap_backend.list_sandboxes(self.cache_dir, self.owner)

    def destroy(self, sandbox_id: str) -> None:
        sandbox = self._sandboxes.pop(sandbox_id, None)
        if sandbox:
            sandbox.destroy()

    def close(self) -> None:
        for sandbox_id in list(self._sandboxes):
            self.destroy(sandbox_id)
