"""Bubblewrap backend: a sandbox without a container engine, for Linux hosts with `bwrap`.

The workspace is an overlay: the immutable snapshot below, a per-sandbox upper layer above, so
starting costs milliseconds whatever the repository's size. bwrap 0.8 cannot mount an overlay,
so `unshare -Urm` makes a user and mount namespace where it may, and bwrap runs inside that:

    sh (join limits) → unshare -Urm sh (mount overlay) → bwrap (namespaces, binds) → runner

Inside, only system directories are bound (read-only): the base image's root filesystem
(image.rootfs) once `offload image build` has made it, so a bubblewrap sandbox holds the same
programs as a Docker one, else this host's own. The user is non-root, there is no network, and
the runner's stdin/stdout is the channel. Everything writable (the upper layer,
/tmp, home, /dev/shm) lives on one size-limited tmpfs private to the sandbox's mount namespace,
so a full disk stays inside and nothing is left on the host when the sandbox ends. Memory,
process count and CPU are held by child cgroups of our own where the host lets us make them,
else by rlimits (RLIMIT_AS per process, RLIMIT_NPROC per sandbox user namespace). The tmpfs is
memory, charged to the sandbox's cgroup: its limit is memory + disk, so files alone fill the
disk (ENOSPC) rather than wake the OOM killer, which would pick the runner.

Run as root, the sandbox user is the host's uid 0 without capabilities, as in a rootful Docker
container; so, as Docker does, the kernel's global settings under /proc are made read-only.

Hardening beyond the namespaces: a seccomp filter close to Docker's (seccomp.py); the runner is
the sandbox's pid 1 (`--as-pid-1`), since bwrap's own init would hold the channel where any
command could write to it; and nothing inside names a host path or holds the host's environment
(the overlays' options name their directories relative to the layer, and everything is spawned
from `/`).
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

from . import layer, owner, seccomp
from .channel import RunnerClient, local_transport, runner_source
from .environment import CA_PATH
from .errors import SandboxError
from .image import DEFAULT_IMAGE, PATH, SANDBOX_UID, SANDBOX_USER, rootfs
from .snapshot import private

WORKSPACE = "/workspace"
HOME = f"/home/{SANDBOX_USER}"
RUNNER_ENV = {"HOME": HOME, "PATH": PATH, "LANG": "C.UTF-8"}
_SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# The host's /etc holds secrets; only what programs need to start is bound (the base image's is bound whole).
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "nsswitch.conf", "ssl/certs")
_ETC_NETWORK = ("resolv.conf", "hosts")
# Docker's defaults: /proc entries that change or reveal the host, read-only or hidden.
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs", "asound")
_PROC_HIDDEN = ("kcore", "keys", "timer_list", "sched_debug", "latency_stats", "timer_stats")

# The outer shell runs on the host; the inner one as root of a fresh user namespace (that is,
# as the caller), where it may mount a tmpfs and the overlay. $1 is the sandbox directory, $2 the
# workspace overlay's options (relative to the layer), or "" for a warm sandbox, whose workspace is
# mounted on ws when it is claimed (`claim`) and reaches bwrap's namespace by propagation; $3 the
# tmpfs size, $4 the home overlay's options (over a cached setup home) or "", $5 the base root
# filesystem or "": it is mounted as a read-only overlay (over an empty sibling, as an overlay
# without an upper layer needs two) named relative to its parent, so the system directories bound
# from it show no host path inside. The identity files and the CA bundle
# are bound from the tmpfs, so their host path is nowhere in the sandbox's mount table; fd 9 is the
# seccomp filter. bwrap's stderr is dropped: the sandbox could write to it.
_SETUP = """set -e
layer=$1/layer
mount -t tmpfs -o "size=$3,mode=0755" offload "$layer"
cd "$layer"
mkdir upper work ws home tmp shm
cp "$1/passwd" "$1/group" .
if [ -e "$1/ca.pem" ]; then cp "$1/ca.pem" .; fi
if [ -n "$2" ]; then
  mount -t overlay overlay -o "$2" ws
else
  mkdir empty
  mount --make-shared .
fi
if [ -n "$4" ]; then
  mkdir home-upper home-work
  mount -t overlay overlay -o "$4" home
fi
if [ -n "$5" ]; then
  mkdir system
  (cd "$5/.." && mount -t overlay overlay -o "lowerdir=${5##*/}:${5##*/}.empty" "$layer/system")
fi
exec 9<"$1/seccomp.bpf"
cd /
shift 5
exec 2>/dev/null
exec "$@"
"""


# `--die-with-parent` fires when the *thread* that spawned bwrap ends, so every sandbox is
# spawned from this one thread, which lives as long as the process.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="offload-bwrap-spawner")


class BwrapSandbox:
    """A running bwrap sandbox: its runner channel and the host directory holding its layer."""

    backend = "bubblewrap"

    def __init__(self, sandbox_id: str, directory: Path, runner: RunnerClient | None, cgroups: _Cgroups | None) -> None:
        self.id = sandbox_id
        self.directory = directory
        self.runner = runner
        self.cgroups = cgroups
        self.limits = "cgroup" if cgroups else "rlimit"
        self.workspace = WORKSPACE

    @property
    def pid(self) -> int | None:
        """The host pid of the sandbox's outermost process while it runs."""
        return _pid(self.directory)

    def destroy(self) -> None:
        """Stop the runner (its pid namespace dies with it) and remove the layer; idempotent."""
        if self.runner is not None:
            try:
                self.runner.close()
            except Exception:
                pass
        pid = self.pid
        if pid is not None:
            _kill(pid)
        if self.cgroups:
            self.cgroups.remove()
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
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Cgroups:
    """Child cgroups of our own (cgroup v1 or v2) holding one sandbox's processes to its limits."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs = dirs

    @classmethod
    def make(cls, name: str, memory: int, pids: int, cpus: float) -> _Cgroups | None:
        """The sandbox's cgroups, or None where this host does not let us make them."""
        own = _own_cgroups()
        if "memory" not in own or "pids" not in own:
            return None
        quota = max(1000, int(cpus * 100_000))
        settings = {  # controller: {version: [(file, value, required)]}
            "memory": {1: [("memory.limit_in_bytes", memory, True), ("memory.memsw.limit_in_bytes", memory, False)],
                       2: [("memory.max", memory, True), ("memory.swap.max", 0, False)]},
            "pids": {1: [("pids.max", pids, True)], 2: [("pids.max", pids, True)]},
            "cpu": {1: [("cpu.cfs_period_us", 100_000, False), ("cpu.cfs_quota_us", quota, False)],
                    2: [("cpu.max", f"{quota} 100000", False)]},
        }
        made = cls([])
        try:
            for controller, (parent, version) in own.items():
                child = parent / f"offload-{name}"
                if child not in made.dirs:
                    child.mkdir()
                    made.dirs.append(child)
                for file, value, required in settings[controller][version]:
                    try:
                        (child / file).write_text(str(value))
                    except OSError:
                        if required:
                            raise
        except OSError:
            made.remove()
            return None
        return made

    @classmethod
    def of(cls, name: str) -> _Cgroups:
        """The cgroups a sandbox of ours by that name would have (to remove a dead one's)."""
        return cls([parent / f"offload-{name}" for parent, _ in set(_own_cgroups().values())])

    def procs_files(self) -> list[Path]:
        return [d / "cgroup.procs" for d in self.dirs]

    def remove(self) -> None:
        """Kill whatever is left in the cgroups and remove them."""
        for directory in self.dirs:
            for _ in range(250):
                try:
                    directory.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    try:
                        members = (directory / "cgroup.procs").read_text().split()
                    except OSError:
                        break
                    for pid in members:
                        _kill(int(pid))
                    time.sleep(0.02)


def _own_cgroups() -> dict[str, tuple[Path, int]]:
    """For memory, pids and cpu: the directory of our own cgroup and its cgroup version, where
    we may make children (v1 always; v2 when our cgroup delegates the controller)."""
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields, _, tail = line.partition(" - ")
        root, mountpoint = fields.split()[3:5]
        fstype, _, options = tail.split()[:3]
        if fstype == "cgroup2":
            mounts[""] = (root, mountpoint)
        elif fstype == "cgroup":
            for option in options.split(","):
                mounts.setdefault(option, (root, mountpoint))
    found: dict[str, tuple[Path, int]] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            if controller not in mounts or not (path + "/").startswith(mounts[controller][0].rstrip("/") + "/"):
                continue
            root, mountpoint = mounts[controller]
            own = Path(mountpoint, os.path.relpath(path, root))
            if controller in ("memory", "pids", "cpu"):
                found[controller] = (own, 1)
            elif controller == "":  # ours, else (as root) the top, where a daemon may make its own
                for candidate in (own, Path(mountpoint)):
                    try:
                        delegated = (candidate / "cgroup.subtree_control").read_text().split()
                    except OSError:
                        delegated = []
                    for name in ("memory", "pids", "cpu"):
                        if name in delegated and os.access(candidate, os.W_OK):
                            found.setdefault(name, (candidate, 2))
    return {c: where for c, where in found.items() if os.access(where[0], os.W_OK)}


def system(image: str = DEFAULT_IMAGE) -> Path:
    """The root filesystem whose system directories sandboxes get: `image`'s (a flavour of the base)
    once built, else the base image's, else this host's."""
    return rootfs(image) or rootfs() or Path("/")


def runner_python(root: Path) -> str:
    """The runner's interpreter, as a sandbox on `root` sees it."""
    return "/usr/bin/python3" if root != Path("/") else host_python()


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
    seccomp.program()  # an architecture it has no filter for
    for tool, package in (("bwrap", "bubblewrap"), ("unshare", "util-linux"), ("prlimit", "util-linux"),
                          ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            raise SandboxError(f"{tool} is missing: apt-get install -y {package}")
    runner_python(system())


def _bwrap_argv(directory: Path, root: Path, network: bool, rlimits: list[str], read_only: bool = False) -> list[str]:
    layer = directory / "layer"
    argv = ["bwrap", "--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
            "--disable-userns", "--die-with-parent", "--new-session", "--as-pid-1", "--hostname", "offload",
            "--seccomp", "9"]
    if network:
        argv.append("--share-net")
    mounted = Path("/") if root == Path("/") else layer / "system"  # where bwrap finds it (see _SETUP)
    for name in _SYSTEM_DIRS:
        source = root / name
        if source.is_symlink():
            argv += ["--symlink", os.readlink(source), f"/{name}"]
        elif source.is_dir():
            argv += ["--ro-bind", str(mounted / name), f"/{name}"]
    if root != Path("/"):
        argv += ["--ro-bind", str(mounted / "etc"), "/etc"]
    for name in (_ETC if root == Path("/") else ()) + (_ETC_NETWORK if network else ()):
        if root == Path("/") or (root / "etc" / name).exists():
            argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    if (directory / "ca.pem").exists():  # sandbox.ca_bundle, copied there by create
        argv += ["--ro-bind", str(layer / "ca.pem"), CA_PATH]
    for name in ("passwd", "group"):
        argv += ["--ro-bind", str(layer / name), f"/etc/{name}"]
    argv += ["--proc", "/proc"]
    for name in _PROC_READ_ONLY:
        if os.path.exists(f"/proc/{name}"):
            argv += ["--ro-bind", f"/proc/{name}", f"/proc/{name}"]
    for name in _PROC_HIDDEN:
        if os.path.exists(f"/proc/{name}"):
            argv += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    argv += ["--dev", "/dev", "--bind", f"{layer}/shm", "/dev/shm", "--remount-ro", "/dev",
             "--bind", f"{layer}/tmp", "/tmp", "--bind", f"{layer}/home", HOME, "--ro-bind" if read_only else "--bind", f"{layer}/ws", WORKSPACE]
    argv += ["--remount-ro", "/", "--chdir", WORKSPACE, "--clearenv"]
    for key, value in RUNNER_ENV.items():
        argv += ["--setenv", key, value]
    return argv + ["--", *rlimits, runner_python(root), "-I", "-u", "-c", runner_source(), "--root", WORKSPACE]


def _overlay(where: Path, lowers: list[Path], upper: str | None = None, work: str | None = None) -> str:
    """Overlay options naming each directory relative to the layer `where`, the mount's working
    directory: the sandbox's mount table shows them, and must not show the host's paths."""
    options = "lowerdir=" + ":".join(os.path.relpath(layer.overlay_path(p), where) for p in lowers)
    return options + (f",upperdir={upper},workdir={work}" if upper else "")


def _write_identity(directory: Path) -> None:
    """/etc/passwd and /etc/group naming the sandbox user, so tools that look it up work."""
    uid = SANDBOX_UID
    (directory / "passwd").write_text(f"{SANDBOX_USER}:x:{uid}:{uid}:Offload:{HOME}:/bin/sh\n"
                                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    (directory / "group").write_text(f"{SANDBOX_USER}:x:{uid}:\nnogroup:x:65534:\n")


def create(
    cache_dir: Path,
    snapshot_path: Path | None,
    sandbox_id: str,
    labels: dict,
    memory: str,
    cpus: float,
    pids: int,
    disk: str,
    network: bool,
    read_only: bool = False,
    lowers: tuple[Path, ...] = (),
    home_lower: Path | None = None,
    ca_bundle: str = "",
    image: str = DEFAULT_IMAGE,
) -> BwrapSandbox:
    """Start a sandbox over `snapshot_path` with its runner connected: `lowers` (a cached setup's
    workspace) lie under the snapshot, `home_lower` under the home, `image` names the root
    filesystem (system). Without a snapshot the sandbox is warm: its workspace comes when it is
    claimed (`claim`)."""
    available()
    root = system(image)
    memory_bytes, disk_bytes = layer.parse_size(memory), layer.parse_size(disk)
    all_labels = {**labels, "offload.sandbox": sandbox_id, "offload.created": str(int(time.time())),
                  "offload.backend": "bubblewrap", owner.LABEL: owner.label()}
    directory = layer.sandbox_dir(private(cache_dir), sandbox_id, all_labels)
    where = directory / "layer"
    try:  # a path overlayfs cannot take is refused before anything runs
        workspace = _overlay(where, [snapshot_path, *lowers], "upper", "work") if snapshot_path else ""
        home = _overlay(where, [home_lower], "home-upper", "home-work") if home_lower else ""
    except SandboxError:
        shutil.rmtree(directory)
        raise
    where.mkdir()
    _write_identity(directory)
    if ca_bundle:
        shutil.copyfile(ca_bundle, directory / "ca.pem")
    (directory / "seccomp.bpf").write_bytes(seccomp.program())
    cgroups = _Cgroups.make(sandbox_id, memory_bytes + disk_bytes, pids, cpus)
    # Without cgroups: rlimits set inside the sandbox's user namespace, so NPROC counts only its processes.
    rlimits = [] if cgroups else ["prlimit", f"--as={memory_bytes}", f"--nproc={pids}", "--"]
    outer = 'set -e\ncd /\nexec 2>"$1/setup.log"\necho $$ > "$1/pid"\n'
    outer += "".join(f"echo $$ > {shlex.quote(str(f))}\n" for f in (cgroups.procs_files() if cgroups else []))
    outer += f'exec unshare -Urm sh -c {shlex.quote(_SETUP)} offload-sandbox "$@"\n'
    if root != Path("/"):
        Path(f"{root}.empty").mkdir(exist_ok=True)
    argv = ["sh", "-c", outer, "offload-sandbox", str(directory), workspace, str(disk_bytes), home,
            "" if root == Path("/") else str(root), *_bwrap_argv(directory, root, network, rlimits, read_only)]
    sandbox = BwrapSandbox(sandbox_id, directory, None, cgroups)
    try:
        transport = _SPAWNER.submit(local_transport, argv, {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}).result()
        sandbox.runner = RunnerClient(*transport)
        sandbox.runner.ping()
    except Exception as e:
        log = directory / "setup.log"
        why = log.read_text(errors="replace").strip() if log.exists() else ""
        sandbox.destroy()
        raise SandboxError(f"the bubblewrap sandbox did not start: {why or e}; `offload doctor` shows why") from e
    return sandbox


def claim(sandbox: BwrapSandbox, snapshot_path: Path, labels: dict, read_only: bool = False,
          lowers: tuple[Path, ...] = ()) -> None:
    """Give a warm sandbox its workspace: the overlay over the snapshot, mounted in the sandbox's own
    user and mount namespace (entered through its outermost process), where bwrap's sees it."""
    pid = sandbox.pid
    if pid is None:
        raise SandboxError("the warm bubblewrap sandbox has stopped")
    where = sandbox.directory / "layer"
    # read-only: no upper layer, so the kernel keeps the whole overlay read-only (two lowers needed)
    options = (_overlay(where, [snapshot_path, *lowers, where / "empty"]) if read_only
               else _overlay(where, [snapshot_path, *lowers], "upper", "work"))
    proc = subprocess.run(["nsenter", "-t", str(pid), "-U", "-m", "--preserve-credentials", "sh", "-c",
                           'cd "$0" && exec mount -t overlay overlay -o "$1" ws', str(where), options],
                          capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    if proc.returncode != 0:
        raise SandboxError(f"could not mount the workspace of the warm sandbox: {proc.stderr.strip()}")
    layer.relabel(sandbox.directory, labels)


def sweep(cache_dir: Path) -> list[str]:
    """Remove what bubblewrap sandboxes of processes that died left: processes, cgroups, directories."""
    removed = []
    for directory, labels in layer.directories(cache_dir):
        if labels.get("offload.backend") == "bubblewrap" and owner.dead(labels):
            pid = _pid(directory)
            if pid is not None:
                _kill(pid)
            _Cgroups.of(directory.name).remove()
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(directory.name)
    return removed


def list_sandboxes(cache_dir: Path, owner_name: str | None = None) -> list[dict]:
    """Sandboxes this cache holds (optionally one owner's), as label dicts with status."""
    return [{**labels, "status": "running" if _pid(directory) else "exited", "directory": str(directory)}
            for directory, labels in layer.directories(cache_dir)
            if labels.get("offload.backend") == "bubblewrap"
            and (owner_name is None or labels.get("offload.owner") == owner_name)]
