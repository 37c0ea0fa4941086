"""Review as editors live it: edits that keep what the user typed, actions that name the hunk they
act on, review that outlives the server, follow-ups that build on what was accepted, and an
editor told when a task ends. The real server over stdio; the editor keeps its own text, applies
the edits it is sent and reports its typing, as a real one does."""

from __future__ import annotations

import asyncio
import os

import pytest
from lsprotocol import types
from pygls.uris import from_fs_path

from tests.conftest import make_repo
from tests.fakemodel import FakeModel, load_scenarios
from tests.lsp_wire import NO_ANSWER, StdioServer
from tests.test_e2e_lsp import Editor, execute, start
from tests.test_e2e_lsp import client as editor_client

pytestmark = pytest.mark.docker
client = editor_client


@pytest.fixture
def fake_model():
    with FakeModel(scenarios=load_scenarios("tests.scenarios")) as model:
        yield model
    assert not model.errors, model.errors


def apply_text_edits(text: str, edits: list[types.TextEdit]) -> str:
    """What an editor does with edits on a buffer of plain ASCII lines: last first."""
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))

    def offset(p: types.Position) -> int:
        return offsets[min(p.line, len(lines))] + p.character

    for edit in sorted(edits, key=lambda e: offset(e.range.start), reverse=True):
        text = text[:offset(edit.range.start)] + edit.new_text + text[offset(edit.range.end):]
        lines = text.splitlines(keepends=True)
        offsets = [0]
        for line in lines:
            offsets.append(offsets[-1] + len(line))
    return text


class Buffer:
    """One open document of the editor: its text and version, the edits it applied."""

    def __init__(self, client, editor: Editor, path, edited: bool = True) -> None:
        """`edited`: this buffer is the one the editor applies edits to."""
        self.client, self.uri, self.version = client, from_fs_path(str(path)), 1
        self.text = path.read_text()
        self.applied: list[list[types.TextEdit]] = []
        self.refuse_once: str | None = None  # text typed (at the top) while the first edit is on its way
        client.text_document_did_open(types.DidOpenTextDocumentParams(types.TextDocumentItem(
            uri=self.uri, language_id="python", version=1, text=self.text)))
        if edited:
            editor.apply = self.apply

    def apply(self, params: types.ApplyWorkspaceEditParams) -> types.ApplyWorkspaceEditResult:
        edit = params.edit
        if edit.document_changes:
            (change,) = [c for c in edit.document_changes if c.text_document.uri == self.uri]
            if change.text_document.version not in (None, self.version):
                return types.ApplyWorkspaceEditResult(applied=False, failure_reason="the document changed")
            edits = change.edits
        else:
            edits = edit.changes[self.uri]
        if self.refuse_once is not None:  # the user types before the edit arrives: a stale one
            self.type(types.Position(0, 0), self.refuse_once)
            self.refuse_once = None
            if edit.document_changes:
                return types.ApplyWorkspaceEditResult(applied=False, failure_reason="the document changed")
        self.text = apply_text_edits(self.text, edits)
        self.applied.append(edits)
        self.changed()
        return types.ApplyWorkspaceEditResult(applied=True)

    def type(self, at: types.Position, text: str) -> None:
        """The user types `text` at `at`."""
        self.text = apply_text_edits(self.text, [types.TextEdit(types.Range(at, at), text)])
        self.changed()

    def changed(self) -> None:
        self.version += 1
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=self.uri, version=self.version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=self.text)]))

    def review(self) -> list[types.Diagnostic]:
        return sorted((d for d in self.client.diagnostics.get(self.uri, []) if d.code == "proposal"),
                      key=lambda d: d.range.start.line)


async def two_hunks(client, fake_model, tmp_path, capabilities="neovim@v0.11.0", scenario="fix-and-document"):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, capabilities, scenario)
    buffer = Buffer(client, editor, repo / "calc.py")
    task_id = (await execute(client, "offload.code", {"prompt": "Fix add and document multiply"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    await editor.until(lambda: len(buffer.review()) == 2, timeout=10)
    return repo, editor, buffer, task_id


def events(editor: Editor) -> list[dict]:
    """The task events the editor was sent (custom notifications arrive as named tuples)."""
    return [e["event"]._asdict() if hasattr(e["event"], "_asdict") else e["event"] for e in editor.events]


def actions_at(client, buffer: Buffer, line: int, diagnostics=None):
    """The code actions at the start of `line`, with `diagnostics` in the context (eglot, with the
    point on no symbol, sends every diagnostic of the buffer)."""
    at = types.Position(line, 0)
    return client.text_document_code_action_async(types.CodeActionParams(
        text_document=types.TextDocumentIdentifier(uri=buffer.uri), range=types.Range(at, at),
        context=types.CodeActionContext(diagnostics=diagnostics or [])))


@pytest.mark.parametrize("capabilities", ["neovim@v0.11.0", "emacs"])
async def test_an_accepted_hunk_changes_only_its_lines_and_keeps_what_was_typed(client, fake_model, tmp_path,
                                                                                capabilities):
    repo, editor, buffer, task_id = await two_hunks(client, fake_model, tmp_path, capabilities)
    buffer.type(types.Position(9, 0), "# typed below the hunks\n")
    await execute(client, "offload.acceptHunk", {"taskId": task_id, "hunkId": "calc.py#1"})
    await editor.until(lambda: buffer.applied)
    (edit,) = buffer.applied[0]
    assert edit.range == types.Range(types.Position(4, 0), types.Position(5, 0))
    assert edit.new_text == "    return a + b\n"
    assert "# typed below the hunks" in buffer.text and "return a + b" in buffer.text
    assert (repo / "calc.py").read_text() != buffer.text  # the editor applies it, not the server


async def test_an_edit_refused_as_stale_is_computed_again_from_the_newer_text(client, fake_model, tmp_path):
    repo, editor, buffer, task_id = await two_hunks(client, fake_model, tmp_path, "emacs")
    buffer.refuse_once = "# typed while the edit was on its way\n"
    await execute(client, "offload.acceptHunk", {"taskId": task_id, "hunkId": "calc.py#1"})
    await editor.until(lambda: buffer.applied)
    assert len(editor.edits) == 2
    (change,) = editor.edits[1].edit.document_changes
    assert change.text_document.version == buffer.version - 1
    assert change.edits[0].range.start.line == 5  # one line further down: below what was typed
    assert buffer.text.startswith("# typed while") and "return a + b" in buffer.text
    await editor.until(lambda: len(buffer.review()) == 1, timeout=10)


async def test_actions_are_those_of_the_hunk_at_the_cursor_and_say_which(client, fake_model, tmp_path):
    repo, editor, buffer, task_id = await two_hunks(client, fake_model, tmp_path, "emacs")
    every = buffer.review()
    assert "+1 −1 at line 5" in every[0].message and "+    return a + b" in every[0].message
    actions = await actions_at(client, buffer, 8, every)  # eglot on no symbol: the whole buffer's
    titles = [a.title for a in actions]
    assert titles[:3] == ["Offload: accept +1 −0 at line 9 — Fix add and document multiply",
                          "Offload: reject +1 −0 at line 9 — Fix add and document multiply",
                          "Offload: preview +1 −0 at line 9 — Fix add and document multiply"]
    assert "Offload: accept all 2 changes in this file — Fix add and document multiply" in titles
    assert not any("line 5" in t for t in titles)
    await execute(client, actions[0].command.command, actions[0].command.arguments[0])
    await editor.until(lambda: len(buffer.review()) == 1, timeout=10)
    assert "# the product of a and b" in buffer.text and "return a - b" in buffer.text


async def test_a_hover_shows_the_whole_change(client, fake_model, tmp_path):
    repo, editor, buffer, task_id = await two_hunks(client, fake_model, tmp_path)
    hover = await client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=buffer.uri), position=types.Position(4, 6)))
    assert "```diff\n-    return a - b\n+    return a + b\n```" in hover.contents.value
    assert await client.text_document_hover_async(types.HoverParams(
        text_document=types.TextDocumentIdentifier(uri=buffer.uri), position=types.Position(0, 0))) is None


async def test_the_edit_is_sent_after_the_command_is_answered_and_a_silent_editor_is_told(fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    settings = {"model": {"base_url": fake_model.base_url, "name": "fix-and-document"}}
    with StdioServer() as server:
        server.answers["workspace/applyEdit"] = lambda m: NO_ANSWER  # an editor that never replies
        server.call("initialize", {"processId": os.getpid(), "rootUri": repo.as_uri(), "capabilities": {},
                                   "initializationOptions": {"settings": settings, "editTimeout": 2}})
        server.notify("initialized", {})
        task_id = server.command("offload.code", {"prompt": "Fix add"})["result"]["taskId"]
        server.wait_for(lambda m: m.get("method") == "offload/taskUpdated" and m["params"]["state"] == "finished",
                        timeout=120)
        since = len(server.messages)
        accept = server.request("workspace/executeCommand", {"command": "offload.acceptHunk", "arguments": [
            {"taskId": task_id, "hunkId": "calc.py#1"}]})
        server.wait_for(lambda m: m.get("method") == "workspace/applyEdit", since=since)
        order = ["answer" if m.get("id") == accept and "method" not in m else m.get("method")
                 for _, m in server.messages[since:]]
        assert order.index("answer") < order.index("workspace/applyEdit"), order  # eglot waits for the answer
        told = server.wait_for(lambda m: m.get("method") == "window/showMessage" and "did not apply"
                               in m["params"]["message"], since=since, timeout=30)
        assert "nothing was accepted" in told["params"]["message"]
        shown = server.command("offload.showTask", {"taskId": task_id})["result"]
        assert {h["status"] for h in shown["hunks"]} == {"pending"}


async def test_review_and_decisions_survive_a_restart_of_the_server(fake_model, tmp_path):
    repo, settings = make_repo(tmp_path / "calc"), {"model": {"base_url": fake_model.base_url,
                                                              "name": "fix-and-document"}}
    calc = {"uri": (repo / "calc.py").as_uri(), "languageId": "python", "version": 1,
            "text": (repo / "calc.py").read_text()}
    with StdioServer() as server:
        server.initialize(repo, settings)
        task_id = server.command("offload.code", {"prompt": "Fix add"})["result"]["taskId"]
        server.wait_for(lambda m: m.get("method") == "offload/taskUpdated" and m["params"]["state"] == "finished",
                        timeout=120)
        server.command("offload.rejectHunk", {"taskId": task_id, "hunkId": "calc.py#2"})
    with StdioServer() as server:  # a restart, or a reloaded window: the editor opens its files again
        server.initialize(repo, settings)
        server.notify("textDocument/didOpen", {"textDocument": calc})
        published = server.wait_for(lambda m: m.get("method") == "textDocument/publishDiagnostics"
                                    and m["params"]["uri"] == calc["uri"] and m["params"]["diagnostics"])
        (diagnostic,) = published["params"]["diagnostics"]
        assert diagnostic["data"]["hunkId"] == "calc.py#1" and diagnostic["range"]["start"]["line"] == 4


async def test_accept_then_follow_up_then_accept_again(client, fake_model, tmp_path):
    repo, editor, buffer, task_id = await two_hunks(client, fake_model, tmp_path, scenario="follow-up")
    await execute(client, "offload.acceptHunk", {"taskId": task_id, "hunkId": "calc.py#1"})
    await execute(client, "offload.rejectHunk", {"taskId": task_id, "hunkId": "calc.py#2"})
    await editor.until(lambda: buffer.applied and not buffer.review(), timeout=10)
    await execute(client, "offload.followUp", {"taskId": task_id, "prompt": "Also document add"})
    await editor.until(lambda: [u["state"] for u in editor.updates].count("finished") == 2)
    await editor.until(lambda: len(buffer.review()) == 1, timeout=10)
    (docstring,) = buffer.review()
    assert docstring.data["hunkId"] == "calc.py#1" and "+1 −0 at line 5" in docstring.message
    await execute(client, "offload.acceptHunk", docstring.data)
    await editor.until(lambda: len(buffer.applied) == 2 and not buffer.review(), timeout=10)
    assert buffer.text == (repo / "calc.py").read_text().replace(
        "    return a - b\n", '    """Sum of a and b."""\n    return a + b\n')


async def test_the_same_change_from_two_tasks_is_no_conflict(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "neovim@v0.11.0", "fix-failing-test")
    buffer = Buffer(client, editor, repo / "calc.py")
    first, second = [(await execute(client, "offload.code", {"prompt": f"Fix add ({n})"}))["taskId"] for n in (1, 2)]
    await editor.until(lambda: editor.state(first) == editor.state(second) == "finished")
    await editor.until(lambda: len(buffer.review()) == 2, timeout=10)
    await execute(client, "offload.acceptHunk", {"taskId": first, "hunkId": "calc.py#1"})
    await editor.until(lambda: buffer.applied and len(buffer.review()) == 1, timeout=10)
    (left,) = buffer.review()
    assert left.data["taskId"] == second and "already in your file" in left.message
    await execute(client, "offload.acceptHunk", {"taskId": second, "hunkId": "calc.py#1"})
    await editor.until(lambda: not buffer.review(), timeout=10)
    assert buffer.text.count("return a + b") == 1 and len(buffer.applied) == 1


async def test_the_editor_is_told_when_a_task_ends_and_an_ask_opens_its_answer(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "neovim@v0.11.0", "ask-explain")
    task_id = (await execute(client, "offload.ask", {"prompt": "Explain add"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    await editor.until(lambda: client.shown_documents, timeout=10)
    (shown,) = client.shown_documents
    assert shown.uri.endswith("answer.md")
    answer = (await execute(client, "offload.showTask", {"taskId": task_id}))["message"]
    assert answer in open(shown.uri.removeprefix("file://")).read()
    assert any("finished" in m.message and "answer" in m.message for m in client.messages)


async def test_a_failed_task_is_reported_with_its_reason(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "emacs", settings={"budget": {"max_steps": 1}})
    task_id = (await execute(client, "offload.code", {"prompt": "Fix add"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "failed")
    await editor.until(lambda: any(m.type == types.MessageType.Error for m in client.messages), timeout=10)
    (message,) = [m for m in client.messages if m.type == types.MessageType.Error]
    assert "failed" in message.message and "Fix add" in message.message


async def test_cancel_on_the_progress_cancels_the_task(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "visual-studio-code", "slow-command")
    task_id = (await execute(client, "offload.code", {"prompt": "Wait"}))["taskId"]
    await editor.until(lambda: any(event["type"] == "tool.call" for event in events(editor)))
    client.protocol.notify(types.WINDOW_WORK_DONE_PROGRESS_CANCEL,
                           types.WorkDoneProgressCancelParams(token=f"offload-{task_id}"))
    await editor.until(lambda: editor.state(task_id) == "cancelled", timeout=60)


async def test_task_events_carry_outputs_summarised(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "visual-studio-code", "flood-output")
    task_id = (await execute(client, "offload.code", {"prompt": "Print a lot"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) in ("finished", "failed"))
    assert not [e for e in events(editor) if e["type"] == "tool.output"]
    (result,) = [e for e in events(editor) if e["type"] == "tool.result"]
    assert len(result["output"]) < 1200 and "characters in all" in result["output"]
    shown = await execute(client, "offload.showTask", {"taskId": task_id})
    streamed = [e for e in shown["events"] if e["type"] == "tool.output"]
    assert sum(len(e["chunk"]) for e in streamed) > 200_000  # the log has it whole


async def test_fix_the_problem_here_on_any_line_and_on_a_failing_check(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "neovim@v0.11.0", "give-up")
    buffer = Buffer(client, editor, repo / "calc.py")
    (action,) = await actions_at(client, buffer, 4)
    assert action.title == "Offload: fix the problem here" and action.kind == types.CodeActionKind.QuickFix
    assert "`return a - b`" in action.command.arguments[0]["prompt"]
    task_id = (await execute(client, "offload.code", {"prompt": "Fix the test"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    test = Buffer(client, editor, repo / "test_calc.py", edited=False)
    await editor.until(lambda: client.diagnostics.get(test.uri), timeout=10)
    (failing,) = client.diagnostics[test.uri]
    (fix,) = await actions_at(client, test, failing.range.start.line, [failing])
    assert fix.title == "Offload: fix this" and "a check still fails here" in fix.command.arguments[0]["prompt"]


async def test_a_citation_opens_the_lines_it_means_in_the_file_as_it_is_now(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "neovim@v0.11.0", "fix-and-cite")
    buffer = Buffer(client, editor, repo / "calc.py")
    task_id = (await execute(client, "offload.code", {"prompt": "Fix add"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    shown = await execute(client, "offload.showTask", {"taskId": task_id})
    assert "calc.py:L4-L5" in shown["message"]
    buffer.type(types.Position(0, 0), "# two lines\n# of the user's\n")
    opened = await execute(client, "offload.openCitation", {"taskId": task_id, "path": "calc.py", "line": 4,
                                                             "endLine": 5})
    assert opened["range"] == {"start": {"line": 5, "character": 0}, "end": {"line": 7, "character": 0}}  # L6-L7 whole
    await editor.until(lambda: client.shown_documents, timeout=10)
    assert client.shown_documents[-1].selection.start.line == 5


async def test_a_new_file_is_accepted_in_an_editor_whose_edits_cannot_create_files(client, tmp_path):
    from tests.test_lsp_edits import NEW_TEST

    with FakeModel(scenarios=load_scenarios("tests.scenarios", "tests.test_lsp_edits")) as model:
        repo = make_repo(tmp_path / "calc")
        capabilities = "neovim@v0.11.0"  # no documentChanges: no CreateFile
        editor = await start(client, repo, model, capabilities, "fix-and-add-a-test")
        task_id = (await execute(client, "offload.code", {"prompt": "Fix add, test multiply"}))["taskId"]
        await editor.until(lambda: editor.state(task_id) == "finished")
        await execute(client, "offload.acceptHunk", {"taskId": task_id, "hunkId": "test_multiply.py#1"})
        shown = {}
        while not shown or {h["status"] for h in shown["hunks"] if h["path"] == "test_multiply.py"} != {"accepted"}:
            await asyncio.sleep(0.05)
            shown = await execute(client, "offload.showTask", {"taskId": task_id})
        assert (repo / "test_multiply.py").read_text() == NEW_TEST  # Offload wrote it: nothing else could
        assert not editor.edits
    assert not model.errors, model.errors
