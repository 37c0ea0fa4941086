"""`offload serve` in a subprocess, spoken to in raw framed JSON-RPC over its stdio (or over TCP).

The protocol tests write malformed bytes no LSP client library would send, and the benchmarks
time each message as it arrives; both need the wire itself rather than a client library.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

NO_PARAMS = object()  # request() sends no "params" member at all
NO_ANSWER = object()  # an answer that is never sent: a client that never replies


class StdioServer:
    """The real server over stdio. Every message it sends is kept in `messages` as
    (arrival time on `time.monotonic()`, message); its requests to the client are answered by
    `answers[method](message)` (null when no answer is registered)."""

    def __init__(self, env: dict | None = None, cwd: Path | None = None, tcp: bool = False) -> None:
        """`tcp`: the server listens (`serve --tcp`, on a port of the OS's choosing) and this connects."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "offload.server.cli", "serve", *(["--tcp", "127.0.0.1:0"] if tcp else [])],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
            cwd=cwd)
        self.to_server, self.from_server = self.proc.stdin, self.proc.stdout
        self.messages: list[tuple[float, dict]] = []
        self.stderr: list[str] = []
        self.answers: dict[str, Callable[[dict], Any]] = {}
        self._ids = itertools.count(1)
        self._changed = threading.Condition()
        self._write_lock = threading.Lock()
        threading.Thread(target=self._read_stderr, daemon=True).start()
        if tcp:
            self.to_server = self.from_server = self._connect()
        threading.Thread(target=self._read, daemon=True).start()

    def _connect(self, timeout: float = 30):
        deadline = time.monotonic() + timeout
        while not (said := [m for line in self.stderr if (m := re.search(r"serving LSP on \('([\d.]+)', (\d+)\)", line))]):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise TimeoutError("the server never said where it listens:\n" + "".join(self.stderr))
            time.sleep(0.05)
        self.socket = socket.create_connection((said[0][1], int(said[0][2])))
        return self.socket.makefile("rwb")

    # ---- the wire --------------------------------------------------------------------------
    @staticmethod
    def frame(body: dict | bytes) -> bytes:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return b"Content-Length: %d\r\n\r\n" % len(data) + data

    def write(self, data: bytes) -> None:
        with self._write_lock:
            self.to_server.write(data)
            self.to_server.flush()

    def _read(self) -> None:
        out = self.from_server
        while True:
            length = None
            while True:
                line = out.readline()
                if not line:
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("ascii").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = out.read(length)
            message = json.loads(body)
            with self._changed:
                self.messages.append((time.monotonic(), message))
                self._changed.notify_all()
            if "method" in message and "id" in message:
                answer = self.answers.get(message["method"], lambda m: None)(message)
                if answer is not NO_ANSWER:
                    self.write(self.frame({"jsonrpc": "2.0", "id": message["id"], "result": answer}))

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.decode(errors="replace"))

    # ---- messages ----------------------------------------------------------------------------
    def request(self, method: str, params: Any = NO_PARAMS) -> int:
        msg_id = next(self._ids)
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if params is not NO_PARAMS:
            message["params"] = params
        self.write(self.frame(message))
        return msg_id

    def notify(self, method: str, params: Any) -> None:
        self.write(self.frame({"jsonrpc": "2.0", "method": method, "params": params}))

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 30, since: int = 0) -> dict:
        """The first message (from index `since` on) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for _, message in self.messages[since:]:
                    if predicate(message):
                        return message
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise TimeoutError(f"no such message within {timeout} s; the server said:\n"
                                       + "".join(self.stderr[-40:]))
                self._changed.wait(left)

    def response(self, msg_id: Any, timeout: float = 30) -> dict:
        return self.wait_for(lambda m: m.get("id") == msg_id and "method" not in m, timeout)

    def call(self, method: str, params: Any = NO_PARAMS, timeout: float = 30) -> dict:
        """The whole response (with `result` or `error`) to one request."""
        return self.response(self.request(method, params), timeout)

    def command(self, name: str, *arguments: Any, timeout: float = 30) -> dict:
        return self.call("workspace/executeCommand", {"command": name, "arguments": list(arguments)}, timeout)

    def initialize(self, root: Path, settings: dict | None = None, capabilities: dict | None = None) -> dict:
        reply = self.call("initialize", {
            "processId": os.getpid(), "rootUri": root.as_uri(), "capabilities": capabilities or {},
            "workspaceFolders": [{"uri": root.as_uri(), "name": root.name}],
            "initializationOptions": {"settings": settings or {}}})
        self.notify("initialized", {})
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("shutdown", None, timeout=10)
                self.notify("exit", None)
                self.proc.wait(timeout=10)
            except (OSError, TimeoutError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> StdioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
