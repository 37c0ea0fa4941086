"""A command the task's state refuses is answered with its reason, and the server's log (what an
editor shows in its output channel) holds no traceback of it."""

from __future__ import annotations

import json
import subprocess
import sys


def send(proc: subprocess.Popen, body: dict) -> None:
    data = json.dumps(body).encode()
    proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(data) + data)
    proc.stdin.flush()


def receive(proc: subprocess.Popen) -> dict:
    length = 0
    while (line := proc.stdout.readline().strip()):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return json.loads(proc.stdout.read(length))


def test_a_refusal_is_answered_without_a_traceback_in_the_log(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "serve"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
                                 "XDG_STATE_HOME": str(tmp_path / "state"), "XDG_CACHE_HOME": str(tmp_path / "cache")})
    try:
        send(proc, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"capabilities": {}, "rootUri": None}})
        send(proc, {"jsonrpc": "2.0", "method": "initialized", "params": {}})
        send(proc, {"jsonrpc": "2.0", "id": 2, "method": "workspace/executeCommand",
                    "params": {"command": "offload.apply", "arguments": [{"taskId": "no-such-task"}]}})
        while (answer := receive(proc)).get("id") != 2:
            pass
        send(proc, {"jsonrpc": "2.0", "id": 3, "method": "shutdown"})
        send(proc, {"jsonrpc": "2.0", "method": "exit"})
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert answer["error"]["code"] == -32803 and "no task" in answer["error"]["message"], answer
    assert "Traceback" not in stderr.decode(), stderr.decode()
