"""Docker backend: one hardened container per sandbox, commands through the runner.

The container starts with no network, a non-root user, every capability dropped and
resource limits. The workspace snapshot is copied in as a tarball owned by the sandbox user;
then one `exec` starts the runner, and every later command travels over that exec's socket
(a fraction of a millisecond each, against ~0.1 s for an exec per command).
"""

from __future__ import annotations

import io
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path

import docker
import docker.errors
import docker.types

from .channel import RunnerClient, runner_source
from .errors import SandboxError
from .image import SANDBOX_UID

WORKSPACE = "/workspace"


class DockerTransport:
    """The runner's stdin/stdout over an exec's attached socket (Docker's multiplexed framing)."""

    def __init__(self, sock) -> None:
        self._raw: socket.socket = getattr(sock, "_sock", sock)
        self._sock = sock
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
    """A running container holding one workspace."""

    backend = "docker"

    def __init__(self, container, client: docker.DockerClient, runner: RunnerClient, labels: dict) -> None:
        self.container = container
        self.client = client
        self.runner = runner
        self.labels = labels
        self.id = labels["offload.sandbox"]
        self.workspace = WORKSPACE

    def destroy(self) -> None:
        """Stop and remove the container; idempotent."""
        try:
            self.runner.close()
        except Exception:
            pass
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:  # auto-removal already under way
            if e.status_code != 409:
                raise


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


def connect(base_url: str | None = None) -> docker.DockerClient:
    """A client for the engine, or a SandboxError that says how to get one."""
    try:
        client = docker.DockerClient(base_url=base_url) if base_url else docker.from_env()
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
    snapshot_path: Path,
    sandbox_id: str,
    labels: dict,
    memory: str,
    cpus: float,
    pids: int,
    network: bool,
    read_only: bool = False,
) -> DockerSandbox:
    """Start a container from `image` holding the snapshot, with its runner connected."""
    all_labels = {**labels, "offload.sandbox": sandbox_id, "offload.created": str(int(time.time()))}
    try:
        container = client.containers.create(
            image,
            command=["sleep", "infinity"],
            name=f"offload-{sandbox_id}",
            user=f"{SANDBOX_UID}:{SANDBOX_UID}",
            working_dir=WORKSPACE,
            environment={"HOME": "/home/offload", "LANG": "C.UTF-8", "PATH": "/usr/local/bin:/usr/bin:/bin"},
            network_mode="bridge" if network else "none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            pids_limit=pids,
            mem_limit=memory,
            memswap_limit=memory,
            nano_cpus=int(cpus * 1e9),
            init=True,
            auto_remove=True,  # the runner stops init when its owner goes: nothing stays behind
            # No container log: anything in the sandbox can write to its init's stdout (/proc/1/fd/1),
            # and json-file would store it on the host's disk without bound.
            log_config=docker.types.LogConfig(type=docker.types.LogConfig.types.NONE),
            labels=all_labels,
        )
    except docker.errors.ImageNotFound as e:
        raise SandboxError(f"sandbox image {image!r} is missing: run `offload image build`") from e
    except docker.errors.DockerException as e:
        raise SandboxError(f"could not create a sandbox container: {e}") from e
    try:
        container.put_archive("/", _workspace_tar(snapshot_path, read_only))
        container.start()
        runner = _start_runner(client, container)
    except Exception:
        container.remove(force=True)
        raise
    return DockerSandbox(container, client, runner, all_labels)


def _start_runner(client: docker.DockerClient, container) -> RunnerClient:
    exec_id = client.api.exec_create(
        container.id,
        ["python3", "-I", "-u", "-c", runner_source(), "--root", WORKSPACE, "--stop-init"],
        stdin=True, stdout=True, stderr=True, tty=False,
        user=f"{SANDBOX_UID}:{SANDBOX_UID}",
    )["Id"]
    sock = client.api.exec_start(exec_id, socket=True)
    transport = DockerTransport(sock)
    runner = RunnerClient(transport.write, transport.read, transport.close)
    try:
        runner.ping()
    except Exception as e:
        detail = getattr(transport, "stderr", b"").decode(errors="replace")
        raise SandboxError(f"the sandbox runner did not start: {e} {detail}".strip()) from e
    return runner


def list_sandboxes(client: docker.DockerClient, owner: str | None = None) -> list[dict]:
    """Containers Offload made (optionally one owner's), as label dicts with status."""
    filters = {"label": ["offload.sandbox"] + ([f"offload.owner={owner}"] if owner else [])}
    return [
        {**c.labels, "status": c.status, "container": c.id}
        for c in client.containers.list(all=True, filters=filters)
    ]

