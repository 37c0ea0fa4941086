"""The setup phase: `sandbox.setup` runs once per environment, and later sandboxes start from its result.

Installing dependencies needs the network and time; the agent phase has neither to spare. So the
setup script runs in a sandbox of its own (with network when `sandbox.network` is `setup` or
`on`), once per key: the base image, the script, the network mode, the names of the secrets and
the repository's lockfiles (never the secrets' values). What it leaves is cached:

- on Docker, an image `offload-setup:<key>` committed on the engine that ran it (system paths);
- on this host, what it added to the workspace and to the sandbox user's home, as directories
  that later sandboxes get as extra lower layers under their overlays (a Docker sandbox on a
  remote engine finds them inside the image instead).

Only paths that git does not track are kept from the workspace, so the user's newer sources
always win over what setup saw; they are added to the sandbox's `.git/info/exclude` so they
never show in a task's diff. What this host keeps leaves the setup sandbox as a tar stream that
tar writes inside and tarfile checks here (nothing lands outside its directory, no device
files): no directory of this host's is bound into a setup sandbox. Secrets named in
`sandbox.setup_secrets` reach the script's own environment only; afterwards everything setup
wrote is searched for their values, and a hit fails the setup with nothing cached.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import docker
import docker.errors
import docker.types

from . import bwrap_backend, cache, docker_backend, layer, owner
from .environment import command_env
from .errors import SandboxError
from .image import DEFAULT_IMAGE, SANDBOX_UID
from .snapshot import private

IMAGE = "offload-setup"  # the repository of setup images: offload-setup:<key16>
OWNER = ".owner"  # in an unfinished result's directory: the process making it
LOCKFILES = frozenset({
    "pyproject.toml", "setup.py", "setup.cfg", "poetry.lock", "uv.lock", "Pipfile", "Pipfile.lock",
    "package.json", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml", "bun.lockb",
    "Cargo.toml", "Cargo.lock", "go.mod", "go.sum", "Gemfile", "Gemfile.lock", "composer.json", "composer.lock",
    "mix.lock", "pubspec.lock", "Package.resolved", "flake.lock", ".tool-versions",
})
_REQUIREMENTS = re.compile(r"requirements[^/]*\.(txt|in)$")
# Root in a Docker setup container, as in a Dockerfile's RUN, but with only the capabilities
# package managers use (owners, modes, dropping to an unprivileged user).
_ROOT_CAPS = ["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "SETUID", "SETGID", "KILL"]
_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# After a Docker setup, what the image keeps besides system paths, all of it owned by the sandbox
# user ($1): nothing of the workspace and home when they are layers on this host, else the kept
# workspace paths (NUL-separated on stdin) and the home.
_KEEP = "/offload-keep"
_DOCKER_LAYERS = """set -e
find /workspace "$HOME" -mindepth 1 -delete
chown -R "$1" /workspace "$HOME"
"""
_DOCKER_IMAGE = f"""set -e
mkdir -p {_KEEP}
xargs -0 -r cp -a --no-preserve=xattr --parents -t {_KEEP} --
find /workspace -mindepth 1 -delete
cp -a {_KEEP}/. /workspace/
rm -rf {_KEEP}
chown -R "$1" /workspace "$HOME"
"""
_MAX_EXPORT = 64 << 30  # bytes of one tar stream out of a setup sandbox
_CARRIED = 64 << 20  # bytes of the layer a Docker setup container's additions are carried on


class SetupError(SandboxError):
    """The setup phase failed; nothing was cached."""


@dataclass(frozen=True)
class Environment:
    """What a sandbox starts from: its image (Docker), the cached lower layers of its workspace
    and home (None: none), and the workspace paths setup added."""

    image: str | None = None
    workspace: Path | None = None
    home: Path | None = None
    paths: tuple[str, ...] = ()
    key: str | None = None  # the setup result's: a sandbox started from it carries it as a label

    @property
    def labels(self) -> dict:
        """Labels of a sandbox started from this environment: while it lives, its setup result stays cached."""
        return {"offload.setup": self.key} if self.key else {}

    @property
    def lowers(self) -> tuple[Path, ...]:
        return (self.workspace,) if self.workspace else ()

    def exclude_from_git(self, runner) -> None:
        """Keep what setup added out of the sandbox's diff: `.git/info/exclude` lists it."""
        if not self.paths:
            return
        current = runner.read_file(".git/info/exclude") or b""
        lines = "".join(f"/{_gitignore_escape(p)}\n" for p in self.paths)
        runner.write_file(".git/info/exclude", current.rstrip(b"\n") + b"\n# added by sandbox.setup\n" + lines.encode())


@dataclass
class Setup:
    """One sandbox's setup phase: `sandbox.setup` and its settings, and where it reports."""

    script: str
    secrets: list[str]
    network: bool  # whether setup may reach the network
    timeout: float  # seconds
    cache_dir: Path
    env: dict  # Offload's fixed environment for commands (no secrets)
    limits: dict  # memory, cpus, pids
    disk: str
    log: Callable[[dict], None] = lambda event: None
    cancel: threading.Event | None = None
    labels: dict = field(default_factory=dict)
    extra_env: dict = field(default_factory=dict)  # sandbox.env
    ca_bundle: str = ""  # sandbox.ca_bundle
    image: str = DEFAULT_IMAGE  # sandbox.image, whose root filesystem bubblewrap runs on
    cache_limit: int | None = None  # sandbox.snapshot_cache: setup results and snapshots share it

    @property
    def root(self) -> Path:
        return _root(self.cache_dir)

    def _status(self, status: str, text: str, **data) -> None:
        self.log({"status": status, "text": text, **data})

    # -- what to run, and its key ---------------------------------------------------------------

    def key(self, base: str, snapshot) -> str:
        """The cache key: base image, script (its file's content), network, secret names, lockfiles."""
        tracked = _tracked(snapshot.path)
        script_file = self._script_file(tracked)
        parts = {"base": base, "script": self.script, "network": self.network, "secrets": sorted(self.secrets),
                 "script_file": tracked.get(script_file) if script_file else None,
                 "lockfiles": sorted((path, blob) for path, blob in tracked.items() if _is_lockfile(path))}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def _script_file(self, tracked: dict[str, str]) -> str | None:
        """The repository file `sandbox.setup` names, when it names one rather than being shell text."""
        text = self.script.strip()
        if "\n" in text:
            return None
        path = PurePosixPath(text)
        normal = str(PurePosixPath(*[p for p in path.parts if p != "."])) if path.parts else ""
        return normal if normal in tracked else None

    def argv(self, snapshot) -> list[str]:
        script_file = self._script_file(_tracked(snapshot.path))
        if script_file is None:
            return ["bash", "-lc", self.script]
        if os.access(snapshot.path / script_file, os.X_OK):
            return ["bash", "-lc", 'exec "$0"', f"./{script_file}"]
        return ["bash", "-l", script_file]

    def secret_values(self) -> dict[str, str]:
        values = {}
        for name in self.secrets:
            if name not in os.environ:
                raise SetupError(f"sandbox.setup_secrets names {name}, which is not set in Offload's environment: "
                                 f"set it where Offload runs, or remove it from sandbox.setup_secrets")
            values[name] = os.environ[name]
        return values

    # -- the phase, on either backend -----------------------------------------------------------

    def _run(self, runner, key: str, argv: list[str], env: dict, secrets: dict[str, str],
             helpers: dict | None = None) -> tuple[str, ...]:
        """Run the script; the workspace paths it made that are kept. `helpers` is the environment
        of Offload's own commands after it (default: the script's)."""
        started = time.monotonic()
        self._status("running", f"running the setup script, {'with' if self.network else 'without'} network",
                     key=key[:16], network=self.network, command=shlex.join(argv))
        result = runner.run(argv, cwd=docker_backend.WORKSPACE, env={**env, **secrets}, timeout=self.timeout,
                            on_output=lambda chunk: self.log({"output": _redact(chunk, secrets)}),
                            keep=64 << 10, cancel=self.cancel)
        tail = _redact(result.output, secrets)[-3000:].strip()
        if result.killed or (self.cancel is not None and self.cancel.is_set()):
            raise SetupError("the setup script was cancelled; nothing was cached")
        if result.timed_out:
            raise SetupError(f"the setup script did not finish within {self.timeout / 60:g} minutes "
                             f"(sandbox.setup_timeout) and was stopped; nothing was cached. Its last output:\n{tail}")
        if result.exit_code != 0:
            raise SetupError(f"the setup script failed with exit code {result.exit_code}; nothing was cached. "
                             f"Its last output (all of it is in the task's log):\n{tail}")
        kept = tuple(p.rstrip("/") for p in self._untracked(runner, helpers or env))
        seconds = round(time.monotonic() - started, 1)
        self._status("ran", f"the setup script finished in {seconds} s", seconds=seconds, kept=list(kept))
        return kept

    def _untracked(self, runner, env: dict) -> tuple[str, ...]:
        listing = self._command(runner, ["git", "ls-files", "--others", "--directory", "-z"], env).output
        return tuple(p for p in listing.split("\0") if p)

    def _export(self, runner, env: dict, kept: tuple[str, ...], staging: Path, uid: int | None) -> None:
        """Bring the kept workspace paths and the home out to `staging`'s `workspace` and `home`, owned
        by `uid` (None: whoever runs Offload). Each comes as a tar stream GNU tar writes in the
        sandbox, spooled to a file (memory stays bounded), and is extracted here through `_layer_member`."""
        parts = (("workspace", docker_backend.WORKSPACE, kept), ("home", docker_backend.HOME, (".",)))
        for name, directory, paths in parts:
            (staging / name).mkdir()
            if not paths:
                continue
            spool = staging / f"{name}.tar"
            with open(spool, "wb") as out:
                made = runner.run(["tar", "-c", "-f", "-", "--null", "--verbatim-files-from", "-T", "-"], cwd=directory,
                                  env=env, stdin=_nul(paths), timeout=self.timeout,
                                  max_output=_MAX_EXPORT, binary=True, on_output=out.write)
            if made.output_limited or made.exit_code != 0:
                why = f"over {_MAX_EXPORT >> 30} GiB" if made.output_limited else made.output.strip()[-2000:]
                raise SetupError(f"could not bring the setup's {name} out of its sandbox ({why}); nothing was cached")
            try:
                with tarfile.open(spool, "r:") as tar:
                    tar.extractall(staging / name, filter=lambda member, dest: _layer_member(member, dest, uid))
            except (tarfile.TarError, OSError) as e:
                raise SetupError(f"the setup's {name} could not be kept ({e}); nothing was cached") from e
            spool.unlink()

    def _command(self, runner, argv: list[str], env: dict, stdin: str | None = None):
        result = runner.run(argv, cwd=docker_backend.WORKSPACE, env=env, stdin=stdin, timeout=self.timeout)
        if result.exit_code != 0:
            raise SetupError(f"after the setup script, {argv[0]} failed in the setup sandbox: {result.output.strip()[-2000:]}")
        return result

    def _scan(self, runner, env: dict, secrets: dict[str, str], recursive: list[str], flat: list[str] = ()) -> None:
        """Fail when a file setup wrote holds a secret's value (its longest line), or cannot be searched."""
        for name, value in secrets.items():
            needle = max(value.splitlines() or [""], key=len)
            if not needle.strip():
                continue
            for options, roots in ((["-r"], recursive), (["-d", "skip"], flat)):
                for start in range(0, len(roots), 500):
                    argv = ["grep", "-lZFs", *options, "-D", "skip", "-f", "-", "--", *roots[start:start + 500]]
                    result = runner.run(argv, env=env, stdin=needle + "\n", timeout=self.timeout)
                    hits = [h for h in result.output.split("\0") if h.startswith("/")]
                    if hits:
                        raise SetupError(f"the setup script wrote the value of {name} (sandbox.setup_secrets) into "
                                         f"{hits[0]}; nothing was cached. A secret may be used during "
                                         "setup but must not stay in a file the agent would see.")
                    if result.exit_code != 1:  # 1: no match; else some file could not be read
                        raise SetupError(f"could not search every file the setup script wrote for the value of {name} "
                                         f"(exit code {result.exit_code}); nothing was cached. Leave no file "
                                         "unreadable to its owner.")

    # -- the cache ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[None]:
        """One setup per key at a time, across threads and processes; a waiter is told why it waits."""
        (self.root / ".locks").mkdir(parents=True, exist_ok=True)
        with open(self.root / ".locks" / key, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._status("waiting", "waiting for the same setup, running for another sandbox", key=key[:16])
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _cached(self, key: str) -> tuple[str, ...] | None:
        """The kept paths of a finished setup with this key on this host, or None; a hit counts as
        a use for the cache's eviction (least recently used first)."""
        try:
            paths = tuple(json.loads((self.root / key / "setup.json").read_text())["paths"])
            os.utime(self.root / key)
            return paths
        except (OSError, ValueError, KeyError):
            return None

    def _publish(self, key: str, staging: Path, paths: tuple[str, ...]) -> None:
        """Move a finished setup's directory into place, whole; an existing one stays (it may be mounted)."""
        (staging / "setup.json").write_text(json.dumps({"paths": list(paths), "created": int(time.time())}))
        (staging / OWNER).unlink()
        cache.record_size(staging, staging)
        try:
            os.rename(staging, self.root / key)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
        if self.cache_limit is not None:
            cache.evict(self.cache_dir, self.cache_limit, keep=f"setup:{key}")

    def _staging(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        staging = self.root / f".new-{uuid.uuid4().hex[:12]}"
        staging.mkdir()
        (staging / OWNER).write_text(owner.label())  # so a sweep can tell a dead process's leftovers
        return staging

    def _environment(self, key: str, image: str | None, layers: bool) -> Environment:
        directory = self.root / key
        paths = self._cached(key) or ()
        if not layers:
            return Environment(image=image, paths=paths, key=key)
        return Environment(image=image, workspace=directory / "workspace", home=directory / "home", paths=paths,
                           key=key)

    # -- Docker ---------------------------------------------------------------------------------

    def docker(self, client: docker.DockerClient, image: str, snapshot, layers: bool) -> Environment:
        """The environment of a Docker sandbox on this engine: the setup image, made here unless it
        exists; `layers` when the sandbox's workspace and home are overlays on this host."""
        try:
            base = client.images.get(image)
        except docker.errors.ImageNotFound as e:
            raise SandboxError(f"sandbox image {image!r} is missing: run `offload image build`") from e
        except docker.errors.DockerException as e:
            raise SandboxError(f"the Docker engine could not look up {image!r}: {e}") from e
        key = self.key(f"docker:{base.id}:{'layers' if layers else 'image'}", snapshot)
        tag = f"{IMAGE}:{key[:16]}"
        with self._locked(key):
            if self._cached(key) is not None and _has_image(client, tag, key):
                self._status("cached", f"the setup's cached result is used ({tag})", key=key[:16], image=tag)
            else:
                self._docker_run(client, base, snapshot, key, tag, layers)
        _remove_evicted_images(client, self.root)
        return self._environment(key, tag, layers)

    def _docker_run(self, client, base, snapshot, key: str, tag: str, layers: bool) -> None:
        secrets = self.secret_values()
        staging = self._staging()
        setup_id = uuid.uuid4().hex[:12]
        memory = layer.parse_size(self.limits["memory"])
        labels = {**self.labels, "offload.sandbox": f"setup-{setup_id}", "offload.setup": key,
                  "offload.created": str(int(time.time())), "offload.backend": "docker", owner.LABEL: owner.label()}
        container = runner = network = directory = None
        try:
            additions = docker_backend.Additions(client, base.id, self.ca_bundle, layers)
            if layers:  # what Offload lends comes from a layer of its own, as a sandbox's does: no host path inside
                directory = layer.sandbox_dir(private(self.cache_dir), f"setup-{setup_id}", labels)
                additions.carry(layer.mount(directory, _CARRIED, SANDBOX_UID))
            if self.network:  # a bridge of its own: no other container on it, and no need for docker0
                network = client.networks.create(f"offload-setup-{setup_id}", driver="bridge", labels=labels)
            container = client.containers.create(
                base.id, command=["sleep", "infinity"], entrypoint=[""], name=f"offload-setup-{setup_id}", user="0:0",
                working_dir=docker_backend.WORKSPACE, labels=labels,
                network_mode=network.name if network else "none",
                cap_drop=["ALL"], cap_add=_ROOT_CAPS, security_opt=["no-new-privileges"],
                pids_limit=self.limits["pids"], mem_limit=memory, memswap_limit=memory,
                nano_cpus=int(self.limits["cpus"] * 1e9), init=True, auto_remove=True,
                log_config=docker.types.LogConfig(type=docker.types.LogConfig.types.NONE),
                mounts=additions.mounts)
            container.put_archive("/", docker_backend._workspace_tar(snapshot.path))
            additions.copy_in(container)
            container.start()
            runner = docker_backend._start_runner(client, container, user="0:0", python=additions.python)
            env = command_env({**self.env, "PATH": _ROOT_PATH}, additions.env, self.ca_bundle, self.extra_env)
            helpers = additions.own_tools_first(env)
            self._command(runner, ["mkdir", "-p", docker_backend.HOME], helpers)  # a user's image may have none
            kept = self._run(runner, key, self.argv(snapshot), env, secrets, helpers=helpers)
            if layers:  # the workspace and home become this host's layers, as the sandbox user's
                self._scan(runner, helpers, secrets, [_inside(p) for p in kept] + [docker_backend.HOME])
                self._export(runner, helpers, kept, staging, SANDBOX_UID)
            self._command(runner, ["bash", "-c", _DOCKER_LAYERS if layers else _DOCKER_IMAGE, "finish",
                                   f"{SANDBOX_UID}:{SANDBOX_UID}"], helpers, stdin=_nul(kept))
            changed = container.diff()
            added = {c["Path"] for c in changed if c["Kind"] == 1}
            self._scan(runner, helpers, secrets, [p for p in added if str(PurePosixPath(p).parent) not in added],
                       [c["Path"] for c in changed if c["Kind"] == 0])
            user = (base.attrs.get("Config") or {}).get("User") or "root"
            container.commit(repository=IMAGE, tag=tag.split(":")[1],
                             changes=[f"USER {user}", f'LABEL offload.setup="{key}" offload.cache="{_cache_id(self.root)}"'])
            self._publish(key, staging, kept)
        except docker.errors.DockerException as e:
            raise SandboxError(f"the setup container failed: {e}") from e
        finally:
            if runner is not None:
                runner.close()
            if container is not None or directory is not None:
                docker_backend._remove(client, container.id if container else None, None, directory)
            if network is not None:
                with contextlib.suppress(docker.errors.DockerException):
                    network.remove()
            shutil.rmtree(staging, ignore_errors=True)
        self._status("stored", f"the setup's result is cached as {tag}", key=key[:16], image=tag)

    # -- bubblewrap -----------------------------------------------------------------------------

    def bubblewrap(self, snapshot) -> Environment:
        """The environment of a bubblewrap sandbox: the cached layers, made now unless they exist."""
        key = self.key(f"bubblewrap:{_host_identity(self.image)}", snapshot)
        with self._locked(key):
            if self._cached(key) is not None:
                self._status("cached", f"the setup's cached result is used ({key[:16]})", key=key[:16])
            else:
                self._bwrap_run(snapshot, key)
        return self._environment(key, None, layers=True)

    def _bwrap_run(self, snapshot, key: str) -> None:
        secrets = self.secret_values()
        staging = self._staging()
        try:
            sandbox = bwrap_backend.create(
                self.cache_dir, snapshot_path=snapshot.path, sandbox_id=f"setup-{uuid.uuid4().hex[:12]}",
                labels={**self.labels, "offload.setup": key}, disk=self.disk, network=self.network,
                ca_bundle=self.ca_bundle, image=self.image, **self.limits)
            env = command_env(self.env, {}, self.ca_bundle, self.extra_env)
            try:
                kept = self._run(sandbox.runner, key, self.argv(snapshot), env, secrets)
                self._scan(sandbox.runner, env, secrets, [_inside(p) for p in kept] + [bwrap_backend.HOME])
                self._export(sandbox.runner, env, kept, staging, None)
            finally:
                sandbox.destroy()
            self._publish(key, staging, kept)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._status("stored", f"the setup's result is cached ({key[:16]})", key=key[:16])


def _root(cache_dir: Path) -> Path:
    return Path(cache_dir) / "setup"


def sweep(cache_dir: Path) -> list[str]:
    """Remove the unfinished setup results of processes of this machine that died."""
    removed = []
    for staging in _root(cache_dir).glob(".new-*"):
        try:
            label = (staging / OWNER).read_text()
        except OSError:
            continue
        if owner.dead({owner.LABEL: label}):
            shutil.rmtree(staging, ignore_errors=True)
            removed.append(staging.name)
    return removed


def cached_results(cache_dir: Path) -> list[str]:
    """The keys of the setup results cached on this host."""
    return sorted(p.parent.name for p in _root(cache_dir).glob("*/setup.json"))


def _tracked(work_tree: Path) -> dict[str, str]:
    """Every file git tracks in the snapshot, with its blob id."""
    proc = subprocess.run(["git", "-C", str(work_tree), "ls-files", "-s", "-z"], capture_output=True)
    if proc.returncode != 0:
        raise SetupError(f"could not list the snapshot's files: {proc.stderr.decode(errors='replace').strip()}")
    tracked = {}
    for entry in proc.stdout.decode(errors="surrogateescape").split("\0"):
        if entry:
            meta, _, path = entry.partition("\t")
            tracked[path] = meta.split()[1]
    return tracked


def _is_lockfile(path: str) -> bool:
    name = PurePosixPath(path).name
    return name in LOCKFILES or bool(_REQUIREMENTS.match(name)) or "/requirements/" in f"/{path}"


def _has_image(client: docker.DockerClient, tag: str, key: str) -> bool:
    try:
        return (client.images.get(tag).labels or {}).get("offload.setup") == key
    except docker.errors.ImageNotFound:
        return False


def _remove_evicted_images(client: docker.DockerClient, root: Path) -> None:
    """Remove this engine's setup images whose result left this cache (evicted, or made again
    after an eviction): the engine's disk is bounded with the cache. Only this cache's images (an
    engine may serve several users' caches); one a container still runs from stays until next time."""
    try:
        for image in client.images.list(filters={"label": f"offload.cache={_cache_id(root)}"}):
            key = (image.labels or {}).get("offload.setup", "")
            tags = [t for t in image.tags if t.startswith(f"{IMAGE}:")]
            if not (root / key / "setup.json").exists() or tags != [f"{IMAGE}:{key[:16]}"]:
                with contextlib.suppress(docker.errors.APIError):
                    client.images.remove(image.id, noprune=False)
    except docker.errors.DockerException:
        pass


def _cache_id(root: Path) -> str:
    """Which cache on which host an engine's setup image belongs to."""
    return hashlib.sha256(f"{platform.node()}:{root.resolve()}".encode()).hexdigest()[:16]


def _host_identity(image: str) -> str:
    """What a bubblewrap sandbox's system is: the base image's root filesystem (its name holds its
    recipe's hash) or this host's, its OS release, and the architecture."""
    root = bwrap_backend.system(image)
    try:
        release = (root / "etc/os-release").read_text()
    except OSError:
        release = ""
    return hashlib.sha256(f"{root}{release}{platform.machine()}".encode()).hexdigest()[:16]


def _redact(text: str, secrets: dict[str, str]) -> str:
    for name, value in secrets.items():
        if value:
            text = text.replace(value, f"[{name}]")
    return text


def _nul(paths) -> str:
    """Paths as a NUL-separated list, for `xargs -0` and `tar --null`."""
    return "".join(p + "\0" for p in paths)


def _inside(path: str) -> str:
    """A workspace path setup kept, as the setup sandbox names it."""
    return f"{docker_backend.WORKSPACE}/{path}"


def _layer_member(member: tarfile.TarInfo, dest: str, uid: int | None) -> tarfile.TarInfo | None:
    """A member of a setup's tar stream as it may land in a cached layer: tarfile's `data` filter
    (nothing written outside `dest` or through a link, no set-id bits), except that a symlink may
    point anywhere — a venv's python points at the system's, and a layer's links are only ever
    followed inside a sandbox. Device files and pipes are left out; everything is `uid`'s."""
    if member.ischr() or member.isblk() or member.isfifo():
        return None
    try:
        kept = tarfile.data_filter(member, dest)
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
        if not member.issym():
            raise
        kept = tarfile.tar_filter(member, dest)
    mode = member.mode & 0o755 if member.isdir() else kept.mode  # a ~/.ssh stays 0700
    return kept.replace(uid=uid, gid=uid, uname="", gname="", mode=mode, deep=False)


def _gitignore_escape(path: str) -> str:
    return re.sub(r"([\\*?\[\]!# ])", r"\\\1", path)
