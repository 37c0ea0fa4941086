"""Edits the editor applies: the fewest lines changed, against the text the editor has now.

An edit that replaces a whole document undoes whatever the user typed after it was computed and
moves the cursor to the end; an edit that touches only the hunk's lines leaves both alone. The
text an edit is computed from is the editor's (the server's copy follows `didChange`), and where
the client checks versions and refuses a stale edit, it is computed again from the newer text.

An edit is sent only after the command that asked for it has been answered: a client waiting
for that answer (Emacs eglot does so synchronously) cannot answer the edit before it.
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lsprotocol import types

from ..tasks.manager import TaskError
from ..tasks.merge import Merged
from ..tasks.review import split_lines

log = logging.getLogger(__name__)
EDIT_TIMEOUT = 60.0  # seconds an editor gets to apply an accepted hunk (initializationOptions.editTimeout)
CONFIRM_TIMEOUT = 3600.0  # …and a whole task, which it may show the user first (VS Code's preview)
RETRIES = 3  # stale edits computed again, at most
STALE_WAIT = 2.0  # seconds a refused edit waits for the text the client had (see `_moved`)


def text_edits(old: str, new: str, codec) -> list[types.TextEdit]:
    """The line ranges of `old` that differ from `new`, each replaced: nothing else is touched."""
    a, b = split_lines(old), split_lines(new)
    return [types.TextEdit(range=types.Range(_position(a, i1, codec), _position(a, i2, codec)),
                           new_text="".join(b[j1:j2]))
            for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes()
            if tag != "equal"]


def _position(lines: list[str], index: int, codec) -> types.Position:
    """The start of line `index`; past the last line, the end of the text (a last line without
    an ending has no next line to start)."""
    if index < len(lines) or not lines or lines[-1].endswith(("\n", "\r")):
        return types.Position(index, 0)
    return types.Position(len(lines) - 1, codec.client_num_units(lines[-1]))


def supports(ls, *path: str):
    """The client capability at `path` (snake_case attribute names), or None."""
    node: Any = ls.client_capabilities
    for name in path:
        node = getattr(node, name, None)
        if node is None:
            return None
    return node


def carried(ls, root: Path, merged: Merged) -> bool:
    """Whether a text edit can carry this file to the editor. A file the editor has not open that
    must be created or deleted, and that its edits cannot create or delete, Offload writes itself."""
    if merged.disk:
        return False
    is_open = ls.uri(root, merged.path) in ls.workspace.text_documents
    if merged.content is None:  # an open document's deletion the editor must do (or say it can't)
        return is_open or _can(ls, types.ResourceOperationKind.Delete)
    if not is_open and not (root / merged.path).exists():
        return _can(ls, types.ResourceOperationKind.Create)
    return True


def _can(ls, operation: types.ResourceOperationKind) -> bool:
    """Whether the client's edits can create (or delete) files."""
    ops = supports(ls, "workspace", "workspace_edit", "resource_operations") or []
    return bool(supports(ls, "workspace", "workspace_edit", "document_changes")) and operation in ops


def workspace_edit(ls, root: Path, merged: list[Merged]) -> tuple[types.WorkspaceEdit, dict[str, int | None]]:
    """The edit for `merged`, in the richest form the client declares, and the version of each
    open document it was computed against."""
    versioned = supports(ls, "workspace", "workspace_edit", "document_changes")
    document_changes: list[Any] = []
    changes: dict[str, list[types.TextEdit]] = {}
    versions: dict[str, int | None] = {}
    for m in merged:
        if m.unchanged:
            continue
        uri = ls.uri(root, m.path)
        is_open = uri in ls.workspace.text_documents
        if m.content is None:
            if _can(ls, types.ResourceOperationKind.Delete):
                document_changes.append(types.DeleteFile(uri=uri))
                continue
            raise TaskError(f"this editor cannot delete files through an edit; run `offload apply` for {m.path}")
        new = m.content.decode("utf-8", errors="replace")
        if not is_open and not (root / m.path).exists():  # created: `carried` said the client can
            document_changes += [types.CreateFile(uri=uri), types.TextDocumentEdit(
                text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=None),
                edits=[types.TextEdit(range=types.Range(types.Position(0, 0), types.Position(0, 0)), new_text=new)])]
            continue
        doc = ls.workspace.get_text_document(uri) if is_open else None
        old = doc.source if doc else (ls.current_bytes(root, m.path) or b"").decode("utf-8", errors="replace")
        edits = text_edits(old, new, ls.workspace.position_codec)
        if not edits:
            continue
        versions[uri] = doc.version if doc else None
        if versioned:
            document_changes.append(types.TextDocumentEdit(
                text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=versions[uri]),
                edits=edits))
        else:
            changes[uri] = edits
    if versioned:
        return types.WorkspaceEdit(document_changes=document_changes), versions
    return types.WorkspaceEdit(changes=changes), versions


def _empty(edit: types.WorkspaceEdit) -> bool:
    return not edit.document_changes and not edit.changes


def _versions(ls, versions: dict[str, int | None]) -> dict[str, int | None]:
    return {uri: ls.workspace.get_text_document(uri).version if uri in ls.workspace.text_documents else None
            for uri in versions}


async def _moved(ls, versions: dict[str, int | None], wait: float = STALE_WAIT) -> bool:
    """Whether a document the edit was computed from has a newer version, now or within `wait`
    seconds: a client may refuse an edit for text it has not yet reported (eglot reports it idle)."""
    for _ in range(int(wait / 0.05)):
        if _versions(ls, versions) != versions:
            return True
        await asyncio.sleep(0.05)
    return _versions(ls, versions) != versions


def opened(ls, root: Path, merged: list[Merged]) -> dict[str, int | None]:
    """The versions of the open documents among `merged`'s files: what it was computed from."""
    return _versions(ls, {uri: None for m in merged if (uri := ls.uri(root, m.path)) in ls.workspace.text_documents})


async def send_edit(ls, task_id: str, root: Path, compute: Callable[[], list[Merged]],
                    merged: list[Merged], seen: dict[str, int | None], hunk_ids: list[str] | None = None) -> None:
    """Ask the client to apply `merged` (what `compute` gives, from documents at the versions
    `seen`); the hunks (with None: the whole task) count as accepted once it says it did. Text
    that moved on before the edit is sent, or that a client refuses the edit for, gets the edit
    computed again from it; a client that never answers is told so, and nothing counts as accepted."""
    manager = ls.tasks()
    timeout = ls.edit_timeout if hunk_ids is not None else max(ls.edit_timeout, CONFIRM_TIMEOUT)
    failure = None
    try:
        if _versions(ls, seen) != seen:  # typed in between the command and now
            merged = compute()
    except TaskError as e:
        return ls.show(types.MessageType.Error, f"Offload: nothing was applied: {e}")
    for _ in range(RETRIES):
        edit, versions = workspace_edit(ls, root, merged)
        response = None
        if not _empty(edit):
            if supports(ls, "workspace", "workspace_edit", "change_annotation_support") and edit.document_changes:
                edit = _annotated(edit, task_id, manager.get(task_id)["prompt"], hunk_ids)
            try:
                response = await asyncio.wait_for(ls.workspace_apply_edit_async(
                    types.ApplyWorkspaceEditParams(edit=edit, label=f"Offload task {task_id}")), timeout)
            except TimeoutError:
                return ls.show(types.MessageType.Error, f"Offload: the editor did not apply the change within "
                               f"{timeout:g} s; nothing was accepted. Accept it again, or run `offload apply {task_id}`.")
            except Exception as e:  # the client answered with an error (eglot: a version it no longer has)
                failure = str(e)
        if _empty(edit) or response is not None and response.applied:
            if hunk_ids is None:
                manager.accepted_all(task_id)
            else:
                manager.decide(task_id, hunk_ids, "accepted")
            return ls.publish_review(task_id)
        failure = failure or getattr(response, "failure_reason", None)
        if not await _moved(ls, versions):  # refused for another reason than a newer text
            break
        try:
            merged = compute()  # the user typed meanwhile: from the newer text
        except TaskError as e:
            failure = str(e)
            break
    manager._emit(manager.get(task_id), "apply.rejected", {"reason": failure})
    ls.show(types.MessageType.Error, f"Offload: the editor did not apply the change: {failure or 'it refused it'}")
    ls.publish_review(task_id)


def _annotated(edit: types.WorkspaceEdit, task_id: str, prompt: str,
               hunk_ids: list[str] | None) -> types.WorkspaceEdit:
    """`edit` with every change under one annotation naming the task. Applying a whole task
    needs the user's confirmation (VS Code shows its refactor preview first): it may touch many
    files the user has not looked at. Accepting hunks does not: the user has just read each one
    where it is and clicked Accept on it, so a preview would only ask the same question twice."""
    annotation_id = f"offload-{task_id}"
    first_line = prompt.strip().splitlines()[0] if prompt.strip() else "change"
    label = "Offload: " + (first_line if len(first_line) <= 50 else first_line[:49] + "…")
    what = "the whole change" if hunk_ids is None else "hunk " + ", ".join(hunk_ids)
    changes: list[Any] = []
    for change in edit.document_changes:
        if isinstance(change, types.TextDocumentEdit):
            change = types.TextDocumentEdit(text_document=change.text_document, edits=[
                types.AnnotatedTextEdit(range=e.range, new_text=e.new_text, annotation_id=annotation_id)
                for e in change.edits])
        else:  # CreateFile, DeleteFile
            change = type(change)(uri=change.uri, options=change.options, annotation_id=annotation_id)
        changes.append(change)
    return types.WorkspaceEdit(document_changes=changes, change_annotations={annotation_id: types.ChangeAnnotation(
        label=label, needs_confirmation=hunk_ids is None, description=f"Offload task {task_id}: {what}")})
