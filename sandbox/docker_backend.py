"""Docker backend: one hardened container per sandbox, commands through the runner.

The container starts with no network, a non-root user, every capability dropped and
resource limits. On an engine of this host the workspace is an overlay over the cached snapshot
(constant time, whatever the repository's size), mounted by Offload on this host and bound into
the container, and the root filesystem is read-only: all that is writable lives on one
size-limited tmpfs, the layer (layer.py). On a remote engine
the snapshot is copied in as a tarball owned by the sandbox user. The runner is the container's
main process, so its init, and every command travels over the container's attached stdin and
stdout (a fraction of a millisecond each, against ~0.1 s for an exec per command). As init it
cannot be stopped or killed by the commands it runs: a namespace's init ignores its own
processes' signals, where an exec'd runner of the same uid could be stopped by any of them.
"""

from __future__ import annotations

import io
import shutil
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path

import docker
import docker.errors
import docker.types
from docker.types import Mount

from . import layer, owner
from .channel import RunnerClient, runner_source
from .environment import CA_PATH, image_env
from .errors import SandboxError
from .image import PATH, SANDBOX_UID, SANDBOX_USER
from .toolset import BIN, ROOT, needed, toolset
from .snapshot import Snapshot, private

WORKSPACE = "/workspace"
HOME = f"/home/{SANDBOX_USER}"


class DockerTransport:
    """The runner's stdin/stdout over an exec's attached socket (Docker's multiplexed framing)."""

    def __init__(self, sock) -> None:
        self._raw: socket.socket = getattr(sock, "_sock", sock)
        self._sock = sock
        # docker-py gives the exec socket its client's timeout (60 s by default): a channel quiet
        # for a minute (a long model step, a silent command) would die. The channel has no idle
        # limit; a command's own timeout is the runner's business.
        for layer_ in {id(sock): sock, id(self._raw): self._raw}.values():
            if hasattr(layer_, "settimeout"):
                layer_.settimeout(None)
        self._buffer = b""
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._raw.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self._raw.recv(n)
            if not chunk:
                return b""
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def read(self, n: int) -> bytes:
        """Stdout bytes; stderr frames (the runner's own crashes) are kept for error messages."""
        while not self._buffer:
            header = self._read_exact(8)
            if not header:
                return b""
            stream, size = header[0], struct.unpack(">I", header[4:])[0]
            payload = self._read_exact(size)
            if stream == 1:
                self._buffer = payload
            else:
                self.stderr = getattr(self, "stderr", b"")[-4096:] + payload
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def close(self) -> None:
        try:
            self._raw.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        try:
            self._sock.close()
        finally:
            self._raw.close()


class DockerSandbox:
    """A running container holding one workspace, with what it holds on this host."""

    backend = "docker"

    def __init__(self, container, client: docker.DockerClient, runner: RunnerClient, labels: dict,
                 directory: Path | None = None, env: dict | None = None) -> None:
        self.container = container
        self.env = env or {}  # the image's own environment, for its commands
        self.client = client
        self.runner = runner
        self.labels = labels
        self.directory = directory
        self.id = labels["offload.sandbox"]
        self.workspace = WORKSPACE

    def destroy(self) -> None:
        """Stop and remove the container and its layer; idempotent."""
        try:
            self.runner.close()
        except Exception:
            pass
        _remove(self.client, self.container.id, None, self.directory)


def _remove(client: docker.DockerClient, container: str | None, volume: str | None, directory: Path | None) -> None:
    """Remove a sandbox's container, then its volume (one an earlier version made; free once the container
    is gone), then its layer."""
    if container:
        try:
            client.api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:  # auto-removal already under way: wait for it
            if e.status_code != 409:
                raise
            try:
                client.api.wait(container, condition="removed", timeout=30)
            except (docker.errors.NotFound, docker.errors.APIError):
                pass
    if volume:
        for _ in range(100):
            try:
                client.api.remove_volume(volume)
                break
            except docker.errors.NotFound:
                break
            except docker.errors.APIError as e:
                if e.status_code != 409:  # 409: still in use by a container being removed
                    raise
                time.sleep(0.05)
    if directory is not None:
        layer.remove(directory)


def _workspace_tar(path: Path, read_only: bool = False) -> bytes:
    """The snapshot as a tarball rooted at /workspace, owned by the sandbox user (by root when
    the sandbox must only read it: the unprivileged user then cannot change a byte)."""
    buffer = io.BytesIO()

    def own(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0 if read_only else SANDBOX_UID
        info.uname = info.gname = ""
        return info

    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(path, arcname=WORKSPACE.lstrip("/"), filter=own)
    return buffer.getvalue()


class Additions:
    """What Offload adds to an image's containers: its own tools where the image lacks them
    (toolset.py), the CA bundle; and how the runner starts and what the commands' environment
    takes from the image's (its ENV, with Offload's tools last on its PATH)."""

    def __init__(self, client: docker.DockerClient, image: str, ca_bundle: str, local: bool) -> None:
        attrs = client.images.get(image).attrs
        tools = self.tools = toolset() if local and needed(attrs) else None
        self.python = tools.command("/usr/bin/python3") if tools else ["python3"]
        self.env = image_env((attrs.get("Config") or {}).get("Env"))
        if tools:
            self.env["PATH"] = f"{self.env.get('PATH') or PATH}:{BIN}"
        self.mounts = tools.mounts() if tools else []
        self.lends = tools is not None
        self.ca_bundle = ca_bundle
        if ca_bundle and local:
            self.mounts.append(Mount(CA_PATH, ca_bundle, type="bind", read_only=True))

    def own_tools_first(self, env: dict) -> dict:
        """`env` for Offload's own commands: the tools it lends before the image's."""
        return {**env, "PATH": f"{BIN}:{env['PATH']}"} if self.lends else env

    def carry(self, written: Path) -> None:
        """Bind what Offload adds from the sandbox's layer — the CA bundle and the tools' scripts
        copied there, the toolset's root filesystem through an overlay mounted there — so that the
        container's mount table names no path of this host's."""
        moved = {}
        if self.ca_bundle:
            shutil.copyfile(self.ca_bundle, written / "ca.pem")
            moved[CA_PATH] = written / "ca.pem"
        if self.tools:
            moved[ROOT] = layer.mount_tools(written, self.tools.root)
            moved[BIN] = Path(shutil.copytree(self.tools.wrappers(), written / "tools-bin"))
        self.mounts = [m for m in self.mounts if m["Target"] not in moved] + \
            [Mount(target, str(source), type="bind", read_only=True) for target, source in moved.items()]

    def copy_in(self, container) -> None:
        """On an engine that cannot bind this host's files, the CA bundle is copied in instead."""
        if self.ca_bundle and not any(m["Target"] == CA_PATH for m in self.mounts):
            data = Path(self.ca_bundle).read_bytes()
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w") as tar:
                info = tarfile.TarInfo(CA_PATH.lstrip("/"))
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
            container.put_archive("/", buffer.getvalue())


def is_local(client: docker.DockerClient) -> bool:
    """Whether the engine answers on a unix socket, so it shares this host's filesystem."""
    return client.api.base_url == "http+docker://localhost"


def overlay_problem(client: docker.DockerClient, local: bool | None = None) -> str | None:
    """None when sandboxes on this engine get an overlay workspace with a disk cap; else why they
    get a copy of the workspace instead, with no disk cap."""
    if not (is_local(client) if local is None else local):
        return "the engine is remote, so the workspace is copied into each container"
    if problem := layer.can_mount():
        return f"{problem}, so the workspace is copied into each container and its disk is not capped"
    return None


def connect(base_url: str | None = None, **options) -> docker.DockerClient:
    """A client for the engine (`options` as DockerClient takes them: tls, use_ssh_client), or a
    SandboxError that says how to get one."""
    try:
        client = docker.DockerClient(base_url=base_url, **options) if base_url else docker.from_env()
        client.ping()
        return client
    except docker.errors.DockerException as e:
        raise SandboxError(
            f"no Docker engine answers ({e}). Start it (e.g. `sudo systemctl start docker` or "
            "`sudo dockerd &`), or set sandbox.backend = \"bubblewrap\""
        ) from e


def create(
    client: docker.DockerClient,
    image: str,
    snapshot: Snapshot | None,
    sandbox_id: str,
    labels: dict,
    memory: str,
    cpus: float,
    pids: int,
    network: bool,
    read_only: bool = False,
    disk: str = "4g",
    cache_dir: Path | None = None,
    local: bool | None = None,
    lowers: tuple[Path, ...] = (),
    home_lower: Path | None = None,
    ca_bundle: str = "",
) -> DockerSandbox:
    """Start a container from `image` holding the snapshot, with its runner connected.

    On an engine that shares this host's filesystem (`local`, by default when it answers on a
    unix socket) and with root, the workspace is an overlay over the cached snapshot and
    everything writable lives on one tmpfs of `disk` bytes under `cache_dir` (see layer.py);
    otherwise the snapshot is copied in as a tarball and the disk is not capped. Without a
    snapshot the sandbox is warm: its workspace comes when it is claimed (`claim`)."""
    all_labels = {**labels, "offload.sandbox": sandbox_id, "offload.created": str(int(time.time())),
                  "offload.backend": "docker", owner.LABEL: owner.label()}
    memory_bytes, disk_bytes = layer.parse_size(memory), layer.parse_size(disk)
    settings = dict(
        stdin_open=True,  # the runner's channel: attached once, and closed when its owner goes (StdinOnce)
        name=f"offload-{sandbox_id}",
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
        working_dir=WORKSPACE,
        environment={"HOME": HOME, "LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin"},
        network_mode="bridge" if network else "none",
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        pids_limit=pids,
        mem_limit=memory_bytes,
        memswap_limit=memory_bytes,
        nano_cpus=int(cpus * 1e9),
        auto_remove=True,  # the runner ends when its owner goes, and the container with it
        # No container log: the runner's stray output would be stored on the host's disk without bound.
        log_config=docker.types.LogConfig(type=docker.types.LogConfig.types.NONE),
    )
    directory = container = None
    try:
        local = is_local(client) if local is None else local
        additions = Additions(client, image, ca_bundle, local)
        settings["command"] = _runner_argv(python=additions.python)  # the container's init
        settings["entrypoint"] = [""]  # not the image's: its ENTRYPOINT would start before (or instead of) it
        if cache_dir is not None and overlay_problem(client, local) is None:
            directory = layer.sandbox_dir(private(cache_dir), sandbox_id, all_labels)
            all_labels["offload.directory"] = str(directory)
            written = layer.mount(directory, disk_bytes, SANDBOX_UID)
            additions.carry(written)
            if snapshot is None:  # warm: the workspace mounted there when claimed reaches it by propagation
                layer.share(written)
                workspace = Mount(WORKSPACE, str(written / "ws"), type="bind", propagation="rslave")
            else:  # cached setup layers under the snapshot: the snapshot wins over them
                layer.mount_workspace(written, snapshot.path, list(lowers), read_only, SANDBOX_UID)
                workspace = Mount(WORKSPACE, str(written / "ws"), type="bind", read_only=read_only)
            if home_lower is not None:
                layer.mount_home(written, home_lower, SANDBOX_UID)
            settings.update(
                read_only=True,  # the root filesystem: only the layer is writable
                mounts=[workspace, Mount("/tmp", f"{written}/tmp", type="bind"),
                        Mount(HOME, f"{written}/home", type="bind"), Mount("/dev/shm", f"{written}/shm", type="bind")],
                # the layer's pages are charged to the container: files alone hit ENOSPC, not the OOM killer
                mem_limit=memory_bytes + disk_bytes, memswap_limit=memory_bytes + disk_bytes,
            )
        settings["mounts"] = settings.get("mounts", []) + additions.mounts
        if snapshot is None and directory is None:
            raise SandboxError(f"a warm sandbox needs an overlay workspace: {overlay_problem(client, local) or 'no cache'}")
        container = client.containers.create(image, labels=all_labels, **settings)
        if directory is None:
            container.put_archive("/", _workspace_tar(snapshot.path, read_only))
        additions.copy_in(container)
        runner = _attach_runner(client, container)
    except Exception as e:
        _remove(client, container.id if container else None, None, directory)
        if isinstance(e, docker.errors.ImageNotFound):
            raise SandboxError(f"sandbox image {image!r} is missing: run `offload image build`") from e
        if isinstance(e, docker.errors.DockerException):
            raise SandboxError(f"could not create a sandbox container: {e}") from e
        raise
    return DockerSandbox(container, client, runner, all_labels, directory, additions.env)


def _runner_argv(*options: str, python: list[str] = ("python3",)) -> list[str]:
    return [*python, "-I", "-u", "-c", runner_source(), "--root", WORKSPACE, *options]


def _attach_runner(client: docker.DockerClient, container) -> RunnerClient:
    """Start the container, whose main process is the runner, attached to its stdin and stdout
    first so that nothing it says is missed; the runner answering."""
    transport = DockerTransport(client.api.attach_socket(
        container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}))
    runner = RunnerClient(transport.write, transport.read, transport.close)
    try:
        container.start()
        runner.ping()
        return runner
    except Exception as e:
        runner.close()
        if isinstance(e, docker.errors.DockerException):
            raise
        detail = getattr(transport, "stderr", b"").decode(errors="replace").strip()
        raise SandboxError(f"the sandbox runner did not start: {e} {detail}".strip()) from e


def _start_runner(client: docker.DockerClient, container, user: str = f"{SANDBOX_UID}:{SANDBOX_UID}",
                  python: list[str] = ("python3",)) -> RunnerClient:
    """A runner exec'd into a started container (a setup's) and answering. An exec that ends without a
    word while its container still runs (a loaded dockerd can lose one started the moment its
    container did) is tried once more; otherwise the error says how the exec ended."""
    for retry in (True, False):
        exec_id = client.api.exec_create(
            container.id, _runner_argv("--stop-init", python=python), stdin=True, stdout=True, stderr=True, tty=False, user=user,
        )["Id"]
        transport = DockerTransport(client.api.exec_start(exec_id, socket=True))
        runner = RunnerClient(transport.write, transport.read, transport.close)
        try:
            runner.ping()
            return runner
        except Exception as e:
            runner.close()
            detail = getattr(transport, "stderr", b"").decode(errors="replace").strip()
            ended, running = _exec_ending(client, container, exec_id)
            if retry and not detail and running:
                continue
            raise SandboxError(f"the sandbox runner did not start: {e} ({ended}) {detail}".strip()) from e


def _exec_ending(client: docker.DockerClient, container, exec_id: str) -> tuple[str, bool]:
    """How an exec ended, in words for an error, and whether its container still runs."""
    try:
        code = client.api.exec_inspect(exec_id).get("ExitCode")
        container.reload()
        return f"exit code {code}; the container is {container.status}", container.status == "running"
    except docker.errors.DockerException:
        return "the container is gone", False


def claim(sandbox: DockerSandbox, snapshot: Snapshot, labels: dict, read_only: bool = False,
          lowers: tuple[Path, ...] = ()) -> None:
    """Give a warm sandbox its workspace: the overlay over the snapshot, mounted on this host, where the
    container sees it."""
    layer.mount_workspace(sandbox.directory / "layer", snapshot.path, list(lowers), read_only, SANDBOX_UID)
    sandbox.labels = layer.relabel(sandbox.directory, labels)


def list_sandboxes(client: docker.DockerClient, owner_name: str | None = None) -> list[dict]:
    """Containers Offload made (optionally one owner's), as label dicts with status."""
    filters = {"label": ["offload.sandbox"] + ([f"offload.owner={owner_name}"] if owner_name else [])}
    # one listing, no inspect per container: a container may be removed between the two
    return [{**c["Labels"], "status": c["State"], "container": c["Id"]}
            for c in client.api.containers(all=True, filters=filters)]


def sweep(client: docker.DockerClient | None, cache_dir: Path) -> list[str]:
    """Remove what Docker sandboxes of processes of this machine that died left: containers,
    setup networks, layers (those of this cache even when no engine answers) and the volumes
    earlier versions made."""
    removed, left = [], {}
    if client is not None:
        for c in client.api.containers(all=True, filters={"label": ["offload.sandbox", owner.LABEL]}):
            left.setdefault(c["Labels"]["offload.sandbox"], {}).update(c["Labels"], container=c["Id"])
        for v in client.api.volumes(filters={"label": ["offload.sandbox", owner.LABEL]}).get("Volumes") or []:
            left.setdefault(v["Labels"]["offload.sandbox"], {}).update(v["Labels"], volume=v["Name"])
        for n in client.api.networks(filters={"label": ["offload.sandbox", owner.LABEL]}):  # a setup's bridge
            left.setdefault(n["Labels"]["offload.sandbox"], {}).update(n["Labels"], network=n["Id"])
    for directory, labels in layer.directories(cache_dir):
        if labels.get("offload.backend") == "docker":
            left.setdefault(labels["offload.sandbox"], {}).update(labels, directory=str(directory))
    for sandbox_id, found in left.items():
        if not owner.dead(found):
            continue
        where = found.get("directory") or found.get("offload.directory")
        directory = Path(where) if where else None
        if directory is not None and (directory.name != sandbox_id or directory.parent.name != "sandboxes"):
            directory = None  # a label naming some other place: not ours to delete
        try:
            _remove(client, found.get("container"), found.get("volume"), directory)
            if found.get("network"):
                client.api.remove_network(found["network"])
        except docker.errors.DockerException:
            continue  # left for the next sweep
        removed.append(sandbox_id)
    return removed
