"""Code actions: the way into Offload that every LSP editor has.

Hunk actions are found from the requested range, not from the diagnostics a client passes back:
clients differ there (Neovim 0.11 and eglot pass only the server's own; eglot passes every one of
the buffer when the point is on no symbol), and an action for a hunk elsewhere would be taken for
the one under the cursor. Each title says which change it acts on.
"""

from __future__ import annotations

from lsprotocol import types

from . import review
from .server import OffloadServer, server

# The experimental client capability that says the editor asks the user for an `offload.code`
# prompt when a command comes without one (the VS Code extension does): then "do…" is offered.
PROMPT_CAPABILITY = "offloadPrompt"


@server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
    code_action_kinds=[types.CodeActionKind.QuickFix, types.CodeActionKind.Refactor]))
def code_actions(ls: OffloadServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    """On a hunk's lines: accept, reject, preview it, accept its file's hunks. On a diagnostic:
    "fix this"; on any other line: "fix the problem here". On a selection: tasks about it."""
    hunks = _hunk_actions(ls, params)
    actions = [*hunks, *_fix_actions(ls, params, line_too=not hunks), *_selection_actions(ls, params)]
    only = params.context.only
    return [a for a in actions if not only or any(a.kind == k or a.kind.startswith(f"{k}.") for k in only)]


def _action(title: str, command: str, arg: dict, preferred: bool = False,
            kind: str = types.CodeActionKind.QuickFix) -> types.CodeAction:
    return types.CodeAction(title=title, kind=kind, is_preferred=preferred or None,
                            command=types.Command(title=title, command=command, arguments=[arg]))


def _hunk_actions(ls: OffloadServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    uri = params.text_document.uri
    actions = []
    placed = review.at(ls, uri, params.range)
    for p in placed:
        if p.span is not None:
            actions.append(_action(f"Offload: accept {p.where()}", "offload.acceptHunk", p.arg, preferred=True))
        actions += [_action(f"Offload: reject {p.where()}", "offload.rejectHunk", p.arg),
                    _action(f"Offload: preview {p.where()}", "offload.previewHunk", p.arg)]
    for record in {p.record["id"]: p.record for p in placed}.values():
        same = [q for q in review.place(ls, {uri}).get(uri, []) if q.record["id"] == record["id"]]
        if len(same) > 1 and all(q.span is not None for q in same):
            actions.append(_action(f"Offload: accept all {len(same)} changes in this file — {review.title(record)}",
                                   "offload.acceptHunk", {"taskId": record["id"],
                                                          "hunkIds": [q.hunk.id for q in same]}))
    return actions


def _overlaps(diagnostic: types.Diagnostic, rng: types.Range) -> bool:
    return diagnostic.range.start.line <= rng.end.line and rng.start.line <= diagnostic.range.end.line


def _fix_actions(ls: OffloadServer, params: types.CodeActionParams, line_too: bool) -> list[types.CodeAction]:
    """"Offload: fix this" on each diagnostic of the range (another tool's, or Offload's own failing
    check); with none (and, `line_too`, no hunk there), "Offload: fix the problem here" on the
    line, from its text."""
    uri, rng = params.text_document.uri, params.range
    where = {"uri": uri}
    actions = []
    for diagnostic in params.context.diagnostics:
        if diagnostic.source == "offload" and diagnostic.code == "proposal" or not _overlaps(diagnostic, rng):
            continue
        line = diagnostic.range.start.line + 1
        action = _action("Offload: fix this", "offload.code", {
            "prompt": f"Fix this problem reported at line {line}: {diagnostic.message}", **where,
            "range": ls.protocol._converter.unstructure(diagnostic.range)})
        action.diagnostics = [diagnostic]
        actions.append(action)
    if actions or not line_too or rng.end.line - rng.start.line > 1 or rng.end.line > rng.start.line and rng.end.character:
        return actions
    line = rng.start.line
    text = ""
    if uri in ls.workspace.text_documents:
        lines = ls.workspace.get_text_document(uri).lines
        text = lines[line].strip() if line < len(lines) else ""
    prompt = f"Fix the problem at line {line + 1}" + (f": `{text}`" if text else "") + \
        ". Find what is wrong there (run the project's checks), fix it and show that it works."
    whole_line = types.Range(types.Position(line, 0), types.Position(line + 1, 0))
    return [_action("Offload: fix the problem here", "offload.code",
                    {"prompt": prompt, **where, "range": ls.protocol._converter.unstructure(whole_line)})]


def _selection_actions(ls: OffloadServer, params: types.CodeActionParams) -> list[types.CodeAction]:
    if params.range.start == params.range.end:
        return []
    where = {"uri": params.text_document.uri, "range": ls.protocol._converter.unstructure(params.range)}
    tasks = [("Offload: write tests for this", "offload.code",
              "Write tests for the selected code, beside the project's existing tests and in their style, "
              "covering its edge cases; run them and make them pass without changing the code under test."),
             ("Offload: explain this", "offload.ask",
              "Explain what the selected code does, how, and why it is written this way, citing the lines.")]
    actions = [_action(title, command, {"prompt": prompt, **where}, kind=types.CodeActionKind.Refactor)
               for title, command, prompt in tasks]
    experimental = ls.client_capabilities.experimental
    if isinstance(experimental, dict) and experimental.get(PROMPT_CAPABILITY):
        actions.append(_action("Offload: do…", "offload.code", where, kind=types.CodeActionKind.Refactor))
    return actions
