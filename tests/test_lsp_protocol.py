"""Malformed client messages at the JSON-RPC level, written as raw bytes to the real `offload serve`.

Each gets a clear JSON-RPC error (a notification: a line in the log, nothing sent back), and the
server keeps serving: a normal request answers right after every one.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import make_repo
from tests.lsp_wire import NO_PARAMS, StdioServer

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, REQUEST_FAILED = -32700, -32600, -32601, -32602, -32803


@pytest.fixture
def server(tmp_path):
    repo = make_repo(tmp_path / "calc")
    with StdioServer() as srv:
        assert "result" in srv.initialize(repo)
        srv.repo = repo
        yield srv


def still_serving(server: StdioServer) -> None:
    reply = server.command("offload.listTasks", {})
    assert "tasks" in reply["result"], reply


def null_id_error(server: StdioServer, since: int) -> dict:
    return server.wait_for(lambda m: "error" in m and m.get("id", "absent") is None, since=since)["error"]


def test_a_body_that_is_not_json_gets_a_parse_error(server):
    since = len(server.messages)
    server.write(server.frame(b'{"jsonrpc": "2.0", "id": 5, "method": '))
    error = null_id_error(server, since)
    assert error["code"] == PARSE_ERROR and "not JSON" in error["message"]
    still_serving(server)


@pytest.mark.parametrize("header", [b"Content-Type: application/vscode-jsonrpc\r\n", b"Content-Length: lots\r\n",
                                    b"Content-Length: -3\r\n"])
def test_a_missing_or_invalid_content_length_is_reported_and_the_next_message_served(server, header):
    since = len(server.messages)
    server.write(header + b"\r\n" + json.dumps({"jsonrpc": "2.0", "id": 99, "method": "shutdown"}).encode())
    error = null_id_error(server, since)
    assert error["code"] == PARSE_ERROR and "skipped" in error["message"]
    still_serving(server)  # its header follows the unframed body on the same line: found anyway
    assert not any(m.get("id") == 99 for _, m in server.messages), "the unframed message must not run"
    still_serving(server)


def test_bytes_between_messages_and_a_short_content_length_are_reported(server):
    since = len(server.messages)
    server.write(b"stray text\r\n")
    assert "outside any message" in null_id_error(server, since)["message"]
    still_serving(server)
    since = len(server.messages)
    server.write(b'Content-Length: 5\r\n\r\n{"jsonrpc": "2.0", "method": "initialized", "params": {}}')
    assert null_id_error(server, since)["code"] == PARSE_ERROR
    still_serving(server)


@pytest.mark.parametrize("body", [[1, 2], {"id": 7, "method": "shutdown"}, {"jsonrpc": "2.0"}])
def test_json_that_is_not_a_message_is_an_invalid_request(server, body):
    since = len(server.messages)
    server.write(server.frame(body))
    reply = server.wait_for(lambda m: "error" in m, since=since)
    assert reply["error"]["code"] == INVALID_REQUEST and '"jsonrpc": "2.0"' in reply["error"]["message"]
    assert reply["id"] == (body.get("id") if isinstance(body, dict) else None)
    still_serving(server)


def test_over_tcp_the_same_reader_answers_malformed_messages():
    with StdioServer(tcp=True) as server:
        since = len(server.messages)
        server.write(server.frame(b'{"jsonrpc": "2.0", "id": 5, "method": '))
        assert null_id_error(server, since)["code"] == PARSE_ERROR
        server.write(b"Content-Length: lots\r\n\r\n")
        assert "invalid header" in null_id_error(server, since + 1)["message"]
        assert "capabilities" in server.call("initialize", {"processId": None, "rootUri": None,
                                                            "capabilities": {}})["result"]


def test_an_unknown_method_is_not_found(server):
    reply = server.call("offload/noSuchThing", {})
    assert reply["error"]["code"] == METHOD_NOT_FOUND and "offload/noSuchThing" in reply["error"]["message"]
    still_serving(server)


@pytest.mark.parametrize("params, field", [
    (NO_PARAMS, "$.params"),
    ({"textDocument": "file:///calc.py", "range": {"start": {"line": 0, "character": 0},
                                                   "end": {"line": 0, "character": 0}},
      "context": {"diagnostics": []}}, "text_document"),
    ({"textDocument": {"uri": "file:///calc.py"}, "range": "0:0-1:0", "context": {"diagnostics": []}}, "range"),
])
def test_a_standard_request_with_params_of_the_wrong_shape_gets_invalid_params(server, params, field):
    reply = server.call("textDocument/codeAction", params)
    error = reply["error"]
    assert error["code"] == INVALID_PARAMS, reply
    assert error["message"].startswith("Invalid params for textDocument/codeAction") and field in error["message"]
    still_serving(server)


def test_execute_command_with_params_of_the_wrong_shape_gets_invalid_params(server):
    reply = server.call("workspace/executeCommand", "offload.listTasks")
    assert reply["error"]["code"] == INVALID_PARAMS and "command" in reply["error"]["message"]
    still_serving(server)


def test_notifications_that_cannot_apply_are_logged_and_ignored(server):
    uri = (server.repo / "calc.py").as_uri()
    since = len(server.messages)
    server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                             "contentChanges": [{"text": "x = 1\n"}]})
    server.notify("textDocument/didChange", {"textDocument": "not an object"})
    server.notify("offload/noSuchNotification", {})
    still_serving(server)
    log = "".join(server.stderr)
    assert f"ignored textDocument/didChange for {uri}: the document was never opened" in log
    assert "ignored notification textDocument/didChange: its params have the wrong shape" in log
    assert "offload/noSuchNotification" in log
    sent = [m for _, m in server.messages[since:]]
    assert not any(m.get("method") == "window/showMessage" or "error" in m for m in sent), sent
    # the document, opened now, takes changes as usual
    server.notify("textDocument/didOpen", {"textDocument": {"uri": uri, "languageId": "python", "version": 1,
                                                            "text": "a\n"}})
    server.notify("textDocument/didChange", {"textDocument": {"uri": uri, "version": 2},
                                             "contentChanges": [{"text": "b\n"}]})
    still_serving(server)
    assert "ignored textDocument/didChange" not in "".join(server.stderr)[len(log):]


def test_an_unknown_command_is_invalid_params(server):
    reply = server.command("offload.noSuchCommand", {})
    assert reply["error"]["code"] == INVALID_PARAMS and "offload.noSuchCommand" in reply["error"]["message"]
    still_serving(server)


@pytest.mark.parametrize("command, arg", [
    ("offload.showTask", {"taskId": "20990101-000000-abcdef"}),
    ("offload.apply", {"taskId": "nope"}),
    ("offload.acceptHunk", {"taskId": "nope", "hunkId": "calc.py#1"}),
    ("offload.rejectHunk", {"taskId": "nope", "hunkId": "calc.py#1"}),
    ("offload.followUp", {"taskId": "nope", "prompt": "more"}),
    ("offload.cancel", {"taskId": "nope"}),
    ("offload.discard", {"taskId": "nope"}),
])
def test_an_unknown_task_id_fails_the_request_by_name(server, command, arg):
    reply = server.command(command, arg)
    assert reply["error"] == {"code": REQUEST_FAILED, "message": f"{command}: no task {arg['taskId']!r}"}
    still_serving(server)


def test_a_malformed_command_argument_is_invalid_params(server):
    reply = server.command("offload.acceptHunk", {"taskId": "x", "hunkId": 3})
    assert reply["error"]["code"] == INVALID_PARAMS and "hunkId" in reply["error"]["message"]
    reply = server.command("offload.code")
    assert reply["error"]["code"] == INVALID_PARAMS and "one JSON object" in reply["error"]["message"]
    still_serving(server)


def wait_state(server: StdioServer, task_id: str, states: tuple[str, ...], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (task,) = [t for t in server.command("offload.listTasks", {})["result"]["tasks"] if t["taskId"] == task_id]
        if task["state"] in states:
            return task
        time.sleep(0.2)
    raise TimeoutError(f"task {task_id} never reached {states}")


def test_commands_out_of_order_are_refused_and_change_nothing(tmp_path, docker_engine, fake_model):
    repo = make_repo(tmp_path / "calc")
    with StdioServer() as server:
        server.initialize(repo, {"model": {"base_url": fake_model.base_url, "name": "slow-command"}})
        task_id = server.command("offload.code", {"prompt": "wait a minute"})["result"]["taskId"]
        wait_state(server, task_id, ("running",))
        for command, arg, why in [
            ("offload.acceptHunk", {"taskId": task_id, "hunkId": "calc.py#1"}, "only a finished task has hunks"),
            ("offload.apply", {"taskId": task_id}, "only a finished task can be applied"),
            ("offload.followUp", {"taskId": task_id, "prompt": "and more"}, "follow up when it has ended"),
            ("offload.discard", {"taskId": task_id}, "cancel it first"),
        ]:
            reply = server.command(command, arg)
            assert reply["error"]["code"] == REQUEST_FAILED and why in reply["error"]["message"], reply
            assert "is running" in reply["error"]["message"]
            still_serving(server)
        server.command("offload.cancel", {"taskId": task_id})
        assert wait_state(server, task_id, ("cancelled", "failed", "finished"))["state"] == "cancelled"
        reply = server.command("offload.cancel", {"taskId": task_id})
        assert reply["error"]["code"] == REQUEST_FAILED and "only a queued or running task" in reply["error"]["message"]

    with StdioServer() as server:  # a task that fails: its step budget ends it after one step
        server.initialize(repo, {"model": {"base_url": fake_model.base_url, "name": "fix-failing-test"},
                                 "budget": {"max_steps": 1}})
        task_id = server.command("offload.code", {"prompt": "Make the failing test pass"})["result"]["taskId"]
        task = wait_state(server, task_id, ("finished", "failed", "cancelled"))
        assert task["state"] == "failed" and "step budget" in task["reason"]
        for command, arg, why in [
            ("offload.apply", {"taskId": task_id}, "only a finished task can be applied"),
            ("offload.acceptHunk", {"taskId": task_id, "hunkId": "calc.py#1"}, "only a finished task has hunks"),
        ]:
            reply = server.command(command, arg)
            assert reply["error"]["code"] == REQUEST_FAILED and why in reply["error"]["message"], reply
            still_serving(server)
        assert not any(m.get("method") == "workspace/applyEdit" for _, m in server.messages)
