"""The wait for a slow model shows in the editor's progress, through the real language server."""

from __future__ import annotations

from lsprotocol import types
from pygls.uris import from_fs_path

from tests.conftest import make_repo
from tests.fakemodel import FakeModel
from tests.test_e2e_lsp import Editor, client, execute  # noqa: F401 - the fixture
from tests.test_model_servers import slow_model  # noqa: F401 - the fixture


async def test_the_editor_progress_tells_the_wait_for_the_model(client, bubblewrap, tmp_path):  # noqa: F811
    repo = make_repo(tmp_path / "calc")
    editor = Editor(client)
    with FakeModel(scenarios=[slow_model]) as fm:
        await client.initialize_session(types.InitializeParams(
            capabilities=types.ClientCapabilities(window=types.WindowClientCapabilities(work_done_progress=True)),
            root_uri=from_fs_path(str(repo)),
            initialization_options={"settings": {
                "model": {"base_url": fm.base_url, "name": "slow-model", "timeout": 4},
                "sandbox": {"backend": "bubblewrap"}}}))
        task_id = (await execute(client, "offload.code", {"prompt": "Make the failing test pass"}))["taskId"]
        await editor.until(lambda: editor.state(task_id) in ("finished", "failed", "cancelled"))
    assert editor.state(task_id) == "finished", [u.get("reason") for u in editor.updates]
    messages = [r.message or "" for r in client.progress_reports[f"offload-{task_id}"]
                if isinstance(r, types.WorkDoneProgressReport)]
    assert any(m.startswith("waiting for the model: nothing from") and "model.timeout" in m for m in messages)
