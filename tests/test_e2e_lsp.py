"""One Code task end to end through the language server over stdio, with pytest-lsp as the editor."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Union

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.uris import from_fs_path
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

from tests.conftest import make_repo

pytestmark = pytest.mark.docker

SERVER = ClientServerConfig(server_command=[sys.executable, "-m", "offload.server.cli", "serve"])


class Editor:
    """What a test needs from its client: task notifications and the edits it was asked to apply."""

    def __init__(self, client: LanguageClient) -> None:
        self.client = client
        self.updates: list[dict] = []
        self.events: list[dict] = []
        self.lens_refreshes = 0
        self.edits: list[types.ApplyWorkspaceEditParams] = []
        self.apply = None  # an editor's own way to apply edits (see test_lsp_review.Buffer); else each is applied

        @client.feature("offload/taskUpdated")
        async def task_updated(params):
            self.updates.append(params._asdict())  # custom notifications arrive as named tuples

        @client.feature("offload/taskEvent")
        def task_event(params):
            self.events.append(params._asdict())

        @client.feature(types.WORKSPACE_CODE_LENS_REFRESH)
        def code_lens_refresh(params):
            self.lens_refreshes += 1

        @client.feature(types.WORKSPACE_APPLY_EDIT)
        async def apply_edit(params: types.ApplyWorkspaceEditParams):
            self.edits.append(params)
            return self.apply(params) if self.apply else types.ApplyWorkspaceEditResult(applied=True)

    async def until(self, predicate, timeout: float = 180) -> None:
        """Wait for what the server sends (notifications, edits, diagnostics) to satisfy `predicate`."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)

    def state(self, task_id: str) -> str | None:
        states = [u["state"] for u in self.updates if u["taskId"] == task_id]
        return states[-1] if states else None


async def start(client: LanguageClient, repo, fake_model, capabilities: str | types.ClientCapabilities,
                scenario: str = "fix-failing-test", settings: dict | None = None) -> Editor:
    """Initialize like an editor opening `repo`, with the stand-in playing `scenario` as the model."""
    editor = Editor(client)
    await client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities(capabilities) if isinstance(capabilities, str) else capabilities,
        root_uri=from_fs_path(str(repo)),
        workspace_folders=[types.WorkspaceFolder(uri=from_fs_path(str(repo)), name="calc")],
        initialization_options={"settings": {"model": {"base_url": fake_model.base_url, "name": scenario},
                                             **(settings or {})}},
    ))
    return editor


def structure_code_actions_as_editors_do(client: LanguageClient) -> None:
    """lsprotocol reads any code action carrying a command as a bare Command; editors don't."""
    converter = client.protocol._converter

    def structure(obj, _):
        kind = types.Command if isinstance(obj.get("command"), str) else types.CodeAction
        return converter.structure(obj, kind)

    converter.register_structure_hook(Union[types.Command, types.CodeAction], structure)


@pytest_lsp.fixture(config=SERVER)
async def client(lsp_client: LanguageClient):
    structure_code_actions_as_editors_do(lsp_client)
    yield
    await lsp_client.shutdown_session()


def execute(client: LanguageClient, command: str, arg):
    return client.workspace_execute_command_async(types.ExecuteCommandParams(command=command, arguments=[arg]))


@pytest.mark.parametrize("capabilities", ["visual-studio-code", "neovim@v0.11.0"])
async def test_code_task_from_the_editor_to_an_applied_edit(client, fake_model, tmp_path, capabilities):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, capabilities)
    calc = repo / "calc.py"
    before = calc.read_text()

    reply = await execute(client, "offload.code", {"prompt": "Make the failing test pass",
                                                   "uri": from_fs_path(str(repo / "test_calc.py"))})
    task_id = reply["taskId"]
    await editor.until(lambda: editor.state(task_id) in ("finished", "failed", "cancelled"))
    assert editor.state(task_id) == "finished", await execute(client, "offload.showTask", {"taskId": task_id})

    # progress from begin to end, with the steps between
    reports = client.progress_reports[f"offload-{task_id}"]
    await editor.until(lambda: isinstance(reports[-1], types.WorkDoneProgressEnd), timeout=10)
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert any(isinstance(r, types.WorkDoneProgressReport) and "unittest" in (r.message or "") for r in reports)
    assert isinstance(reports[-1], types.WorkDoneProgressEnd)
    # nothing touched the checkout yet
    assert calc.read_text() == before
    shown = await execute(client, "offload.showTask", {"taskId": task_id})
    assert "+    return a + b" in shown["diff"]

    applied = await execute(client, "offload.apply", {"taskId": task_id})
    assert applied["files"] == ["calc.py"]
    await editor.until(lambda: editor.edits)
    edit = editor.edits[0].edit
    uri = from_fs_path(str(calc))
    if capabilities == "visual-studio-code":  # declares versioned documentChanges
        (change,) = edit.document_changes
        assert change.text_document.uri == uri
        text_edits = change.edits
    else:  # Neovim 0.11 does not: plain changes
        assert edit.document_changes is None
        text_edits = edit.changes[uri]
    (text_edit,) = text_edits  # the changed line alone: the rest of the buffer is left as it is
    assert text_edit.new_text == "    return a + b\n"
    assert text_edit.range == types.Range(types.Position(4, 0), types.Position(5, 0))
    assert calc.read_text() == before  # the editor applies the edit, not the server


async def test_bad_commands_get_clear_errors_and_the_server_keeps_serving(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    await start(client, repo, fake_model, "visual-studio-code")
    bad = [
        ("offload.code", {"prompt": 42}, "prompt"),
        ("offload.code", "just a string", "one JSON object"),
        ("offload.apply", {"taskId": "no-such-task"}, "no task"),
        ("offload.cancel", {}, "taskId"),
        ("offload.showTask", {"taskId": "nope"}, "no task"),
    ]
    for command, arg, expected in bad:
        with pytest.raises(Exception, match=expected):
            await execute(client, command, arg)
    listed = await execute(client, "offload.listTasks", {})
    assert listed == {"tasks": []}


async def test_quick_fix_on_a_diagnostic_offers_offload(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    await start(client, repo, fake_model, "visual-studio-code")
    uri = from_fs_path(str(repo / "calc.py"))
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=(repo / "calc.py").read_text())))
    diagnostic = types.Diagnostic(range=types.Range(types.Position(4, 4), types.Position(4, 16)),
                                  message="add() subtracts", source="pytest")
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=diagnostic.range,
        context=types.CodeActionContext(diagnostics=[diagnostic])))
    (action,) = [a for a in actions if a.kind == types.CodeActionKind.QuickFix]  # and tasks about the range
    assert action.title == "Offload: fix this"
    assert isinstance(action, types.CodeAction) and action.kind == types.CodeActionKind.QuickFix
    command = action.command
    assert command.command == "offload.code"
    assert "add() subtracts" in command.arguments[0]["prompt"]


def selection_actions(client: LanguageClient, uri: str, only: list[str] | None = None):
    """The code actions on lines 4–6 of calc.py, selected, with no diagnostic there."""
    return client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=types.Range(types.Position(3, 0),
                                                                               types.Position(5, 0)),
        context=types.CodeActionContext(diagnostics=[], only=only)))


async def test_a_selection_offers_tasks_about_it(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "neovim@v0.11.0", "ask-explain")
    uri = from_fs_path(str(repo / "calc.py"))
    actions = await selection_actions(client, uri)
    assert [(a.title, a.kind) for a in actions] == [("Offload: write tests for this", "refactor"),
                                                     ("Offload: explain this", "refactor")]
    assert not await selection_actions(client, uri, only=[types.CodeActionKind.QuickFix])
    explain = actions[1].command
    assert explain.command == "offload.ask" and explain.arguments[0]["uri"] == uri
    task_id = (await execute(client, explain.command, explain.arguments[0]))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    shown = await execute(client, "offload.showTask", {"taskId": task_id})
    assert shown["kind"] == "ask" and shown["prompt"].endswith("Context: calc.py lines 4-6")
    assert shown["message"]


async def test_do_with_a_prompt_is_offered_to_an_editor_that_asks_for_one(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    capabilities = client_capabilities("visual-studio-code")
    capabilities.experimental = {"offloadPrompt": True}
    await start(client, repo, fake_model, capabilities)
    uri = from_fs_path(str(repo / "calc.py"))
    do = (await selection_actions(client, uri))[-1]
    assert do.title == "Offload: do…" and do.command.command == "offload.code"
    assert "prompt" not in do.command.arguments[0]  # the editor asks the user, then runs it with the prompt
    task_id = (await execute(client, "offload.code", {**do.command.arguments[0], "prompt": "Rename a to x"}))["taskId"]
    with pytest.raises(Exception, match="prompt"):  # run as it is, it is refused by name
        await execute(client, "offload.code", do.command.arguments[0])
    assert task_id


async def two_hunks_under_review(client: LanguageClient, fake_model, tmp_path):
    """calc.py open in a VS Code-like editor, and a finished task proposing two hunks in it."""
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "visual-studio-code", "fix-and-document")
    uri = from_fs_path(str(repo / "calc.py"))
    before = (repo / "calc.py").read_text()
    client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=before)))
    task_id = (await execute(client, "offload.code", {"prompt": "Fix add and document multiply"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    await editor.until(lambda: len(client.diagnostics.get(uri, [])) == 2, timeout=10)
    return repo, editor, uri, before, task_id


async def test_review_hunk_by_hunk_in_the_editor(client, fake_model, tmp_path):
    repo, editor, uri, before, task_id = await two_hunks_under_review(client, fake_model, tmp_path)

    fix, comment = sorted(client.diagnostics[uri], key=lambda d: d.range.start.line)
    assert fix.source == "offload" and fix.severity == types.DiagnosticSeverity.Information
    assert fix.range.start.line == 4 and comment.range.start.line == 8
    # code actions on the hunk's diagnostic accept or reject it
    actions = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=uri), range=comment.range,
        context=types.CodeActionContext(diagnostics=[comment])))
    titles = [a.title for a in actions if a.kind == types.CodeActionKind.QuickFix]  # and tasks about the range
    assert titles == [f"Offload: {verb} +1 −0 at line 9 — Fix add and document multiply"
                      for verb in ("accept", "reject", "preview")] + \
        ["Offload: accept all 2 changes in this file — Fix add and document multiply"]
    lenses = await client.text_document_code_lens_async(types.CodeLensParams(
        text_document=types.TextDocumentIdentifier(uri=uri)))
    assert [lens.command.title for lens in lenses] == ["Offload: Accept", "Reject"] * 2

    reject = next(a for a in actions if "reject" in a.title).command
    await execute(client, reject.command, reject.arguments[0])
    await editor.until(lambda: len(client.diagnostics.get(uri, [])) == 1, timeout=10)

    # the user edits the file before accepting: the edit is kept
    edited = before.replace('"""A tiny calculator', '"""A small calculator')
    client.text_document_did_change(types.DidChangeTextDocumentParams(
        text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[types.TextDocumentContentChangeWholeDocument(text=edited)]))
    accept = client.diagnostics[uri][0].data
    await execute(client, "offload.acceptHunk", accept)
    await editor.until(lambda: editor.edits)
    (change,) = editor.edits[0].edit.document_changes
    assert change.text_document.version == 2
    (text_edit,) = change.edits  # the hunk's line alone: the user's edit above it is left alone
    assert text_edit.new_text == "    return a + b\n" and text_edit.range.start.line == 4
    await editor.until(lambda: len(client.diagnostics[uri]) == 0, timeout=10)
    shown = await execute(client, "offload.showTask", {"taskId": task_id})
    assert [(h["hunkId"], h["status"]) for h in shown["hunks"]] == [("calc.py#1", "accepted"), ("calc.py#2", "rejected")]
    review = [e for e in shown["events"] if e["type"] == "review"]
    assert [(e["hunks"], e["decision"]) for e in review] == [(["calc.py#2"], "rejected"), (["calc.py#1"], "accepted")]
    with pytest.raises(Exception, match="already accepted"):
        await execute(client, "offload.acceptHunk", accept)


async def test_a_task_run_from_the_cli_shows_up_in_the_editor(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "visual-studio-code")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "offload.server.cli", "run", "Make the failing test pass", "--repo", str(repo),
        env={**os.environ, "OPENAI_BASE_URL": fake_model.base_url, "OFFLOAD_MODEL_NAME": "fix-failing-test"},
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    await editor.until(lambda: any(u["state"] == "finished" for u in editor.updates), timeout=30)
    uri = from_fs_path(str(repo / "calc.py"))
    await editor.until(lambda: len(client.diagnostics.get(uri, [])) == 1, timeout=10)
    (task,) = (await execute(client, "offload.listTasks", {}))["tasks"]
    assert task["state"] == "finished" and task["taskId"] == editor.updates[-1]["taskId"]


async def test_follow_up_continues_the_conversation_without_the_rejected_hunks(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "neovim@v0.11.0", "follow-up")
    task_id = (await execute(client, "offload.code", {"prompt": "Fix add and document multiply"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    await execute(client, "offload.rejectHunk", {"taskId": task_id, "hunkId": "calc.py#2"})

    await execute(client, "offload.followUp", {"taskId": task_id, "prompt": "Also document add"})
    await editor.until(lambda: [u["state"] for u in editor.updates].count("finished") == 2)
    shown = await execute(client, "offload.showTask", {"taskId": task_id})
    assert shown["state"] == "finished"
    # the follow-up has its own progress, begun and ended
    reports = client.progress_reports[f"offload-{task_id}-2"]
    await editor.until(lambda: isinstance(reports[-1], types.WorkDoneProgressEnd), timeout=10)
    assert isinstance(reports[0], types.WorkDoneProgressBegin)
    assert '+    """Sum of a and b."""' in shown["diff"] and "+    return a + b" in shown["diff"]
    assert "the product" not in shown["diff"]
    # the conversation went on: the follow-up request carried the first run's calls and outputs
    last = fake_model.requests[-1].body["messages"]
    assert [m["role"] for m in last].count("assistant") >= 4
    await execute(client, "offload.apply", {"taskId": task_id})
    await editor.until(lambda: editor.edits)
    (text_edit,) = editor.edits[0].edit.changes[from_fs_path(str(repo / "calc.py"))]
    assert '"""Sum of a and b."""' in text_edit.new_text and "the product" not in text_edit.new_text


async def test_failing_checks_point_at_their_lines(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "emacs", "give-up")
    task_id = (await execute(client, "offload.code", {"prompt": "Fix the test"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    uri = from_fs_path(str(repo / "test_calc.py"))
    await editor.until(lambda: len(client.diagnostics.get(uri, [])) == 1, timeout=10)
    (diagnostic,) = client.diagnostics[uri]
    assert diagnostic.severity == types.DiagnosticSeverity.Warning and diagnostic.range.start.line == 7
    assert "AssertionError: -1 != 5" in diagnostic.message
    await execute(client, "offload.discard", {"taskId": task_id})
    await editor.until(lambda: len(client.diagnostics[uri]) == 0, timeout=10)
