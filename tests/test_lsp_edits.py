"""The edits the server asks editors to apply: change annotations only for clients that declare them.

Applying a whole task asks for the user's confirmation (`needsConfirmation`); accepting a hunk
the user is looking at does not. A client without `changeAnnotationSupport` gets the same edit
without annotations.
"""

from __future__ import annotations

import asyncio

import pytest
from lsprotocol import types
from pygls.uris import from_fs_path

from tests.conftest import make_repo, offload_cli
from tests.fakemodel import FakeModel, apply_patch, load_scenarios, say, scenario, shell
from tests.scenarios import UNITTEST, report
from tests.test_e2e_lsp import client as editor_client
from tests.test_e2e_lsp import execute, start, two_hunks_under_review

pytestmark = pytest.mark.docker
client = editor_client  # the real server over stdio, with pytest-lsp as the editor

NEW_TEST = ("import unittest\n\nfrom calc import multiply\n\n\nclass MultiplyTest(unittest.TestCase):\n"
            "    def test_multiply(self):\n        self.assertEqual(multiply(2, 3), 6)\n")


@scenario("fix-and-add-a-test")
def fix_and_add_a_test(req):
    """The fix, and a new test file: an edit with a file to create."""
    out = yield apply_patch("*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a + b\n"
                            "*** Add File: test_multiply.py\n" + "".join(f"+{line}\n" for line in NEW_TEST.splitlines())
                            + "*** End Patch")
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    yield say(report(["Fixed `add` (calc.py:L4-L5) and tested `multiply` (test_multiply.py:L1-L8)."],
                     [(" ".join(UNITTEST), "passed" if "OK" in out else "failed")]))


@pytest.fixture
def fake_model():
    with FakeModel(scenarios=load_scenarios("tests.scenarios", __name__)) as model:
        yield model
    assert not model.errors, model.errors


def annotated(change: types.TextDocumentEdit) -> list[str | None]:
    return [getattr(e, "annotation_id", None) for e in change.edits]


async def test_vs_code_gets_annotations_confirming_a_whole_task_but_not_an_accepted_hunk(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "visual-studio-code", "fix-and-document")
    task_id = (await execute(client, "offload.code", {"prompt": "Fix add and document multiply\nin calc.py"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")

    await execute(client, "offload.acceptHunk", {"taskId": task_id, "hunkId": "calc.py#1"})
    await editor.until(lambda: len(editor.edits) == 1)
    edit = editor.edits[0].edit
    annotation_id = f"offload-{task_id}"
    assert edit.change_annotations == {annotation_id: types.ChangeAnnotation(
        label="Offload: Fix add and document multiply", needs_confirmation=False,
        description=f"Offload task {task_id}: hunk calc.py#1")}
    (change,) = edit.document_changes
    assert annotated(change) == [annotation_id]
    assert "return a + b" in change.edits[0].new_text and "the product" not in change.edits[0].new_text

    await execute(client, "offload.apply", {"taskId": task_id})
    await editor.until(lambda: len(editor.edits) == 2)
    edit = editor.edits[1].edit
    (annotation,) = edit.change_annotations.values()
    assert annotation.needs_confirmation is True
    assert annotation.description == f"Offload task {task_id}: the whole change"
    (change,) = edit.document_changes
    assert set(annotated(change)) == {annotation_id}
    assert any("# the product of a and b" in e.new_text for e in change.edits)


async def test_a_created_file_is_annotated_too(client, fake_model, tmp_path):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "visual-studio-code", "fix-and-add-a-test")
    task_id = (await execute(client, "offload.code", {"prompt": "Fix add, test multiply"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    await execute(client, "offload.apply", {"taskId": task_id})
    await editor.until(lambda: editor.edits)
    edit = editor.edits[0].edit
    annotation_id = f"offload-{task_id}"
    assert list(edit.change_annotations) == [annotation_id]
    kinds = {type(c).__name__: c for c in edit.document_changes}
    assert kinds["CreateFile"].uri == from_fs_path(str(repo / "test_multiply.py"))
    assert kinds["CreateFile"].annotation_id == annotation_id
    texts = [c for c in edit.document_changes if isinstance(c, types.TextDocumentEdit)]
    assert {c.text_document.uri for c in texts} == {from_fs_path(str(repo / f)) for f in ("calc.py", "test_multiply.py")}
    assert all(annotated(c) == [annotation_id] for c in texts)


@pytest.mark.parametrize("capabilities", ["emacs", "neovim@v0.11.0"])
async def test_clients_without_annotation_support_get_none(client, fake_model, tmp_path, capabilities):
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, capabilities, "fix-and-document")
    task_id = (await execute(client, "offload.code", {"prompt": "Fix add and document multiply"}))["taskId"]
    await editor.until(lambda: editor.state(task_id) == "finished")
    await execute(client, "offload.acceptHunk", {"taskId": task_id, "hunkId": "calc.py#1"})
    await execute(client, "offload.apply", {"taskId": task_id})
    await editor.until(lambda: len(editor.edits) == 2)
    for params in editor.edits:
        edit = params.edit
        assert edit.change_annotations is None
        if capabilities == "emacs":  # versioned documentChanges, but no annotations
            (change,) = edit.document_changes
            assert set(annotated(change)) == {None} and all(type(e) is types.TextEdit for e in change.edits)
        else:
            assert edit.document_changes is None and list(edit.changes) == [from_fs_path(str(repo / "calc.py"))]


async def test_review_follows_typing_and_decisions_made_from_the_cli(client, fake_model, tmp_path):
    repo, editor, uri, before, task_id = await two_hunks_under_review(client, fake_model, tmp_path)

    def lines() -> list[int]:
        return sorted(d.range.start.line for d in client.diagnostics.get(uri, []))

    assert lines() == [4, 8]
    for version in (2, 3):  # typing above the hunks moves their diagnostics
        client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(types.Position(0, 0), types.Position(0, 0)), text="# a note\n")]))
    await editor.until(lambda: lines() == [6, 10], timeout=10)

    applied = await asyncio.to_thread(offload_cli, "apply", task_id, cwd=repo)
    assert applied.returncode == 0, applied.stderr
    await editor.until(lambda: lines() == [], timeout=10)  # accepted elsewhere: no longer pending here
    shown = await execute(client, "offload.showTask", {"taskId": task_id})
    assert {h["status"] for h in shown["hunks"]} == {"accepted"}
