"""More Docker engines on this machine, for tests of several engines: each a real `dockerd` with its
own socket, data and state directories, holding the sandbox image, optionally also on TLS TCP."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import docker

START_TIMEOUT = 60.0


def _make_bridge() -> str:
    """A bridge of the engine's own. Not `--bridge none`: a dockerd told that deletes the host's
    docker0, which the main engine's containers need."""
    for n in range(1, 250):
        name = f"offload-br{n}"
        if subprocess.run(["ip", "link", "add", name, "type", "bridge"], capture_output=True).returncode == 0:
            subprocess.run(["ip", "addr", "add", f"10.250.{n}.1/24", "dev", name], check=True)
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
            return name
    raise RuntimeError("no free bridge name for another Docker engine")


class Dockerd:
    """One extra engine. `stop()` takes everything it made away, whether it was killed or not."""

    def __init__(self, tls: bool = False, hostname: str | None = None) -> None:
        self.hostname = hostname  # another name than this machine's: over TCP the engine looks remote
        self.root = Path(tempfile.mkdtemp(prefix="offload-dockerd-"))  # short: socket paths are bounded
        self.url = f"unix://{self.root}/docker.sock"
        self.tls_url: str | None = None
        self.cert_path: Path | None = None
        if tls:
            self.cert_path = self.root / "127.0.0.1"  # the per-host directory under DOCKER_CERT_PATH=root
            _make_certificates(self.cert_path)
            self.tls_url = f"tcp://127.0.0.1:{_free_port()}"
        self.process: subprocess.Popen | None = None
        self.bridge = _make_bridge()
        self.start()

    def _argv(self) -> list[str]:
        argv = ["dockerd", "--host", self.url, "--data-root", str(self.root / "data"),
                "--exec-root", str(self.root / "exec"), "--pidfile", str(self.root / "docker.pid"),
                "--bridge", self.bridge, "--iptables=false", "--ip-masq=false"]
        if self.tls_url:
            certs = self.cert_path
            argv += ["--host", self.tls_url, "--tlsverify", f"--tlscacert={certs}/ca.pem",
                     f"--tlscert={certs}/server-cert.pem", f"--tlskey={certs}/server-key.pem"]
        return argv

    def start(self) -> None:
        argv = self._argv()
        if self.hostname:  # its own UTS namespace, so `docker info` reports another Name
            argv = ["unshare", "--uts", "sh", "-c", f'hostname {self.hostname} && exec "$@"', "sh", *argv]
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                client = docker.DockerClient(base_url=self.url, timeout=5)
                client.ping()
                client.close()
                return
            except Exception as e:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log_tail = (self.root / "dockerd.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"a second dockerd did not start ({e}):\n{log_tail}") from e
                time.sleep(0.1)

    def load_image(self, image: str) -> None:
        """`docker save IMAGE | docker -H URL load`, from the default engine."""
        save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", self.url, "load", "-q"], stdin=save.stdout, capture_output=True)
        save.stdout.close()
        if save.wait() != 0 or load.returncode != 0:
            raise RuntimeError(f"could not load {image} into {self.url}: {load.stderr.decode(errors='replace')}")

    def client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url)

    def kill(self) -> None:
        """SIGKILL the daemon and its containerd, as a crash would: its containers' processes live on,
        unreachable. The containerd's pid file goes too: left unreaped, it would look alive to a restart."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        pidfile = self.root / "exec" / "containerd" / "containerd.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while _state(pid) not in ("Z", "X") and time.monotonic() < deadline:
                time.sleep(0.05)
            pidfile.unlink()

    def stop(self) -> None:
        try:
            if self.process.poll() is not None:
                self.start()  # a restarted engine kills and removes the containers it lost
            client = self.client()
            for container in client.containers.list(ignore_removed=True, all=True):
                container.remove(force=True)
            client.close()
            self.process.terminate()
            self.process.wait(60)
        finally:
            self._kill_leftovers()
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(str(self.root))), key=len, reverse=True):
            subprocess.run(["umount", "-l", mount], capture_output=True)
        shutil.rmtree(self.root)


    def _kill_leftovers(self) -> None:
        """Whatever still runs of this engine (when it could not be stopped in order): its daemon, its
        containerd and shims, and each container's init (its pid namespace goes with it)."""
        mine = [pid for pid in _pids() if str(self.root).encode() in _cmdline(pid)]
        inits = [pid for pid in _pids() if _parent(pid) in mine]
        for pid in inits + mine:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _stat(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return ["X", "0"]


def _state(pid: int) -> str:
    return _stat(pid)[0]


def _parent(pid: int) -> int:
    return int(_stat(pid)[1])


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_certificates(directory: Path) -> None:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, in DOCKER_CERT_PATH's layout."""
    directory.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=offload test CA",
            "-keyout", "ca-key.pem", "-out", "ca.pem")
    for name, extension in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                            ("client", "extendedKeyUsage=clientAuth")):
        (directory / f"{name}.ext").write_text(extension + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}-key.pem",
                "-out", f"{name}.csr")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
                "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}-cert.pem")
    os.rename(directory / "client-cert.pem", directory / "cert.pem")
    os.rename(directory / "client-key.pem", directory / "key.pem")


class SshEngine:
    """This machine's engine reached as `ssh://root@127.0.0.1:PORT`: a real sshd of its own (keys,
    config and port in a temporary directory) and an `ssh` first on PATH that uses its client
    config, since ssh reads ~/.ssh/config from the password database, not from $HOME."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="offload-sshd-"))
        for name in ("host", "client"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.root / name)], check=True)
        (self.root / "authorized_keys").write_text((self.root / "client.pub").read_text())
        self.port = _free_port()
        (self.root / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.root / 'host'}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
            f"PidFile {self.root / 'sshd.pid'}\n")
        (self.root / "ssh_config").write_text(
            f"Host 127.0.0.1\n  IdentityFile {self.root / 'client'}\n  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n")
        self.bin = self.root / "bin"
        self.bin.mkdir()
        wrapper = self.bin / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {self.root / "ssh_config"} "$@"\n')
        wrapper.chmod(0o755)
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.process = subprocess.Popen([sshd, "-D", "-e", "-f", str(self.root / "sshd_config")],
                                        stdout=subprocess.DEVNULL, stderr=open(self.root / "sshd.log", "wb"))
        self.url = f"ssh://root@127.0.0.1:{self.port}"
        deadline = time.monotonic() + START_TIMEOUT
        while not _listening(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("sshd did not start: " + (self.root / "sshd.log").read_text(errors="replace"))
            time.sleep(0.05)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)
        shutil.rmtree(self.root)
