"""Settings changed in the editor reach the running language server (`workspace/didChangeConfiguration`):
the next task uses them, with no restart — its task worker, started with the old ones, included."""

from __future__ import annotations

import socket

from lsprotocol import types
from pygls.uris import from_fs_path

from tests.conftest import make_repo
from tests.fakemodel import FakeModel
from tests.scenarios import fix_failing_test
from tests.test_e2e_lsp import Editor, client, execute  # noqa: F401 - the fixture


def dead_endpoint() -> str:
    """A local URL nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


async def test_a_settings_change_reaches_the_next_task_without_a_restart(client, bubblewrap, tmp_path):  # noqa: F811
    repo = make_repo(tmp_path / "calc")
    editor = Editor(client)
    with FakeModel(scenarios=[fix_failing_test]) as fm:
        await client.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=from_fs_path(str(repo)),
            initialization_options={"settings": {"model": {"base_url": dead_endpoint(), "name": "fix-failing-test"},
                                                 "sandbox": {"backend": "bubblewrap"}}}))
        first = (await execute(client, "offload.code", {"prompt": "Make the failing test pass"}))["taskId"]
        await editor.until(lambda: editor.state(first) in ("finished", "failed", "cancelled"))
        assert editor.state(first) == "failed"

        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"settings": {
            "model": {"base_url": fm.base_url, "name": "fix-failing-test"}, "sandbox": {"backend": "bubblewrap"}}}))
        second = (await execute(client, "offload.code", {"prompt": "Make the failing test pass"}))["taskId"]
        await editor.until(lambda: editor.state(second) in ("finished", "failed", "cancelled"))
    assert editor.state(second) == "finished", [u.get("reason") for u in editor.updates]
    assert any(isinstance(r.body, dict) and r.body.get("model") == "fix-failing-test" for r in fm.requests)


async def test_a_change_without_settings_changes_nothing(client, tmp_path):  # noqa: F811
    repo = make_repo(tmp_path / "calc")
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), root_uri=from_fs_path(str(repo)),
        initialization_options={"settings": {"model": {"name": "kept"}}}))
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={}))  # eglot, unconfigured
    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=["not", "a", "table"]))
    assert (await execute(client, "offload.listTasks", {}))["tasks"] == []


async def test_a_worker_that_ran_a_task_takes_the_new_settings(client, bubblewrap, tmp_path):  # noqa: F811
    repo = make_repo(tmp_path / "calc")
    editor = Editor(client)
    with FakeModel(scenarios=[fix_failing_test]) as fm:
        await client.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(), root_uri=from_fs_path(str(repo)),
            initialization_options={"settings": {"model": {"base_url": fm.base_url, "name": "fix-failing-test"},
                                                 "sandbox": {"backend": "bubblewrap"}}}))
        first = (await execute(client, "offload.code", {"prompt": "Make the failing test pass"}))["taskId"]
        await editor.until(lambda: editor.state(first) in ("finished", "failed", "cancelled"))
        assert editor.state(first) == "finished"
        dead = dead_endpoint()
        client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"settings": {
            "model": {"base_url": dead, "name": "fix-failing-test"}, "sandbox": {"backend": "bubblewrap"}}}))
        second = (await execute(client, "offload.code", {"prompt": "Make the failing test pass"}))["taskId"]
        await editor.until(lambda: editor.state(second) in ("finished", "failed", "cancelled"))
    assert editor.state(second) == "failed"
    assert dead.removesuffix("/v1") in editor.updates[-1]["reason"], editor.updates[-1]["reason"]
