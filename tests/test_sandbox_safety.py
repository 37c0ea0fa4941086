"""Attacks from inside a sandbox, each of which must fail, on both backends.

Every attack is bounded (seconds, a few hundred MB at most) and aims only at this machine.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import SandboxConfig, SandboxManager
from tests.conftest import git, make_repo
from tests.test_sandbox_backends import (  # noqa: F401  (fixtures)
    backend,
    host_processes_mentioning,
    wait_until,
)


def python(sandbox, source: str, *args: str, timeout: float = 60, **kw):
    return sandbox.run(["python3", "-c", source, *args], timeout=timeout, **kw)


@pytest.fixture(params=["cold", "warm"])
def start(request) -> str:
    """How every sandbox of a test starts: for it (cold), or claimed from the warm pool (`sandbox.warm`)."""
    return request.param


@pytest.fixture
def make_manager(backend, start, tmp_path):
    """SandboxManager factory on the backend under test; with `warm`, one sandbox is ready before the
    manager is handed out, so its first sandbox is a claimed warm one. Everything goes at the end."""
    managers = []

    def make(**settings) -> SandboxManager:
        manager = SandboxManager(SandboxConfig(backend=backend, warm=int(start == "warm"), **settings),
                                 tmp_path / "cache", owner=f"offload-test-{uuid.uuid4().hex[:8]}")
        managers.append(manager)
        manager.prewarm()
        assert wait_until(lambda: manager.warm_ready() == int(start == "warm"), timeout=60)
        return manager

    yield make
    for manager in managers:
        manager.close()


@pytest.fixture
def sandbox_factory(make_manager, sample_repo, start):
    """Sandboxes over the sample repository with the given sandbox settings."""
    def make(**settings):
        manager = make_manager(**settings)
        sandbox = manager.create(manager.snapshot(sample_repo))
        assert sandbox.warm == (start == "warm")
        return sandbox
    return make


@pytest.fixture
def sandbox(sandbox_factory):
    return sandbox_factory()


@pytest.fixture
def canary():
    """A secret file in the host user's home, removed afterwards."""
    path = Path.home() / f"offload-canary-{secrets.token_hex(6)}"
    path.write_text(f"secret-{secrets.token_hex(8)}\n")
    yield path
    path.unlink(missing_ok=True)


def host_addresses() -> list[str]:
    """This machine's IPv4 addresses: loopback, the Docker bridge, every interface."""
    try:
        out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    except FileNotFoundError:  # no iproute2: loopback alone
        out = ""
    return sorted({line.split()[3].split("/")[0] for line in out.splitlines()} | {"127.0.0.1"})


@pytest.fixture
def listeners():
    """A TCP server on each host address; returns [(address, port)] and counts connections."""
    servers, accepted = [], []
    for address in host_addresses():
        server = socket.create_server((address, 0))
        server.settimeout(0.2)
        servers.append(server)
    stop = threading.Event()

    def serve(server):
        while not stop.is_set():
            try:
                conn, peer = server.accept()
            except OSError:
                continue
            accepted.append(peer)
            conn.close()

    threads = [threading.Thread(target=serve, args=(s,), daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield [s.getsockname() for s in servers], accepted
    stop.set()
    for t in threads:
        t.join()
    for s in servers:
        s.close()


CONNECT = """
import socket, sys
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        print("REACHED", target)
    except OSError as e:
        print("blocked", target, e)
"""


def test_no_route_out_to_any_address_of_this_machine(sandbox, listeners):
    addresses, accepted = listeners
    assert "127.0.0.1" in [a for a, _ in addresses]
    for address, port in addresses:  # the servers do answer the host
        socket.create_connection((address, port), timeout=2).close()
    assert wait_until(lambda: len(accepted) == len(addresses))
    result = python(sandbox, CONNECT, *(f"{a}:{p}" for a, p in addresses))
    assert result.output.count("blocked") == len(addresses), result.output
    assert "REACHED" not in result.output
    assert len(accepted) == len(addresses)


def test_the_host_home_and_other_host_files_are_invisible(sandbox, canary, tmp_path):
    beside = tmp_path / "host-secret.txt"
    beside.write_text("host tmp secret\n")
    secrets_ = [canary.read_text().strip(), "host tmp secret"]
    for path in (canary, beside, Path("/work/main/AGENTS.md"), Path.home() / ".bash_history"):
        result = sandbox.run(["cat", str(path)])
        assert result.exit_code != 0, f"{path} readable: {result.output[:200]}"
    listing = sandbox.run(["sh", "-c", f"ls -a {Path.home()} /home /tmp /work 2>&1; cat /etc/shadow 2>&1"]).output
    assert canary.name not in listing and not any(s in listing for s in secrets_)
    # the image's own /etc may be there; this host's shadow file never is
    host_shadow = Path("/etc/shadow").read_text().splitlines() if os.access("/etc/shadow", os.R_OK) else []
    assert not any(line in listing for line in host_shadow if line)


def test_no_host_environment_variable_reaches_a_command(sandbox_factory, monkeypatch):
    key, marker = f"sk-test-{secrets.token_hex(8)}", f"host-only-{secrets.token_hex(8)}"
    monkeypatch.setenv("OPENAI_API_KEY", key)
    monkeypatch.setenv("OFFLOAD_HOST_MARKER", marker)
    sandbox = sandbox_factory()
    env = sandbox.run(["env"]).output
    assert "OPENAI_API_KEY" not in env and key not in env and marker not in env
    names = {line.split("=", 1)[0] for line in env.splitlines()}
    assert names <= {"HOME", "PATH", "LANG", "TERM", "PAGER", "GIT_PAGER", "PYTHONDONTWRITEBYTECODE",
                     "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0", "GIT_CONFIG_KEY_1",
                     "GIT_CONFIG_VALUE_1"}
    # nor any process of the sandbox, the runner and init included
    every = sandbox.run(["sh", "-c", "cat /proc/[0-9]*/environ | tr '\\0' '\\n'"]).output
    assert key not in every and marker not in every and "OPENAI_API_KEY" not in every


FORK_BOMB = """
import os, sys, time
end = time.time() + 3
children, failed = [], 0
while time.time() < end and len(children) < 2000:
    try:
        pid = os.fork()
    except OSError:
        failed += 1
        time.sleep(0.005)
        continue
    if pid == 0:
        time.sleep(max(0.0, end - time.time()))
        os._exit(0)
    children.append(pid)
print("forked", len(children), "failed", failed, flush=True)
for pid in children:
    os.waitpid(pid, 0)
"""


def test_a_fork_bomb_hits_the_pids_limit_and_other_sandboxes_still_answer(sandbox_factory):
    bombed, other = sandbox_factory(pids=64), sandbox_factory()
    results = {}
    bomb = threading.Thread(target=lambda: results.setdefault("bomb", python(bombed, FORK_BOMB, timeout=30)))
    bomb.start()
    try:
        answer = other.run(["echo", "still here"], timeout=30)
    finally:
        bomb.join()
    assert answer.exit_code == 0 and answer.output == "still here\n"
    words = results["bomb"].output.split()
    forked, failed = int(words[words.index("forked") + 1]), int(words[words.index("failed") + 1])
    assert failed > 0 and forked < 64, results["bomb"].output
    assert bombed.run(["echo", "recovered"]).output == "recovered\n"


MEMORY_HOG = """
chunks = []
for _ in range(64):  # up to 1 GiB, every page touched
    chunks.append(b"\\1" * (16 << 20))
print("survived", len(chunks) * 16, "MiB")
"""


def test_a_memory_hog_is_stopped_by_the_memory_limit(sandbox_factory):
    sandbox = sandbox_factory(memory="256m", disk="64m")  # bubblewrap's cgroup holds memory + disk
    result = python(sandbox, MEMORY_HOG)
    assert result.exit_code != 0 and "survived" not in result.output, result.output
    assert sandbox.run(["echo", "alive"]).output == "alive\n"


def test_an_output_flood_is_cut_at_max_output(sandbox):
    result = sandbox.runner.run(["yes", "flood"], cwd=sandbox.workdir, timeout=60, max_output=1 << 20, keep=4096)
    assert result.output_limited and result.exit_code != 0
    assert len(result.output) < 8192 and "bytes omitted" in result.output


def test_a_command_ignoring_sigterm_is_killed_at_its_timeout(sandbox):
    result = sandbox.run(["sh", "-c", "trap '' TERM; echo started; while :; do sleep 1; done"], timeout=1)
    assert result.timed_out and result.signal == 9, result
    assert "started" in result.output


DAEMON = """
import os, sys, time
if os.fork():
    sys.exit(0)
os.setsid()
if os.fork():
    os._exit(0)
for fd in (0, 1, 2):
    os.close(fd)
time.sleep(60)
"""


def test_a_daemonized_process_does_not_survive_destroy(make_manager, sample_repo):
    """Started by a command still running (one that ended takes its leftovers with it)."""
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo))
    marker = f"offload-daemon-{secrets.token_hex(6)}"
    command = ["sh", "-c", 'python3 -c "$0" "$1" && sleep 60', DAEMON, marker]
    running = threading.Thread(target=lambda: pytest.raises(SandboxError, sandbox.run, command))
    running.start()
    assert wait_until(lambda: host_processes_mentioning(marker)), "the daemon never started"
    manager.destroy(sandbox.id)
    running.join()
    assert wait_until(lambda: not host_processes_mentioning(marker)), "the daemon outlived its sandbox"


@pytest.fixture
def linked_repo(tmp_path, canary):
    """A repository whose symlinks point out of it: at host files and a host directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    repo = make_repo(tmp_path / "linked")
    os.symlink("/etc/passwd", repo / "passwd-link")
    os.symlink(canary, repo / "canary-link")
    os.symlink(outside, repo / "outside-dir")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "links")
    return repo, outside


def test_symlinks_out_of_the_repository_lead_nowhere(make_manager, linked_repo, canary):
    repo, outside = linked_repo
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(repo))
    host_passwd, secret = Path("/etc/passwd").read_text(), canary.read_text()
    # through the file operations
    for link in ("passwd-link", "canary-link", "outside-dir/x"):
        with pytest.raises(SandboxError, match="escapes the sandbox root"):
            sandbox.read_file(link)
    for link in ("canary-link", "outside-dir/x", "passwd-link"):
        with pytest.raises(SandboxError, match="escapes the sandbox root"):
            sandbox.write_file(link, b"pwned\n")
    # through shell commands
    assert sandbox.run(["cat", "canary-link"]).exit_code != 0
    passwd = sandbox.run(["cat", "passwd-link"]).output
    assert passwd != host_passwd and secret not in passwd
    sandbox.run(["sh", "-c", "echo pwned > canary-link; echo pwned > outside-dir/x; echo pwned >> passwd-link"])
    assert canary.read_text() == secret and Path("/etc/passwd").read_text() == host_passwd
    assert list(outside.iterdir()) == []


FILLER = """
import sys
written = 0
try:
    with open(sys.argv[1], "wb") as f:
        block = b"\\0" * (1 << 20)
        while written < (300 << 20):
            f.write(block)
            f.flush()
            written += 1 << 20
    print("wrote all", written >> 20, "MiB")
except OSError as e:
    print("stopped at", written >> 20, "MiB:", e)
"""


@pytest.mark.parametrize("where", ["/workspace/fill.bin", "/tmp/fill.bin", "/home/offload/fill.bin"])
def test_a_disk_filler_is_contained(sandbox_factory, where):
    sandbox = sandbox_factory(disk="128m", memory="1g")
    result = python(sandbox, FILLER, where)
    assert "wrote all" not in result.output and "No space left" in result.output, result.output
    sandbox.run(["rm", "-f", where])
    assert sandbox.run(["sh", "-c", "echo ok > after.txt && cat after.txt"]).output == "ok\n"


def test_kernel_settings_of_the_host_are_read_only(sandbox):
    result = sandbox.run(["sh", "-c", "cat /proc/sys/kernel/printk_ratelimit > /proc/sys/kernel/printk_ratelimit"])
    assert result.exit_code != 0, "a host sysctl was writable"
    # opening for writing is the test; nothing is ever written to sysrq-trigger
    opened = python(sandbox, "import os\ntry:\n os.close(os.open('/proc/sysrq-trigger', os.O_WRONLY))\n"
                             " print('OPENED')\nexcept OSError as e:\n print('refused', e)")
    assert "OPENED" not in opened.output


STDERR_FLOOD = """
import os
block = b"offload-leak\\n" * 8192
hit = 0
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            with open(f"/proc/{pid}/fd/2", "ab") as f:
                for _ in range(64):  # about 6 MiB each
                    f.write(block)
            hit += 1
        except OSError:
            pass
print("flooded", hit)
"""


def test_the_stderr_of_init_and_runner_fills_no_host_file(sandbox, backend):
    result = python(sandbox, STDERR_FLOOD)
    assert "flooded" in result.output, result.output
    if backend == "docker":
        container = sandbox.backend.container
        container.reload()
        log = container.attrs.get("LogPath") or ""
        assert not log or os.path.getsize(log) < (1 << 20), "the container log took the flood"
    else:
        on_host = sum(p.stat().st_size for p in sandbox.backend.directory.rglob("*") if p.is_file())
        assert on_host < (1 << 20)
    assert sandbox.run(["echo", "ok"]).output == "ok\n"


def test_host_processes_can_be_neither_seen_nor_signalled(sandbox):
    victim = subprocess.Popen(["sleep", "60"])
    try:
        targets = " ".join(str(p) for p in (victim.pid, os.getpid(), os.getppid()))
        result = sandbox.run(["sh", "-c", f"for p in {targets}; do kill -9 $p; ls /proc/$p; done"])
        assert result.output.count("No such process") == 3, result.output
        assert result.output.count("No such file or directory") == 3, result.output
        assert victim.poll() is None, "a host process was killed from inside"
    finally:
        victim.kill()
        victim.wait()


def test_no_new_namespace_can_be_made_inside(sandbox):
    result = sandbox.run(["unshare", "-Ur", "id"])
    assert result.exit_code != 0 and "uid=0" not in result.output, result.output
