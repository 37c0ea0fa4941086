"""Offload's in-sandbox command runner.

Started once per sandbox (`python3 runner.py --root /workspace`), it keeps one JSON-lines channel
with the host on its stdin/stdout and runs every command in a process group of its own, so that a
timeout, a cancel or the host going away kills the whole command: the Docker API cannot kill an
exec, and an exec's process outlives a client that disconnects. Stdlib only and self-contained,
because it is shipped into images we do not control (Debian bookworm's python3 3.11 at least).

Commands run as the runner's own uid, so the runner guards itself. It is not dumpable (`harden`),
which makes its /proc entries root's and refuses ptrace to its uid: nothing in the sandbox can read
its memory or open its channel. It is the sandbox's init (pid 1; see `main`), which the kernel
keeps from its own processes' signals. And it is the reaper of every process its commands orphan,
so what a command leaves running (a daemon, a fork bomb) is killed when it ends (`Runner.sweep`).

Requests (one JSON object a line, each with an integer "id"): exec, kill, read, write, delete,
ping. Events: out, exit, result, error. See offload.sandbox.channel for the host side.
"""

import argparse
import base64
import binascii
import codecs
import contextlib
import json
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

CHUNK = 64 * 1024  # the most output bytes one `out` event carries
COALESCE = 0.005  # small writes are gathered this long, so a chatty command sends few events
TICK = 0.05  # how often a command's pump looks at its process when no output arrives
GRACE = 2.0  # SIGTERM, then SIGKILL this much later
DRAIN = 1.0  # after the command exits, how long a background child may keep its output open
SWEEP_FOR = 10.0  # the most seconds a sweep keeps killing what a command left (a fork bomb refills)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36


class BadRequest(Exception):
    """A request the runner refuses; answered with an `error` event, never fatal."""


def _field(req, name, kinds, what):
    value = req.get(name)
    if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
        raise BadRequest(f"{name} must be {what}")
    return value


def _signal_group(pgid, sig):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def harden():
    """Make this process non-dumpable and the reaper of its descendants' orphans (prctl); returns
    what could not be done, for a warning: an image without ctypes, or a kernel that refuses."""
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError) as exc:
        return [f"no prctl ({exc}): commands may trace the runner, and orphans escape its sweep"]
    missing = []
    for option, value, what in ((PR_SET_DUMPABLE, 0, "non-dumpable: commands may trace the runner"),
                                (PR_SET_CHILD_SUBREAPER, 1, "subreaper: orphaned processes escape the sweep")):
        if prctl(option, value, 0, 0, 0) != 0:
            missing.append(f"not {what} ({os.strerror(ctypes.get_errno())})")
    return missing


def processes():
    """Every process this runner can see: pid -> (ppid, pgid, sid, state), from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue  # gone meanwhile
            table[int(name)] = (int(fields[1]), int(fields[2]), int(fields[3]), fields[0].decode())
    return table


def descendants(table, root):
    """The pids below `root` in `table`."""
    children = {}
    for pid, (ppid, *_) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = set(), list(children.get(root, ()))
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


class Command:
    """One running command: its process group, its output pump, and why it may be killed."""

    def __init__(self, runner, rid, argv, cwd, env, stdin, timeout, max_output, binary=False):
        self.runner, self.id, self.argv, self.cwd, self.env = runner, rid, argv, cwd, env
        self.stdin, self.timeout, self.max_output = stdin, timeout, max_output
        self.binary = binary  # stdout as base64 bytes (`out` events with "b64"), for git packs
        self.kill_requested = threading.Event()
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self.pending = bytearray()
        self.flush_at = 0.0
        self.total = 0
        self.eof = self.limited = self.killed = self.timed_out = self.kill_sent = False
        self.term_at = None
        self.thread = self.proc = None

    def start(self):
        """Start the command's thread, which starts its process: a command that fills the pids limit
        at once (a fork bomb) must find the thread that watches it already running."""
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.runner.started(self)
        try:
            self.thread.start()
        except RuntimeError:  # no thread to be had: the sandbox is full of processes
            self.runner.finished(self)
            raise

    def _run(self):
        try:
            with self.runner.spawning:  # its pid known before the reaper may look at it
                self.proc = subprocess.Popen(
                    self.argv, cwd=self.cwd, env=self.env, start_new_session=True,
                    stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE if self.binary else subprocess.STDOUT)
        except OSError as exc:  # like a shell: a message and 127/126, not a protocol error
            self.runner.finished(self)
            self.runner.send({"id": self.id, "ev": "out", "data": f"offload-runner: cannot run {self.argv[0]!r}: {exc}\n"})
            self._send_exit(127 if isinstance(exc, FileNotFoundError) else 126, None)
            return
        self.pgid = self.proc.pid
        self.deadline = None if self.timeout is None else self.started + self.timeout
        self.stderr, self.stderr_reader = b"", None
        try:
            if self.stdin:
                threading.Thread(target=self._feed, daemon=True).start()
            if self.binary:
                self.stderr_reader = threading.Thread(target=self._keep_stderr, daemon=True)
                self.stderr_reader.start()
        except RuntimeError:  # the command filled the pids limit first; unfed, it could wait forever
            self.kill()
        self._pump()

    def kill(self):
        self.killed = True  # set here, not by the pump: a kill that races the exit still counts
        self.kill_requested.set()

    def _feed(self):
        """Write stdin from its own thread: a command that does not read it must not block us."""
        with contextlib.suppress(OSError):
            self.proc.stdin.write(self.stdin.encode("utf-8", "replace"))
        with contextlib.suppress(OSError):
            self.proc.stdin.close()

    def _keep_stderr(self):
        """A binary command's stderr: its last 4 KiB go with its exit event, for the error message."""
        with contextlib.suppress(OSError, ValueError):
            while data := self.proc.stderr.read1(CHUNK):
                self.stderr = (self.stderr + data)[-4096:]

    def _pump(self):
        """Forward output and enforce timeout, kill and max_output until the command is over."""
        fd = self.proc.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:  # wakes us the moment the command exits
            pidfd = os.pidfd_open(self.pgid)
            poller.register(pidfd, select.POLLIN)
        except (AttributeError, OSError):  # an old kernel or a seccomp filter: look every TICK instead
            pidfd = None
        exited_at = None
        while True:
            now = time.monotonic()
            if self.pending and (self.eof or len(self.pending) >= CHUNK or now >= self.flush_at):
                self._flush()
            if exited_at is None and self.proc.poll() is not None:
                exited_at = now
                if pidfd is not None:
                    poller.unregister(pidfd)
                    os.close(pidfd)
                    pidfd = None
            if exited_at is not None and (self.eof or now >= exited_at + DRAIN):
                break
            wake = now + TICK
            if self.term_at is None:
                if self.kill_requested.is_set():
                    self._terminate()
                elif exited_at is None and self.deadline is not None:
                    if now >= self.deadline:
                        self.timed_out = True
                        self._terminate()
                    wake = min(wake, self.deadline)
            if self.term_at is not None and not self.kill_sent:
                if now >= self.term_at + GRACE:
                    _signal_group(self.pgid, signal.SIGKILL)
                    self.kill_sent = True
                wake = min(wake, self.term_at + GRACE)
            if exited_at is not None:
                wake = min(wake, exited_at + DRAIN)
            if self.pending:
                wake = min(wake, self.flush_at)
            delay = max(0.0, wake - now)
            if self.eof and pidfd is None:  # output closed, process not reaped yet
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(delay)
            elif any(f == fd for f, _ in poller.poll(delay * 1000)):
                self._read(fd)
                if self.eof:
                    poller.unregister(fd)
        self._flush(final=True)
        self.runner.finished(self)
        self.runner.sweep(self.pgid)  # before its exit is told: the next command finds the sandbox clean
        if self.stderr_reader is not None:
            self.stderr_reader.join(DRAIN)
        self.proc.stdout.close()
        rc = self.proc.returncode
        self._send_exit(128 - rc if rc < 0 else rc, -rc if rc < 0 else None)

    def _read(self, fd):
        data = os.read(fd, CHUNK)
        if not data:
            self.eof = True
            return
        if self.limited:
            return
        if self.max_output is not None and self.total + len(data) > self.max_output:
            data = data[: self.max_output - self.total]
            self.limited = True
            if self.term_at is None:
                self._terminate()
        self.total += len(data)
        if not self.pending:
            self.flush_at = time.monotonic() + COALESCE
        self.pending += data

    def _flush(self, final=False):
        if self.binary:
            while self.pending:
                data = base64.b64encode(bytes(self.pending[:CHUNK])).decode("ascii")
                del self.pending[:CHUNK]
                self.runner.send({"id": self.id, "ev": "out", "b64": data})
            return
        while self.pending:
            text = self.decoder.decode(bytes(self.pending[:CHUNK]))
            del self.pending[:CHUNK]
            if text:
                self.runner.send({"id": self.id, "ev": "out", "data": text})
        tail = self.decoder.decode(b"", final=True) if final else ""
        if tail:
            self.runner.send({"id": self.id, "ev": "out", "data": tail})

    def _terminate(self):
        self.term_at = time.monotonic()
        _signal_group(self.pgid, signal.SIGTERM)

    def _send_exit(self, code, sig):
        self.runner.send({
            "id": self.id, "ev": "exit", "code": code, "signal": sig, "timed_out": self.timed_out,
            "killed": self.killed, "output_limited": self.limited,
            "duration": round(time.monotonic() - self.started, 6),
            **({"stderr": getattr(self, "stderr", b"").decode("utf-8", "replace")} if self.binary else {})})


class Runner:
    """The request loop: file operations inline, commands on their own threads."""

    def __init__(self, root, out):
        self.root = os.path.realpath(root)
        self._out = out
        self._out_lock = threading.Lock()
        self._lock = threading.Lock()
        self._commands = {}  # id -> Command, until its exit event
        self.spawning = threading.RLock()  # held while a command starts, and while reaping or sweeping

    def send(self, event):
        line = (json.dumps(event, separators=(",", ":")) + "\n").encode()
        with self._out_lock:
            with contextlib.suppress(OSError, ValueError):  # host gone: stdin EOF follows
                self._out.write(line)
                self._out.flush()

    def serve(self, inp):
        try:
            for line in inp:
                if line.strip():
                    self.handle(line)
        finally:  # stdin EOF, or SIGTERM/SIGHUP
            self.shutdown()

    def handle(self, line):
        rid = None
        try:
            try:
                req = json.loads(line)
            except ValueError as exc:
                raise BadRequest(f"malformed JSON line: {exc}") from None
            if not isinstance(req, dict):
                raise BadRequest("a request must be a JSON object")
            if not isinstance(req.get("id"), int) or isinstance(req.get("id"), bool):
                raise BadRequest("a request needs an integer id")
            rid = req["id"]
            op = req.get("op")
            handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
            if handler is None:
                raise BadRequest(f"unknown op: {op!r}")
            result = handler(rid, req)
            if result is not None:
                self.send({"id": rid, "ev": "result", **result})
        except BadRequest as exc:
            self.send({"id": rid, "ev": "error", "message": str(exc)})
        except Exception as exc:  # a failing request must never take the runner down
            self.send({"id": rid, "ev": "error", "message": f"{type(exc).__name__}: {exc}"})

    def shutdown(self):
        """The host is gone: stop every command and kill whatever is left, so the sandbox stops by itself."""
        with self._lock:
            commands = list(self._commands.values())
        for command in commands:
            command.kill()
        end = time.monotonic() + GRACE
        for command in commands:
            command.thread.join(max(0.0, end - time.monotonic()))
        self.sweep()

    def started(self, command):
        with self._lock:
            self._commands[command.id] = command

    def finished(self, command):
        with self._lock:
            self._commands.pop(command.id, None)

    def sweep(self, pgid=None):
        """Kill what ended commands left running: the processes of group or session `pgid`, and,
        when no other command runs (or at shutdown), every descendant of the runner, where the
        orphans of daemons and fork bombs land (`harden`). A fork bomb refills what is killed, so
        this kills until nothing is left."""
        me, end = os.getpid(), time.monotonic() + SWEEP_FOR
        with self.spawning:  # no command starts meanwhile, to be taken for a leftover
            with self._lock:
                everything = pgid is None or not self._commands
            while time.monotonic() < end:
                table = processes()
                kin = descendants(table, me) if everything else set()
                kin |= {pid for pid, (_, group, session, _) in table.items() if pgid in (group, session)}
                live = [pid for pid in kin if pid != me and table[pid][3] not in "ZX"]
                if not live:
                    break
                for pid in live:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                self.reap()
            self.reap()

    def reap(self):
        """Reap the runner's zombie children that are no command's own process (those are their
        pump's): orphans that came to it as their reaper, which would hold the pids limit."""
        me = os.getpid()
        with self.spawning:
            with self._lock:
                own = {command.proc.pid for command in self._commands.values() if command.proc is not None}
            for pid, (ppid, _, _, state) in processes().items():
                if ppid == me and state == "Z" and pid not in own:
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, os.WNOHANG)

    def reaper(self, wakeups):
        """Reap whenever a child ends: `wakeups` is the signal wakeup fd's pipe (SIGCHLD)."""
        with contextlib.suppress(OSError):
            while os.read(wakeups, 4096):
                self.reap()

    # --- operations -------------------------------------------------------------------------

    def op_exec(self, rid, req):
        argv = req.get("argv")
        if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
            raise BadRequest("argv must be a non-empty list of strings")
        env = req.get("env") or {}
        if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
            raise BadRequest("env must be an object of strings")
        cwd = _field(req, "cwd", str, "a string")
        stdin = _field(req, "stdin", str, "a string")
        timeout = _field(req, "timeout", (int, float), "a number")
        max_output = _field(req, "max_output", int, "an integer")
        binary = req.get("binary", False)
        if not isinstance(binary, bool):
            raise BadRequest("binary must be a boolean")
        if timeout is not None and not timeout >= 0:
            raise BadRequest("timeout must not be negative")
        if max_output is not None and max_output < 0:
            raise BadRequest("max_output must not be negative")
        with self._lock:
            if rid in self._commands:
                raise BadRequest(f"command {rid} is already running")
        env = dict(env)  # exactly the host's environment, plus working defaults
        env.setdefault("PATH", os.environ.get("PATH", DEFAULT_PATH))
        env.setdefault("HOME", os.path.expanduser("~"))
        env.setdefault("LANG", os.environ.get("LANG", "C.UTF-8"))
        cwd = os.path.join(self.root, cwd) if cwd else self.root
        Command(self, rid, argv, cwd, env, stdin, timeout, max_output, binary).start()

    def op_kill(self, rid, req):
        with self._lock:
            command = self._commands.get(req.get("target"))
        if command is not None:
            command.kill()
        return {"ok": True, "running": command is not None}

    def op_ping(self, rid, req):
        return {"ok": True}

    def op_read(self, rid, req):
        _, target = self._paths(req.get("path"))
        try:
            fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            return {"missing": True}
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO would block the request loop
                raise BadRequest(f"not a regular file: {req['path']}")
            return {"data": base64.b64encode(f.read()).decode("ascii")}

    def op_write(self, rid, req):
        _, target = self._paths(req.get("path"))
        try:
            data = base64.b64decode(req.get("data") or "", validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise BadRequest(f"data must be base64: {exc}") from None
        mode = _field(req, "mode", int, "an integer")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(target, flags, 0o666)
        with open(fd, "wb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise BadRequest(f"not a regular file: {req['path']}")
            if mode is not None:
                os.fchmod(fd, mode & 0o7777)  # exactly this mode, whatever the umask
            f.write(data)
        return {"ok": True}

    def op_delete(self, rid, req):
        entry, _ = self._paths(req.get("path"))
        if entry == self.root:
            raise BadRequest("refusing to delete the sandbox root")
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            return {"ok": True, "missing": True}
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(entry)
        else:
            os.unlink(entry)
        return {"ok": True}

    def _paths(self, path):
        """(entry, target): the path with its parent resolved but its last component kept, and
        fully resolved. Both must stay inside the root, so no symlink leads a file op out."""
        if not isinstance(path, str) or not path or "\0" in path:
            raise BadRequest("path must be a non-empty string")
        full = os.path.join(self.root, path)  # an absolute path replaces the root
        target = os.path.realpath(full)
        head, name = os.path.split(full.rstrip("/"))
        entry = target if name in ("", ".", "..") else os.path.join(os.path.realpath(head), name)
        for p in (entry, target):
            if os.path.commonpath([self.root, p]) != self.root:
                raise BadRequest(f"path escapes the sandbox root {self.root}: {path}")
        return entry, target


def main(argv=None):
    parser = argparse.ArgumentParser(description="Offload's in-sandbox command runner (JSON lines on stdin/stdout).")
    parser.add_argument("--root", required=True, help="the directory file operations are confined to")
    parser.add_argument("--stop-init", action="store_true",
                        help="stop the container's init when the channel ends: a sandbox whose owner is gone stops")
    args = parser.parse_args(argv)
    # Before 3.11, even -I puts '' (here the workspace, which commands write) first on the path.
    sys.path[:] = [p for p in sys.path if p]
    for warning in harden():
        print(f"offload-runner: warning: {warning}", file=sys.stderr, flush=True)
    if os.getpid() == 1:  # a sandbox's init: without handlers, no signal of its commands reaches it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    else:  # stopped from outside: still clean up (an init's end ends every process of its sandbox)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda signum, frame: sys.exit(128 + signum))
    runner = Runner(args.root, os.fdopen(os.dup(1), "wb"))
    wakeups, wake = os.pipe()
    os.set_blocking(wake, False)
    signal.set_wakeup_fd(wake, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # the wakeup fd does the work
    threading.Thread(target=runner.reaper, args=(wakeups,), daemon=True).start()
    os.dup2(2, 1)  # a stray print can never corrupt the channel
    os.chdir(runner.root)
    try:
        runner.serve(sys.stdin.buffer)
    finally:
        if args.stop_init:
            os.kill(1, signal.SIGTERM)


if __name__ == "__main__":
    main()
