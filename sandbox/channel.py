"""Host side of the in-sandbox runner (runner.py): one JSON-lines channel, many concurrent calls.

Every command of a sandbox goes through one runner, so the host can stream, time out and kill
commands whatever the backend (a `docker exec -i` stream or a bwrap process's stdin/stdout).
"""

from __future__ import annotations

import base64
import itertools
import json
import logging
import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from .errors import SandboxError

log = logging.getLogger(__name__)

MAX_LINE = 256 << 20  # one message's bound: a sandbox writing without newlines can't exhaust the host
CANCEL_POLL = 0.05  # how soon run() notices its cancel event
CLOSE_WAIT = 5.0  # the runner needs up to its 2 s grace to kill its commands before exiting
_CLOSED = object()  # queued to every pending call when the channel ends


class ChannelClosed(SandboxError):
    """The channel to the runner is gone (it exited, its sandbox died, or close() was called)."""


@dataclass
class ExecResult:
    exit_code: int  # 128 + N when killed by signal N, as a shell reports it
    output: str  # stdout and stderr merged; head + marker + tail when longer than `keep`
    timed_out: bool
    output_limited: bool  # the command passed max_output and was killed for it
    duration: float
    omitted: int  # bytes dropped from the middle of `output`
    signal: int | None = None
    killed: bool = False  # killed on request (cancel)


class _HeadTail:
    """Keeps the first and last bytes of a stream within `keep`; the middle is only counted,
    so a long output costs bounded memory while the task log still gets every chunk."""

    def __init__(self, keep: int):
        self.head_cap = keep // 2
        self.tail_cap = keep - self.head_cap
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, text: str) -> None:
        data = text.encode("utf-8", "replace")
        self.total += len(data)
        room = self.head_cap - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > 2 * self.tail_cap:  # trim in batches, not on every chunk
            del self.tail[: len(self.tail) - self.tail_cap]

    def text(self) -> tuple[str, int]:
        del self.tail[: max(0, len(self.tail) - self.tail_cap)]
        if len(self.head) + len(self.tail) == self.total:
            return (self.head + self.tail).decode("utf-8", "replace"), 0
        head = self.head.decode("utf-8", "ignore")  # "ignore" only drops the characters cut in two
        tail = self.tail.decode("utf-8", "ignore")
        omitted = self.total - len(head.encode()) - len(tail.encode())
        return f"{head}\n[... {omitted} bytes omitted ...]\n{tail}", omitted


class RunnerClient:
    """Talks to one runner over a byte transport. Thread-safe: every call waits on its own queue,
    fed by one reader thread that never runs caller code."""

    def __init__(self, write: Callable[[bytes], None], read: Callable[[int], bytes], close: Callable[[], None]):
        self._write = write
        self._read = read
        self._close = close
        self._lock = threading.Lock()  # guards _calls and _closed; never held during I/O
        self._write_lock = threading.Lock()  # keeps request lines whole
        self._calls: dict[int, queue.SimpleQueue] = {}
        self._ids = itertools.count(1)
        self._closed: str | None = None
        self._transport_closed = False
        self._reader = threading.Thread(target=self._read_events, name="offload-runner-reader", daemon=True)
        self._reader.start()

    def __enter__(self) -> RunnerClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def run(
        self,
        argv: Sequence[str],
        cwd: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float | None = 600.0,
        stdin: str | None = None,
        on_output: Callable[[str], None] | None = None,
        keep: int = 1 << 20,
        max_output: int = 64 << 20,
        cancel: threading.Event | None = None,
        binary: bool = False,
    ) -> ExecResult:
        """Run a command to its end. `env` is the command's whole environment (the runner adds
        only PATH/HOME/LANG defaults); `on_output` sees every chunk, in this thread. With `binary`,
        `on_output` gets stdout's bytes exactly (it is required) and `output` holds stderr's tail."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        request = {"op": "exec", "argv": list(argv), "cwd": cwd, "env": dict(env or {}), "timeout": timeout,
                   "stdin": stdin, "max_output": max_output, **({"binary": True} if binary else {})}
        rid = self._send(request, events)
        kept = _HeadTail(keep)
        kill_sent = False
        try:
            while True:
                if cancel is not None and not kill_sent and cancel.is_set():
                    self._send({"op": "kill", "target": rid}, None)
                    kill_sent = True
                try:
                    event = events.get(timeout=CANCEL_POLL if cancel is not None and not kill_sent else None)
                except queue.Empty:
                    continue
                event = self._check(event)
                if event.get("ev") == "out":
                    if binary:
                        on_output(base64.b64decode(event.get("b64") or ""))
                        continue
                    kept.add(event["data"])
                    if on_output is not None:
                        on_output(event["data"])
                elif event.get("ev") == "exit":
                    if binary:
                        kept.add(str(event.get("stderr") or ""))
                    output, omitted = kept.text()
                    return ExecResult(
                        exit_code=event["code"], output=output, timed_out=event["timed_out"],
                        output_limited=event["output_limited"], duration=event["duration"], omitted=omitted,
                        signal=event["signal"], killed=event["killed"])
        except BaseException as exc:
            # The caller gave up (on_output raised, KeyboardInterrupt): stop the command. A refused
            # exec or a closed channel leaves nothing to stop.
            if not kill_sent and not isinstance(exc, (SandboxError, ChannelClosed)):
                try:
                    self._send({"op": "kill", "target": rid}, None)
                except ChannelClosed:
                    pass
            raise

    def read_file(self, path: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        event = self._request({"op": "read", "path": path})
        return None if event.get("missing") else base64.b64decode(event["data"])

    def write_file(self, path: str, data: bytes, mode: int | None = None) -> None:
        """Create or replace a file, creating its parent directories."""
        self._request({"op": "write", "path": path, "data": base64.b64encode(data).decode("ascii"), "mode": mode})

    def delete_file(self, path: str) -> bool:
        """Delete a file, symlink or directory tree; False when there was nothing to delete."""
        return not self._request({"op": "delete", "path": path}).get("missing")

    def ping(self) -> float:
        """Round-trip time in seconds."""
        start = time.perf_counter()
        self._request({"op": "ping"})
        return time.perf_counter() - start

    def close(self) -> None:
        """End the channel; the runner then kills every command it started and exits."""
        self._shut("the sandbox runner channel was closed by the host")
        with self._lock:
            if self._transport_closed:
                return
            self._transport_closed = True
        self._close()

    def _request(self, request: dict) -> dict:
        events: queue.SimpleQueue = queue.SimpleQueue()
        self._send(request, events)
        return self._check(events.get())

    def _send(self, request: dict, events: queue.SimpleQueue | None) -> int:
        """Write one request; `events` (if given) receives every event carrying its id."""
        with self._lock:
            if self._closed is not None:
                raise ChannelClosed(self._closed)
            rid = next(self._ids)
            if events is not None:
                self._calls[rid] = events
        line = (json.dumps({**request, "id": rid}) + "\n").encode()
        try:
            with self._write_lock:
                self._write(line)
        except (OSError, ValueError) as exc:
            with self._lock:
                self._calls.pop(rid, None)
            raise ChannelClosed(f"cannot write to the sandbox runner: {exc}") from exc
        return rid

    def _check(self, event) -> dict:
        if event is _CLOSED:
            raise ChannelClosed(self._closed)
        if event.get("ev") == "error":
            raise SandboxError(event.get("message") or "the sandbox runner refused the request")
        return event

    def _read_events(self) -> None:
        reason = "the sandbox runner exited (its channel reached EOF); its commands are gone"
        buf = bytearray()
        try:
            while chunk := self._read(1 << 16):
                buf += chunk
                if len(buf) > MAX_LINE and b"\n" not in chunk:
                    reason = f"the sandbox sent a line over {MAX_LINE >> 20} MiB; the channel was closed"
                    break
                if b"\n" in chunk:  # only split when a line is complete: results can be megabytes
                    *lines, rest = buf.split(b"\n")
                    buf = bytearray(rest)
                    for line in lines:
                        self._dispatch(line)
        except Exception as exc:  # a broken transport ends the channel just like EOF
            reason = f"the sandbox runner channel failed: {exc!r}"
        self._shut(reason)

    def _dispatch(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            log.warning("sandbox runner sent a malformed line: %r", line[:200])
            return
        if not isinstance(event, dict):
            log.warning("sandbox runner sent a non-object: %r", line[:200])
            return
        rid = event.get("id")
        final = event.get("ev") in ("exit", "result", "error")
        with self._lock:
            events = self._calls.pop(rid, None) if final else self._calls.get(rid)
        if events is not None:
            events.put(event)
        elif event.get("ev") == "error":  # an error for no pending call (id null: a line it could not parse)
            log.warning("sandbox runner error (id %s): %s", rid, event.get("message"))

    def _shut(self, reason: str) -> None:
        with self._lock:
            if self._closed is None:
                self._closed = reason
            pending = list(self._calls.values())
            self._calls.clear()
        for events in pending:
            events.put(_CLOSED)


@cache
def runner_source() -> str:
    """The runner's source, for a backend to ship into its sandbox (a file, or `python3 -c`)."""
    return Path(__file__).with_name("runner.py").read_text(encoding="utf-8")


def local_transport(argv: Sequence[str], env: dict[str, str] | None = None):
    """Spawn argv (a runner, directly or under bwrap) and return (write, read, close) over its
    stdin/stdout. Without `env` it gets only PATH, HOME and LANG: host secrets never leak in."""
    if env is None:
        env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG") if k in os.environ}
    # Its own session: a Ctrl-C at the host's terminal must not kill the runner behind our back.
    proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, start_new_session=True)

    def write(data: bytes) -> None:
        proc.stdin.write(data)
        proc.stdin.flush()

    def read(n: int) -> bytes:
        data = proc.stdout.read1(n)
        if not data:  # closed here, by the one reader, so close() never races a blocked read
            proc.stdout.close()
        return data

    return write, read, lambda: end_process(proc, CLOSE_WAIT)


def end_process(proc: subprocess.Popen, timeout: float) -> None:
    """Close a child's input, which tells it to finish, and kill it if it has not within `timeout` s."""
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
