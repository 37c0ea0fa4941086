"""Review in the editor: each pending hunk where it is in the file now, as a diagnostic every
client shows, a hover with its whole diff, and CodeLens where the client asks for lenses.

Review is the tasks' state on disk, not the server's: it is published again for every document
the editor opens, so a restarted server or a reloaded window shows it as it was left.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lsprotocol import types

from ..tasks.review import Hunk, locate, made
from . import edits
from .server import OffloadServer, server

SHORT_LINES = 3  # changed lines of each side a diagnostic's message shows


@dataclass
class Placed:
    """A pending hunk and where it is in the file now: `span` (0-based lines, end excluded), or
    None when the user's edits overlap it; `made` when the file already holds its change."""

    record: dict
    hunk: Hunk
    span: tuple[int, int] | None
    made: bool = False

    @property
    def lines(self) -> tuple[int, int]:
        """The lines it is shown on (at least one; line 0 when it cannot be placed)."""
        start, end = self.span or (0, 0)
        return start, max(end, start + 1)

    @property
    def range(self) -> types.Range:
        start, end = self.lines
        return types.Range(types.Position(start, 0), types.Position(end, 0))

    @property
    def arg(self) -> dict:
        return {"taskId": self.record["id"], "hunkId": self.hunk.id}

    def where(self) -> str:
        """'+4 −0 at line 17 — Fix add': which change, in a title or a message."""
        return f"+{self.hunk.added} −{self.hunk.removed} at line {self.lines[0] + 1} — {title(self.record)}"


def title(record: dict) -> str:
    """A task's title: its prompt's first line, short."""
    first = (record["prompt"].strip().splitlines() or ["task"])[0]
    return first if len(first) <= 40 else first[:39] + "…"


def diff_lines(hunk: Hunk, limit: int | None = None) -> list[str]:
    """The hunk as diff lines, `-` then `+`; with `limit`, that many of each side and a count of the rest."""
    out = []
    for sign, lines in (("-", hunk.base_lines), ("+", hunk.result_lines)):
        shown = lines if limit is None else lines[:limit]
        out += [sign + line.rstrip("\r\n") for line in shown]
        if len(shown) < len(lines):
            out.append(f"{sign}… ({len(lines) - len(shown)} more)")
    if not hunk.base_lines and not hunk.result_lines:
        out.append("(a change of the whole file: its bytes, link or mode)")
    return out


def place(ls: OffloadServer, uris: set[str]) -> dict[str, list[Placed]]:
    """The pending hunks of the documents at `uris`, where they are in their text now."""
    found: dict[str, list[Placed]] = {}
    for record, hunk, change in ls.pending_hunks():
        root = Path(record["repo"])
        uri = ls.uri(root, hunk.path)
        if uri not in uris:
            continue
        current = ls.current_bytes(root, hunk.path)
        span = locate(hunk, change.base, current)
        if span is None and (done := made(hunk, change.base, current)) is not None:
            found.setdefault(uri, []).append(Placed(record, hunk, done, made=True))
        else:
            found.setdefault(uri, []).append(Placed(record, hunk, span))
    return found


def at(ls: OffloadServer, uri: str, rng: types.Range) -> list[Placed]:
    """The pending hunks of `uri` whose lines overlap `rng` (a range ending at a line's start
    stops on the line before, as a diagnostic's range does)."""
    first, last = rng.start.line, rng.end.line
    if rng.end.character == 0 and last > first:
        last -= 1
    return [p for p in place(ls, {uri}).get(uri, []) if p.lines[0] <= last and first < p.lines[1]]


def publish(ls: OffloadServer, task_id: str | None = None, uri: str | None = None) -> None:
    """An Information diagnostic over each pending hunk and a Warning on each check still failing,
    per file. Only the files that may have changed are published again: with `uri`, that one
    (the user typed in it, or opened it); with `task_id`, that task's, now and before; else every one."""
    records = ls.records()
    if uri is not None:
        targets = {uri}
    else:
        targets = {u for u, tasks in ls.published.items() if task_id is None or task_id in tasks}
        for record in records:
            if task_id in (None, record["id"]):
                paths = [c["path"] for c in record.get("changes", [])] + [f["path"] for f in record.get("failures", [])]
                targets |= {ls.uri(record["repo"], p) for p in paths}
    by_uri: dict[str, list[types.Diagnostic]] = {}
    for target, placed in place(ls, targets).items():
        for p in placed:
            state = " (already in your file: accept to mark it taken)" if p.made else \
                "" if p.span else " — your edits overlap it; reject it, or follow up"
            message = "\n".join([f"Offload: {p.where()}{state}", *diff_lines(p.hunk, SHORT_LINES)])
            by_uri.setdefault(target, []).append(types.Diagnostic(
                range=p.range, message=message, severity=types.DiagnosticSeverity.Information, source="offload",
                code="proposal", data={**p.arg, "located": p.span is not None}))
    for record in records:
        if record["kind"] != "code" or record.get("discarded") or record["state"] not in ("finished", "failed"):
            continue
        for failure in record.get("failures", []):
            failure_uri = ls.uri(record["repo"], failure["path"])
            if failure_uri not in targets:
                continue
            line = max(failure["line"] - 1, 0)
            by_uri.setdefault(failure_uri, []).append(types.Diagnostic(
                range=types.Range(types.Position(line, 0), types.Position(line + 1, 0)),
                message=f"Offload ({title(record)}): a check still fails here: {failure['message']}",
                severity=types.DiagnosticSeverity.Warning, source="offload", code="check-failed",
                data={"taskId": record["id"]}))
    for target in targets:
        diagnostics = by_uri.get(target, [])
        if not diagnostics and target not in ls.published and target not in ls.workspace.text_documents:
            continue  # nothing was shown there, nothing to withdraw
        ls.text_document_publish_diagnostics(types.PublishDiagnosticsParams(uri=target, diagnostics=diagnostics))
        if diagnostics:
            ls.published[target] = {d.data["taskId"] for d in diagnostics}
        else:
            ls.published.pop(target, None)
    if uri is None:
        ls.refresh_code_lens()  # the lenses of a file being typed in follow from the editor's next request


@server.feature(types.TEXT_DOCUMENT_HOVER)
def hover(ls: OffloadServer, params: types.HoverParams) -> types.Hover | None:
    """The whole diff of the hunks under the cursor: every editor has hover."""
    point = types.Range(params.position, params.position)
    placed = at(ls, params.text_document.uri, point)
    if not placed:
        return None
    formats = edits.supports(ls, "text_document", "hover", "content_format") or []
    markdown = types.MarkupKind.Markdown in formats
    fence, end = ("```diff\n", "\n```") if markdown else ("", "")
    parts = [f"Offload: {p.where()}\n\n{fence}" + "\n".join(diff_lines(p.hunk)) + end for p in placed]
    parts.append("Accept or reject it with a code action on these lines.")
    kind = types.MarkupKind.Markdown if markdown else types.MarkupKind.PlainText
    return types.Hover(contents=types.MarkupContent(kind=kind, value="\n\n".join(parts)), range=placed[0].range)


@server.feature(types.TEXT_DOCUMENT_CODE_LENS)
def code_lens(ls: OffloadServer, params: types.CodeLensParams) -> list[types.CodeLens]:
    lenses = []
    for p in place(ls, {params.text_document.uri}).get(params.text_document.uri, []):
        if p.span is None:
            continue
        where = types.Range(types.Position(p.lines[0], 0), types.Position(p.lines[0], 0))
        lenses += [types.CodeLens(range=where, command=types.Command(
                       title="Offload: Accept", command="offload.acceptHunk", arguments=[p.arg])),
                   types.CodeLens(range=where, command=types.Command(
                       title="Reject", command="offload.rejectHunk", arguments=[p.arg]))]
    return lenses
