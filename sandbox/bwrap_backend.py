"""Bubblewrap backend: a sandbox without a container engine, for Linux hosts with `bwrap`.

The workspace is an overlay: the immutable snapshot below, a per-sandbox upper layer above, so
starting costs milliseconds whatever the repository's size. bwrap 0.8 cannot mount an overlay,
so `unshare -Urm` makes a user and mount namespace where it may, and bwrap runs inside that:

    sh (join limits) → unshare -Urm sh (mount overlay) → bwrap (namespaces, binds) → runner

Inside, only system directories are bound (read-only), the user is non-root, there is no
network, and the runner's stdin/stdout is the channel.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path

from .channel import RunnerClient, local_transport, runner_source
from .errors import SandboxError
from .image import SANDBOX_UID, SANDBOX_USER

WORKSPACE = "/workspace"
HOME = f"/home/{SANDBOX_USER}"
RUNNER_ENV = {"HOME": HOME, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# The host's /etc holds secrets; only what programs need to start is bound.
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf", "ssl/certs")
_ETC_NETWORK = ("resolv.conf", "hosts")

# The outer shell runs on the host; the inner one as root of a fresh user namespace (that is,
# as the caller), where it may mount the overlay. $1 is the sandbox directory, $2 the snapshot.
_SETUP = """set -e
layer=$1/layer
mkdir "$layer/upper" "$layer/work" "$layer/ws" "$layer/home" "$layer/tmp"
mount -t overlay overlay -o "lowerdir=$2,upperdir=$layer/upper,workdir=$layer/work" "$layer/ws"
shift 2
exec 2>/dev/null
exec "$@"
"""


class BwrapSandbox:
    """A running bwrap sandbox: its runner channel and the host directory holding its layer."""

    backend = "bubblewrap"

    def __init__(self, sandbox_id: str, directory: Path, runner: RunnerClient) -> None:
        self.id = sandbox_id
        self.directory = directory
        self.runner = runner
        self.workspace = WORKSPACE

    @property
    def pid(self) -> int | None:
        """The host pid of the sandbox's outermost process while it runs."""
        return _pid(self.directory)

    def destroy(self) -> None:
        """Stop the runner (its pid namespace dies with it) and remove the layer; idempotent."""
        try:
            self.runner.close()
        except Exception:
            pass
        pid = self.pid
        if pid is not None:
            _kill(pid)
        shutil.rmtree(self.directory, ignore_errors=True)


def _pid(directory: Path) -> int | None:
    try:
        pid = int((directory / "pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if str(directory).encode() in cmdline else None


def _kill(pid: int) -> None:
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass


@cache
def host_python() -> str:
    """A python3 ≥ 3.9 under /usr for the runner, or a SandboxError with the fix."""
    for candidate in ("/usr/bin/python3", "/usr/local/bin/python3"):
        if os.access(candidate, os.X_OK):
            proc = subprocess.run([candidate, "-c", "import sys; print(sys.version_info >= (3, 9))"],
                                  capture_output=True, text=True)
            if proc.stdout.strip() == "True":
                return candidate
    raise SandboxError("the bubblewrap backend needs python3 3.9 or newer in /usr/bin: apt-get install -y python3")


def available() -> None:
    """Raise a SandboxError naming the fix unless this host can run bubblewrap sandboxes."""
    if not sys.platform.startswith("linux"):
        raise SandboxError("the bubblewrap backend needs Linux; use sandbox.backend = \"docker\"")
    for tool, package in (("bwrap", "bubblewrap"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            raise SandboxError(f"{tool} is missing: apt-get install -y {package}")
    host_python()


def _bwrap_argv(directory: Path, network: bool) -> list[str]:
    layer = directory / "layer"
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns", "--die-with-parent", "--new-session", "--hostname", "offload"]
    if network:
        argv.append("--share-net")
    for name in _SYSTEM_DIRS:
        host = Path("/", name)
        if host.is_symlink():
            argv += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            argv += ["--ro-bind", str(host), str(host)]
    for name in _ETC + (_ETC_NETWORK if network else ()):
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    for name in ("passwd", "group"):
        argv += ["--ro-bind", str(directory / name), f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--bind", f"{layer}/tmp", "/tmp", "--bind", f"{layer}/home", HOME, "--bind", f"{layer}/ws", WORKSPACE,
             "--remount-ro", "/", "--chdir", WORKSPACE, "--clearenv"]
    for key, value in RUNNER_ENV.items():
        argv += ["--setenv", key, value]
    return argv + ["--", host_python(), "-I", "-u", "-c", runner_source(), "--root", WORKSPACE]


def _write_identity(directory: Path) -> None:
    """/etc/passwd and /etc/group naming the sandbox user, so tools that look it up work."""
    uid = SANDBOX_UID
    (directory / "passwd").write_text(f"{SANDBOX_USER}:x:{uid}:{uid}:Offload:{HOME}:/bin/sh\n"
                                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (directory / "group").write_text(f"{SANDBOX_USER}:x:{uid}:\nnogroup:x:65534:\n")


def create(
    cache_dir: Path,
    snapshot_path: Path,
    sandbox_id: str,
    labels: dict,
    memory: str,
    cpus: float,
    pids: int,
    disk: str,
    network: bool,
) -> BwrapSandbox:
    """Start a sandbox over `snapshot_path` with its runner connected."""
    available()
    lower = str(Path(snapshot_path).resolve())
    if any(c in lower for c in ",:\\"):
        raise SandboxError(f"the snapshot path {lower} holds a character overlayfs cannot take (, : \\); "
                           "set XDG_CACHE_HOME to a plainer directory")
    directory = Path(cache_dir).resolve() / "sandboxes" / sandbox_id
    (directory / "layer").mkdir(parents=True)
    _write_identity(directory)
    all_labels = {**labels, "offload.sandbox": sandbox_id, "offload.created": str(int(time.time()))}
    (directory / "labels.json").write_text(json.dumps(all_labels))
    outer = 'set -e\nexec 2>"$1/setup.log"\necho $$ > "$1/pid"\n'
    outer += f'exec unshare -Urm sh -c {shlex.quote(_SETUP)} offload-sandbox "$@"\n'
    argv = ["sh", "-c", outer, "offload-sandbox", str(directory), lower, *_bwrap_argv(directory, network)]
    runner = RunnerClient(*local_transport(argv, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}))
    sandbox = BwrapSandbox(sandbox_id, directory, runner)
    try:
        runner.ping()
    except Exception as e:
        log = (directory / "setup.log").read_text(errors="replace").strip() if (directory / "setup.log").exists() else ""
        sandbox.destroy()
        raise SandboxError(f"the bubblewrap sandbox did not start: {log or e}; `offload doctor` shows why") from e
    return sandbox


def list_sandboxes(cache_dir: Path, owner: str | None = None) -> list[dict]:
    """Sandboxes this cache holds (optionally one owner's), as label dicts with status."""
    found = []
    for labels_file in sorted((Path(cache_dir) / "sandboxes").glob("*/labels.json")):
        try:
            labels = json.loads(labels_file.read_text())
        except (OSError, ValueError):
            continue
        if owner is None or labels.get("offload.owner") == owner:
            status = "running" if _pid(labels_file.parent) else "exited"
            found.append({**labels, "status": status, "directory": str(labels_file.parent)})
    return found
