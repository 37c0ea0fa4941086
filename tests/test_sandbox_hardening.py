"""Attacks on what the host trusts inside a sandbox: the runner, the host's paths and environment,
the kernel's attack surface, the snapshot cache and the processes a command leaves behind. Each
must fail on both backends, started cold and claimed warm.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from offload.sandbox import seccomp
from offload.sandbox.image import SANDBOX_UID
from offload.sandbox.manager import SandboxConfig, SandboxManager
from tests.conftest import host_strings, part_missing
from tests.test_sandbox_backends import host_processes_mentioning
from tests.test_sandbox_safety import (  # noqa: F401  (fixtures)
    backend,
    make_manager,
    python,
    sandbox,
    sandbox_factory,
    start,
)
from tests.test_sandbox_setup import managers, repo  # noqa: F401  (fixtures)

# Run inside: every way a command of the runner's uid could read or steer the runner, or speak on
# the host's channel. The runner is the command's parent; every other process of the sandbox is
# written to as well, in case it holds the channel too (bwrap's own init did).
RUNNER_ATTACKS = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
runner, me = os.getppid(), os.getpid()
forged = "".join(json.dumps({"id": n, "ev": "out", "data": "FOR" + "GED\n"}) + "\n" for n in range(1, 200))

def attempt(what, action):
    try:
        action()
        print("SUCCEEDED", what, flush=True)
    except OSError as e:
        print("refused", what, e.strerror, flush=True)

def ptrace():
    if libc.ptrace(16, runner, None, None) != 0:  # PTRACE_ATTACH
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    os.waitpid(runner, 0x40000000)  # __WALL: the runner stops, then goes on untouched
    libc.ptrace(17, runner, None, None)  # PTRACE_DETACH

def mem():
    with open(f"/proc/{runner}/mem", "r+b", buffering=0):
        pass

def vm_write():  # EFAULT at a bogus address would mean the kernel let us in
    class iovec(ctypes.Structure):
        _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
    buf = ctypes.create_string_buffer(8)
    local, remote = iovec(ctypes.addressof(buf), 8), iovec(0x10000, 8)
    if libc.process_vm_writev(runner, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) < 0:
        if ctypes.get_errno() != 14:  # EFAULT
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))

def environ():
    with open(f"/proc/{runner}/environ", "rb") as f:
        if not f.read():
            raise OSError(13, "empty")

def speak(pid):
    def action():
        spoke = False
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                with open(f"/proc/{pid}/fd/{fd}", "w") as f:
                    f.write(forged)
                spoke = True
            except OSError:
                pass
        if not spoke:
            raise OSError(13, "no descriptor opened for writing")
    return action

attempt("ptrace the runner", ptrace)
attempt("open the runner's memory", mem)
attempt("write the runner's memory with process_vm_writev", vm_write)
attempt("read the runner's environment", environ)
attempt("write to the runner's descriptors", speak(runner))
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (me, runner)):
    try:  # a process of the sandbox's own (Docker's init): harmless unless it holds the channel
        speak(pid)()
    except OSError:
        pass
"""


SIGNALS = r"""
import os, signal, sys
runner = os.getppid()
for sig in (signal.SIGSTOP, signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL):
    try:
        os.kill(runner, sig)
        print("sent", sig.name, flush=True)
    except OSError as e:
        print("refused", sig.name, e.strerror, flush=True)
"""


def test_a_command_can_neither_stop_nor_kill_its_runner(sandbox):
    """The runner is the sandbox's init, which the kernel keeps from its own processes' signals.
    A stopped runner would answer nothing, ever: the test waits a minute for it."""
    pool = ThreadPoolExecutor(1)
    try:
        result = pool.submit(python, sandbox, SIGNALS).result(timeout=60)
        assert result.exit_code == 0 and "SIGKILL" in result.output, result.output
        assert pool.submit(sandbox.run, ["echo", "ok"]).result(timeout=60).output == "ok\n"
    finally:
        pool.shutdown(wait=False)  # a stuck call ends when its sandbox is destroyed


def test_commands_can_neither_trace_nor_write_the_runner_nor_speak_on_its_channel(sandbox):
    result = python(sandbox, RUNNER_ATTACKS)
    assert "SUCCEEDED" not in result.output, result.output
    assert "refused ptrace the runner" in result.output and "FORGED" not in result.output
    assert sandbox.run(["echo", "ok"]).output == "ok\n"


FORK_BOMBS = {
    "shell": ["bash", "-c", ":(){ :|:& };:"],
    "setsid": ["python3", "-c", "import os, sys\nif os.fork(): sys.exit(0)\nwhile True:\n"
                                " try:\n  if os.fork() == 0: os.setsid()\n except OSError: pass\n"],
}
COUNT = "import os; print(sum(p.isdigit() for p in os.listdir('/proc')))"


@pytest.mark.parametrize("bomb", FORK_BOMBS)
def test_a_fork_bomb_that_outlives_its_command_is_gone_before_the_next_one(sandbox_factory, bomb):
    sandbox = sandbox_factory(pids=64)
    baseline = int(python(sandbox, COUNT).output)
    sandbox.run(FORK_BOMBS[bomb], timeout=30)
    assert sandbox.run(["echo", "ok"]).output == "ok\n"
    assert int(python(sandbox, COUNT).output) == baseline


ESCAPES = {
    "setsid": "setsid python3 -c 'import time; time.sleep(1000)' {marker} > /dev/null 2>&1 &",
    "daemon": "python3 -c 'import os, sys, time\nif os.fork(): sys.exit(0)\nos.setsid()\nif os.fork(): os._exit(0)\n"
              "for fd in (0, 1, 2): os.close(fd)\ntime.sleep(1000)' {marker}",
}


@pytest.mark.parametrize("escape", ESCAPES)
def test_a_background_process_that_left_its_group_is_gone_when_its_command_ends(sandbox, escape):
    marker = f"offload-left-{secrets.token_hex(6)}"
    result = sandbox.run(["sh", "-c", ESCAPES[escape].format(marker=marker) + "\necho started"])
    assert result.exit_code == 0 and "started" in result.output
    assert not host_processes_mentioning(marker)


# Calls that succeed or fail otherwise for an unprivileged process without a filter, each with
# arguments that change nothing (a null pointer where the kernel would read one).
DENIED_CALLS = {
    "keyctl": (0, -3, 0), "add_key": (b"user", b"offload", b"x", 1, -2), "request_key": (b"user", b"offload", None, 0),
    "name_to_handle_at": (-100, b".", None, None, 0), "unshare": (0,), "perf_event_open": (None, 0, -1, -1, 0),
    "bpf": (5, None, 0), "userfaultfd": (1,), "kcmp": (1, 1, 0, 0, 0), "get_mempolicy": (None, None, 0, 0, 0),
    "syslog": (10, None, 0), "fsopen": (b"tmpfs", 0), "open_tree": (-100, b"/", 0), "clock_settime": (0, None),
    "setns": (-1, 0), "acct": (None,),
}
SYSCALLS = r"""
import ctypes, json, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
calls = json.loads(sys.argv[1])
for name, (number, args) in calls.items():
    args = [a.encode() if isinstance(a, str) else a for a in args]
    result = libc.syscall(number, *args)
    if result == 0 and name == "clone":
        os._exit(0)
    print(name, "ok" if result >= 0 else os.strerror(ctypes.get_errno()))
"""


def call_table(backend: str) -> dict:
    """Name -> (this machine's number, arguments) of the calls every sandbox must refuse."""
    column = seccomp.ARCHES[os.uname().machine][0]
    calls = dict(DENIED_CALLS, personality=(0x0040000,))  # ADDR_NO_RANDOMIZE
    if backend == "bubblewrap":  # Docker 20.10's profile still allows io_uring; newer ones and ours refuse it
        calls["io_uring_setup"] = (1, None)
    table = {name: ((seccomp.PERSONALITY if name == "personality" else seccomp.DENIED[name])[column],
                    [a.decode() if isinstance(a, bytes) else a for a in args]) for name, args in calls.items()}
    table["clone"] = (seccomp.CLONE[column], [0x10000000 | 17, 0, 0, 0, 0])  # CLONE_NEWUSER | SIGCHLD
    table["clone3"] = (seccomp.CLONE3[column], [None, 0])
    return table


def test_the_calls_dockers_profile_refuses_are_refused(sandbox, backend):
    table = call_table(backend)
    result = python(sandbox, SYSCALLS, json.dumps(table))
    answers = dict(line.split(" ", 1) for line in result.output.splitlines())
    assert answers.pop("clone3") == "Function not implemented", result.output  # libc falls back to clone
    assert answers == {name: "Operation not permitted" for name in table if name != "clone3"}, result.output


ORDINARY_WORK = r"""
set -e
printf '#include <stdio.h>\nint main(void) { puts("compiled"); return 0; }\n' > /tmp/hello.c
if command -v cc > /dev/null; then cc -o /tmp/hello /tmp/hello.c && /tmp/hello; else echo compiled; fi
python3 -c 'import subprocess, threading, multiprocessing as m
t = threading.Thread(target=print, args=("threads",)); t.start(); t.join()
with m.Pool(2) as pool: print(sum(pool.map(abs, [-1, -2])), "from a pool")
print(subprocess.run(["echo", "spawned"], capture_output=True, text=True).stdout.strip())'
python3 -m venv /tmp/venv && /tmp/venv/bin/python -c 'print("venv")'
echo change >> README.md && git commit -qam "a change" && git log --format=%s -1
"""


def test_ordinary_work_still_runs(sandbox):
    result = sandbox.run(["bash", "-c", ORDINARY_WORK], timeout=120)
    assert result.exit_code == 0, result.output
    assert result.output.split() == ["compiled", "threads", "3", "from", "a", "pool", "spawned", "venv",
                                     "a", "change"], result.output


ENVIRONS = r"""
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            print(pid, f.read().replace(b"\0", b" ").decode(errors="replace"))
    except OSError as e:
        print(pid, "unreadable:", e.strerror)
"""


@pytest.mark.parametrize("read_only", [False, True], ids=["code", "ask"])
def test_no_host_path_or_environment_is_seen_inside(make_manager, sample_repo, backend, tmp_path, read_only):
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo), read_only=read_only)
    environs = python(sandbox, ENVIRONS).output
    mounts = sandbox.run(["cat", "/proc/self/mountinfo"]).output
    assert "PWD=" not in environs and "OLDPWD" not in environs, environs
    for text in host_strings(tmp_path):
        assert text not in environs, environs
        assert text not in mounts, mounts


@pytest.mark.parametrize("read_only", [False, True], ids=["code", "ask"])
def test_no_host_path_is_seen_inside_over_a_setup(managers, repo, backend, tmp_path, read_only):
    """A setup adds lower layers to the workspace and an overlay on home: their options name no host path either."""
    manager = managers()
    sandbox = manager.create(manager.snapshot(repo), read_only=read_only)
    assert sandbox.run(["cat", "deps/lib.txt", "/home/offload/.setup-home"]).output == "setup\nhome\n"
    mounts = sandbox.run(["cat", "/proc/self/mountinfo"]).output
    assert any(" /home/offload " in line and " overlay " in line for line in mounts.splitlines()), mounts
    for text in host_strings(tmp_path):
        assert text not in mounts, mounts


def as_account(uid: int, script: str) -> subprocess.CompletedProcess:
    """`script` run on this host as another local account (the sandbox user's uid is often one)."""
    if os.geteuid() != 0:
        part_missing("acting as another local account needs root")
    return subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "sh", "-c", script],
                          capture_output=True, text=True, cwd="/")


@pytest.fixture
def open_dir():
    """A directory every account may enter, like a home directory often is (pytest's own is private)."""
    directory = Path(tempfile.mkdtemp(prefix="offload-open-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_no_other_account_can_reach_the_cache(backend, sample_repo, open_dir):
    """Other accounts, the sandbox user's uid first, try to read and change a task's input (the
    snapshot) and to plant a file in its layer or its workspace."""
    cache = open_dir / "cache"
    manager = SandboxManager(SandboxConfig(backend=backend), cache, owner=f"offload-test-{secrets.token_hex(4)}")
    try:
        sandbox = manager.create(manager.snapshot(sample_repo))
        sandbox.run(["sh", "-c", "echo mine > new.txt"])
        snapshot = sandbox.snapshot.path
        for uid in (SANDBOX_UID, 65534):
            tried = as_account(uid, f"ls {snapshot}; echo changed >> {snapshot}/calc.py; touch {snapshot}/planted")
            assert "calc.py" not in tried.stdout, tried
            assert b"changed" not in (snapshot / "calc.py").read_bytes() and not (snapshot / "planted").exists()
            tried = as_account(uid, f"find {cache} -name new.txt; "
                                    f"find {cache} -name upper -exec touch '{{}}/planted' ';'; "
                                    f"find {cache} -name ws -exec touch '{{}}/planted' ';'")
            assert "new.txt" not in tried.stdout and "planted" not in sandbox.run(["ls"]).output, tried
    finally:
        manager.close()
    for directory in (cache, snapshot.parent):
        st = directory.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.getuid(), 0o700), directory


def test_the_task_state_is_no_other_accounts(tmp_path):
    """Task logs hold the user's code and the model's edits; with a group-writable umask too."""
    from offload.server.tasks.store import TaskStore

    previous = os.umask(0o002)
    try:
        TaskStore(tmp_path / "state")
    finally:
        os.umask(previous)
    st = (tmp_path / "state").stat()
    assert stat.S_IMODE(st.st_mode) & 0o077 == 0 and st.st_uid == os.getuid()


def test_gits_housekeeping_finishes_within_its_command(sandbox):
    """`git gc --auto` detaches by default, and would be killed with what its command left: a
    stale gc.pid, or a lock that fails the next commit. The sandbox's git keeps it in the command."""
    made = sandbox.run(["sh", "-c", "git config gc.auto 10 && for i in $(seq 1000); do echo $i > f$i; done && "
                                    "git add -A && git commit -qm many"], timeout=300)
    assert made.exit_code == 0, made.output
    assert sandbox.read_file(".git/gc.pid") is None
    counts = dict(line.split(": ") for line in sandbox.run(["git", "count-objects", "-v"]).output.splitlines())
    assert int(counts["in-pack"]) > 1000 and int(counts["count"]) < 100, counts
