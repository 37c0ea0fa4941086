"""The in-sandbox runner and its host client, end to end over a real subprocess channel."""

import logging
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from offload.sandbox.channel import (
    ChannelClosed,
    RunnerClient,
    SandboxError,
    local_transport,
    runner_source,
)


def runner_argv(root):
    return [sys.executable, "-I", "-c", runner_source(), "--root", str(root)]


@pytest.fixture
def root(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    return ws


@pytest.fixture
def client(root):
    with RunnerClient(*local_transport(runner_argv(root))) as c:
        yield c


def alive(pid):
    """True while the process exists and is not a zombie (PID 1 here may never reap orphans)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(predicate, timeout=10.0):
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)


def pids_from(path):
    wait_for(lambda: path.exists() and path.read_text().endswith("\n"))
    return [int(p) for p in path.read_text().split()]


def test_exit_codes(client):
    assert client.run(["true"]).exit_code == 0
    assert client.run(["false"]).exit_code == 1
    assert client.run(["sh", "-c", "exit 7"]).exit_code == 7
    r = client.run(["sh", "-c", "kill -9 $$"])
    assert (r.exit_code, r.signal) == (137, 9)
    r = client.run(["no-such-command-here"])
    assert r.exit_code == 127 and "no-such-command-here" in r.output


def test_streaming_before_exit_and_merged_stderr(client, root):
    # The command only finishes once the test has seen its first output: no streaming, no exit.
    def on_output(chunk):
        if "ready" in chunk:
            (root / "go").touch()

    r = client.run(["sh", "-c", "echo ready; while [ ! -e go ]; do sleep 0.01; done; echo done"],
                   on_output=on_output, timeout=10)
    assert (r.exit_code, r.output) == (0, "ready\ndone\n")
    r = client.run(["sh", "-c", "echo 1; echo 2 >&2; echo 3; echo 4 >&2"])
    assert r.output == "1\n2\n3\n4\n"


def test_chatty_output_is_coalesced(client):
    chunks = []
    r = client.run(["sh", "-c", "for i in $(seq 2000); do echo $i; done"], on_output=chunks.append)
    assert "".join(chunks) == r.output == "".join(f"{i}\n" for i in range(1, 2001))
    assert len(chunks) < 500


def test_stdin(client):
    assert client.run(["cat"], stdin="hello\nworld").output == "hello\nworld"
    assert client.run(["cat"]).output == ""  # /dev/null, not a stdin that never closes
    big = "x" * (1 << 20)
    assert client.run(["wc", "-c"], stdin=big).output.strip() == str(1 << 20)


def test_env_is_exactly_the_given_one(root, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    # Even a runner that inherits the host's environment passes none of it on.
    with RunnerClient(*local_transport(runner_argv(root), env=dict(os.environ))) as c:
        out = c.run(["env"], env={"FOO": "bar baz"}).output
    env = dict(line.split("=", 1) for line in out.splitlines())
    assert set(env) == {"FOO", "PATH", "HOME", "LANG"}
    assert env["FOO"] == "bar baz"
    with RunnerClient(*local_transport(runner_argv(root))) as c:
        assert "OPENAI_API_KEY" not in c.run(["env"]).output
        assert c.run(["sh", "-c", 'echo "$LANG"'], env={"LANG": "C"}).output == "C\n"


def test_timeout_kills_a_group_that_ignores_sigterm(client, root):
    r = client.run(["sh", "-c", 'trap "" TERM; sleep 100 & echo $$ $! > pids; sleep 100'], timeout=0.5)
    assert r.timed_out and not r.killed and r.signal == signal.SIGKILL
    for pid in pids_from(root / "pids"):
        wait_for(lambda: not alive(pid))


def test_timeout_kills_a_background_child_in_the_group(client, root):
    r = client.run(["sh", "-c", "sleep 100 & echo $! > pid; sleep 100"], timeout=0.3)
    assert r.timed_out and r.exit_code == 128 + signal.SIGTERM
    (pid,) = pids_from(root / "pid")
    wait_for(lambda: not alive(pid))


def test_a_background_child_holding_the_output_does_not_hold_the_command(client, root):
    r = client.run(["sh", "-c", "sleep 100 & echo $! > pid; echo started"], timeout=60)
    assert (r.exit_code, r.output, r.timed_out) == (0, "started\n", False)
    (pid,) = pids_from(root / "pid")
    assert not alive(pid)  # what a command leaves running ends with it


DAEMON = "import os, sys, time\nif os.fork(): sys.exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\n" \
         "open('pid', 'w').write(f'{os.getpid()}\\n')\nfor fd in (0, 1, 2): os.close(fd)\ntime.sleep(100)\n"


@pytest.mark.parametrize("escape", ["setsid", "double fork"])
def test_what_escapes_the_group_is_killed_when_its_command_ends(client, root, escape):
    argv = (["sh", "-c", "setsid sleep 100 > /dev/null 2>&1 & echo $! > pid"] if escape == "setsid"
            else [sys.executable, "-c", DAEMON])
    assert client.run(argv).exit_code == 0
    (pid,) = pids_from(root / "pid")
    assert not alive(pid)
    assert client.run(["echo", "next"]).output == "next\n"


def test_a_running_command_keeps_what_it_started_while_another_ends(client, root):
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.run, ["sh", "-c", "setsid sleep 100 & echo $! > first; wait"], timeout=60)
        (theirs,) = pids_from(root / "first")
        r = client.run(["sh", "-c", "sleep 100 & echo $! > second"])
        (mine,) = pids_from(root / "second")
        assert r.exit_code == 0 and not alive(mine)  # the ended command's own group went
        assert alive(theirs)  # the running one's escaped child stays: it may be its server
        client.run(["kill", str(theirs)])
        assert first.result(timeout=10).exit_code == 0
    assert not alive(theirs)


ORPHANS = """
import os, time
r, w = os.pipe()
for _ in range(50):  # grandchildren whose parent ends before them: orphans, each naming itself
    if os.fork() == 0:
        if os.fork() == 0:
            os.write(w, f"{os.getpid()}\\n".encode())
            time.sleep(0.01)
        os._exit(0)
    os.wait()
os.close(w)
data = b""
while chunk := os.read(r, 4096):  # the end: every orphan has exited (reaped or a zombie)
    data += chunk
orphans = [int(pid) for pid in data.split()]
left = lambda: [pid for pid in orphans if os.path.exists(f"/proc/{pid}")]  # a zombie is still there
end = time.monotonic() + 10
while left() and time.monotonic() < end:
    time.sleep(0.05)
print(len(orphans), "orphans,", len(left()), "unreaped")
"""


def test_orphans_are_reaped_while_their_command_runs(client):
    """The runner is their reaper: left as zombies they would count against the pids limit."""
    assert client.run([sys.executable, "-c", ORPHANS]).output == "50 orphans, 0 unreaped\n"


def test_output_flood_is_stopped_by_max_output(client):
    seen = []
    r = client.run(["yes"], max_output=1 << 20, keep=4096, on_output=seen.append, timeout=60)
    assert r.output_limited and r.exit_code != 0 and not r.timed_out
    assert sum(len(c) for c in seen) == 1 << 20
    assert r.omitted == (1 << 20) - 4096
    assert r.output.startswith("y\ny\n") and r.output.endswith("y\n")
    assert f"[... {r.omitted} bytes omitted ...]" in r.output


def test_keep_head_and_tail(client):
    full = "".join(f"{i}\n" for i in range(1, 100001))
    r = client.run(["seq", "1", "100000"], keep=1000)
    head, tail = r.output.split(f"\n[... {r.omitted} bytes omitted ...]\n")
    assert r.omitted == len(full) - 1000
    assert full.startswith(head) and full.endswith(tail) and len(head) == len(tail) == 500
    assert client.run(["seq", "1", "100"], keep=1000).omitted == 0
    # A cut inside a multi-byte character drops that character instead of mangling it.
    r = client.run(["python3", "-c", "print('é' * 1000)"], keep=101)
    assert "\ufffd" not in r.output and r.omitted > 0


def test_eight_commands_at_once(client, root):
    (root / "c").mkdir()
    # Each waits until all eight have started: this only finishes if they really run together.
    script = 'touch "s$0"; while [ "$(ls | wc -l)" -lt 8 ]; do sleep 0.01; done; echo "$0"'
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: client.run(["sh", "-c", script, str(i)], cwd="c", timeout=20), range(8)))
    assert [(r.exit_code, r.output) for r in results] == [(0, f"{i}\n") for i in range(8)]


def test_cancel_kills_the_command(client, root):
    cancel = threading.Event()
    r = client.run(["sh", "-c", "echo $$ > pid; echo ready; sleep 100"], cancel=cancel,
                   on_output=lambda chunk: cancel.set(), timeout=60)
    assert r.killed and not r.timed_out and r.exit_code == 128 + signal.SIGTERM
    (pid,) = pids_from(root / "pid")
    wait_for(lambda: not alive(pid))


def test_files(client, root):
    client.write_file("a/b/c.txt", b"hello", mode=0o751)
    assert (root / "a/b/c.txt").read_bytes() == b"hello"
    assert (root / "a/b/c.txt").stat().st_mode & 0o7777 == 0o751
    assert client.read_file("a/b/c.txt") == b"hello"
    assert client.read_file(str(root / "a/b/c.txt")) == b"hello"  # absolute, inside the root
    client.write_file("bin", bytes(range(256)))
    assert client.read_file("bin") == bytes(range(256))
    assert client.read_file("nope") is None
    assert client.delete_file("a/b/c.txt") is True
    assert client.read_file("a/b/c.txt") is None
    assert client.delete_file("a/b/c.txt") is False
    with pytest.raises(SandboxError):
        client.read_file("a")  # a directory: an error, not a crash
    assert client.delete_file("a") is True and not (root / "a").exists()


def test_paths_outside_the_root_are_refused(client, root, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "out").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "not-yet")
    (root / "outdir").symlink_to(tmp_path)
    for path in ["passwd", "../outside.txt", "/etc/passwd", "sub/../../outside.txt", "outdir/outside.txt"]:
        with pytest.raises(SandboxError, match="escapes the sandbox root"):
            client.read_file(path)
    for path in ["out", "dangling", "../outside.txt", "outdir/new.txt", "/tmp/offload-escape.txt"]:
        with pytest.raises(SandboxError, match="escapes the sandbox root"):
            client.write_file(path, b"pwned")
    for path in ["out", "../outside.txt", "outdir/outside.txt", "."]:
        with pytest.raises(SandboxError):
            client.delete_file(path)
    assert outside.read_text() == "keep me"
    assert not (tmp_path / "not-yet").exists() and not (tmp_path / "new.txt").exists()
    assert not os.path.exists("/tmp/offload-escape.txt")
    (root / "inner").symlink_to("a.txt")  # a symlink that stays inside is fine
    client.write_file("inner", b"via link")
    assert (root / "a.txt").read_bytes() == b"via link"


def test_bad_requests_get_errors_and_the_runner_keeps_going(root, caplog):
    write, read, close = local_transport(runner_argv(root))
    with RunnerClient(write, read, close) as c, caplog.at_level(logging.WARNING, "offload.sandbox.channel"):
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(c.run, ["sh", "-c", "while [ ! -e go ]; do sleep 0.01; done; echo ok"], timeout=20)
            write(b"{this is not json\n")
            write(b'{"op": "bogus", "id": 999999}\n')
            write(b'["not", "an", "object"]\n')
            with pytest.raises(SandboxError, match="argv"):
                c.run([])
            with pytest.raises(SandboxError, match="timeout"):
                c.run(["true"], timeout=-1)
            wait_for(lambda: len(caplog.records) >= 3)
            (root / "go").touch()
            assert running.result().output == "ok\n"
        assert c.ping() > 0
        messages = " | ".join(r.getMessage() for r in caplog.records)
        assert "malformed JSON" in messages and "unknown op: 'bogus'" in messages and "JSON object" in messages


@pytest.mark.parametrize("stop", ["stdin EOF", "SIGTERM"])
def test_a_stopped_runner_kills_everything_and_exits(client, root, stop):
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.run, ["sh", "-c", "sleep 100 & echo $$ $! $PPID > pids; wait"])
        sh, child, runner = pids_from(root / "pids")
        if stop == "SIGTERM":  # the runner still reports the exits of what it kills
            os.kill(runner, signal.SIGTERM)
            assert running.result(timeout=10).killed
        else:
            client.close()
            with pytest.raises(ChannelClosed):
                running.result(timeout=10)
    for pid in (sh, child, runner):
        wait_for(lambda: not alive(pid))
    with pytest.raises(ChannelClosed):
        client.ping()


def test_channel_closed_when_the_runner_dies_mid_run(client, root):
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(client.run, ["sh", "-c", "echo $PPID $$ > pids; sleep 100"])
        runner, sh = pids_from(root / "pids")
        os.kill(runner, signal.SIGKILL)
        try:
            with pytest.raises(ChannelClosed, match="exited"):
                running.result(timeout=10)
            with pytest.raises(ChannelClosed):
                client.run(["true"])
        finally:
            os.killpg(sh, signal.SIGKILL)  # a runner killed outright cannot clean up after itself


def test_without_pidfd_the_runner_falls_back_to_polling(root):
    """Old kernels and some seccomp profiles refuse pidfd_open; the runner must not care."""
    no_pidfd = "import os\ndef pidfd_open(pid):\n    raise OSError(38, 'no pidfd')\nos.pidfd_open = pidfd_open\n"
    argv = [sys.executable, "-I", "-c", no_pidfd + runner_source(), "--root", str(root)]
    with RunnerClient(*local_transport(argv)) as c:
        assert [c.run(["sh", "-c", f"exit {n}"]).exit_code for n in range(3)] == [0, 1, 2]
        assert c.run(["sh", "-c", "echo a; exec >&-; sleep 0.2"]).output == "a\n"
        r = c.run(["sh", "-c", "sleep 100 & echo $! > pid; sleep 100"], timeout=0.3)
        assert r.timed_out
        (pid,) = pids_from(root / "pid")
        wait_for(lambda: not alive(pid))
        assert c.run(["sh", "-c", "sleep 100 & echo started"]).output == "started\n"


def test_without_prctl_the_runner_works_and_says_what_it_lacks(root, capfd):
    """An image whose Python has no ctypes (or a kernel that refuses): the runner still serves."""
    no_prctl = "import sys\nsys.modules['ctypes'] = None\n"  # `import ctypes` fails, as without libffi
    argv = [sys.executable, "-I", "-c", no_prctl + runner_source(), "--root", str(root)]
    with RunnerClient(*local_transport(argv)) as c:
        assert c.run(["sh", "-c", "sleep 100 & echo $! > pid; echo ran"]).output == "ran\n"
        (pid,) = pids_from(root / "pid")
        assert not alive(pid)  # its own group is still killed
    assert "offload-runner: warning: no prctl" in capfd.readouterr().err


def test_overhead_of_true(client):
    """Reports the round trip of `true` through the runner against a bare local spawn."""
    client.run(["true"])
    through = []
    for _ in range(200):
        start = time.perf_counter()
        assert client.run(["true"]).exit_code == 0
        through.append(time.perf_counter() - start)
    bare = []
    for _ in range(50):
        start = time.perf_counter()
        subprocess.run(["true"], check=True)
        bare.append(time.perf_counter() - start)
    print(f"\n`true` through the runner: p50 {statistics.median(through) * 1000:.2f} ms, "
          f"p90 {statistics.quantiles(through, n=10)[-1] * 1000:.2f} ms; "
          f"bare subprocess.run p50 {statistics.median(bare) * 1000:.2f} ms")
