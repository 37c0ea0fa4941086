"""Hunk-by-hunk review of a task's change.

A hunk is one contiguous change between the task's base and its result in one file. Accepting
a hunk merges *only that hunk* three ways onto the file as it is now, so hunks can be taken in
any order, around the user's own edits; rejecting one records it for the next follow-up.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass

from offload.sandbox.result import ChangedFile

from .merge import Merged, merge_file


@dataclass(frozen=True)
class Hunk:
    id: str  # "<path>#<n>", stable for a task
    path: str
    base_start: int  # 0-based first line in the base
    base_lines: tuple[str, ...]  # the lines the hunk replaces (keepends)
    result_lines: tuple[str, ...]  # the lines it puts there (keepends)

    @property
    def added(self) -> int:
        return len(self.result_lines)

    @property
    def removed(self) -> int:
        return len(self.base_lines)

    def as_dict(self) -> dict:
        return {"hunkId": self.id, "path": self.path, "baseStart": self.base_start,
                "removed": "".join(self.base_lines), "added": "".join(self.result_lines)}


_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")


def split_lines(text: str) -> list[str]:
    """Lines as editors count them (LSP: a line ends at LF, CRLF or CR only, never at a form feed),
    each with its ending, so that a line number here is the editor's line number."""
    return _LINE.findall(text)


def _lines(data: bytes | None) -> list[str]:
    """Lines that encode back to exactly `data`: bytes that are not UTF-8 (a Latin-1 file) survive
    as surrogates, so review and apply never alter a byte they were not asked to."""
    return [] if data is None else split_lines(data.decode("utf-8", "surrogateescape"))


def _bytes(lines) -> bytes:
    return "".join(lines).encode("utf-8", "surrogateescape")


@functools.lru_cache(maxsize=128)
def _opcodes(a: bytes | None, b: bytes | None) -> tuple[tuple[str, int, int, int, int], ...]:
    """How the lines of `a` became those of `b`. Cached: the editor asks again at every keystroke,
    and tasks started from the same snapshot share their files' base."""
    return tuple(difflib.SequenceMatcher(a=_lines(a), b=_lines(b), autojunk=False).get_opcodes())


def hunks(change: ChangedFile) -> list[Hunk]:
    """The hunks of one changed file; an added, deleted, binary or symlink change is one hunk.
    None when its base already is its result (the user took all of it before a follow-up)."""
    if change.base_mode == change.result_mode and change.base_oid == change.result_oid:
        return []
    whole = change.symlink or change.large or change.binary
    found = [] if whole else list(_hunks(change.path, change.base, change.result))
    if not found:  # a symlink, a binary or large file, an exec bit: the change is one piece
        found = [Hunk(f"{change.path}#1", change.path, 0, (), ())]
    return found


@functools.lru_cache(maxsize=128)
def _hunks(path: str, base_data: bytes | None, result_data: bytes | None) -> tuple[Hunk, ...]:
    base, result = _lines(base_data), _lines(result_data)
    found = []
    for tag, i1, i2, j1, j2 in _opcodes(base_data, result_data):
        if tag != "equal":
            found.append(Hunk(f"{path}#{len(found) + 1}", path, i1, tuple(base[i1:i2]), tuple(result[j1:j2])))
    if not found and base_data != result_data:  # a change git sees but lines don't (mode, bytes)
        found.append(Hunk(f"{path}#1", path, 0, tuple(base), tuple(result)))
    return tuple(found)


def with_hunks(change: ChangedFile, chosen: list[Hunk]) -> bytes | None:
    """The base with just the `chosen` hunks applied: what accepting them merges in."""
    every = hunks(change)
    if change.result is None and len(chosen) == len(every):
        return None  # accepting the whole of a deleted file deletes it
    if change.base is None and not chosen:
        return None  # an added file with nothing accepted stays absent
    if change.symlink or change.large or change.binary:
        return change.result if chosen else change.base
    lines = _lines(change.base)
    for hunk in sorted(chosen, key=lambda h: h.base_start, reverse=True):
        lines[hunk.base_start: hunk.base_start + len(hunk.base_lines)] = hunk.result_lines
    return _bytes(lines)


def accept(change: ChangedFile, chosen: list[Hunk], current: bytes | None) -> Merged:
    """The `chosen` hunks merged onto the current file, keeping every other edit in it: each hunk
    replaces its base lines where `locate` finds them now, so an edit on the next line does not
    block it, and a hunk whose lines are already there (the same change, taken from another
    task) is left as it is. A hunk neither found nor there is a conflict."""
    if change.base is None or change.result is None or current is None or change.symlink or change.large \
            or change.binary:
        return merge_file(change.path, change.base, with_hunks(change, chosen), current)
    lines, spans = _lines(current), []
    for hunk in chosen:
        span = locate(hunk, change.base, current)
        if span is not None:
            spans.append((span, hunk))
        elif made(hunk, change.base, current) is None:
            return Merged(change.path, current, conflict=True)
    for (start, end), hunk in sorted(spans, key=lambda s: s[0], reverse=True):
        lines[start:end] = hunk.result_lines
    content = _bytes(lines)
    return Merged(change.path, content, unchanged=content == current)


def made(hunk: Hunk, base: bytes | None, current: bytes | None) -> tuple[int, int] | None:
    """Where the current file made exactly this hunk's change already (another task's, or the
    user's own), or None: then it is no conflict, and nothing is left to do for it."""
    if not hunk.base_lines and not hunk.result_lines:
        return None
    now = _lines(current)
    end = hunk.base_start + len(hunk.base_lines)
    for tag, i1, i2, j1, j2 in _opcodes(base, current):
        if tag != "equal" and (i1, i2) == (hunk.base_start, end) and tuple(now[j1:j2]) == hunk.result_lines:
            return j1, j2
    return None
    now = _lines(current)
    for tag, i1, i2, j1, j2 in _opcodes(base, current):
        if tag != "equal" and i1 <= hunk.base_start and hunk.base_start + len(hunk.base_lines) <= i2:
            return tuple(now[j1:j2]) == hunk.result_lines and (i1, i2) == (
                hunk.base_start, hunk.base_start + len(hunk.base_lines))
    return False


def locate(hunk: Hunk, base: bytes | None, current: bytes | None) -> tuple[int, int] | None:
    """Where the hunk's base lines are in the current file now (0-based start, end-exclusive), or None
    when the user's edits overlap them."""
    opcodes = _opcodes(base, current)
    start, end = hunk.base_start, hunk.base_start + len(hunk.base_lines)
    for tag, i1, i2, j1, j2 in opcodes:
        if tag == "equal":
            if i1 <= start <= i2 and (end <= i2 or start == end):
                return j1 + (start - i1), j1 + (start - i1) + (end - start)
        elif i1 < end and start < i2 or (start == end and i1 <= start < i2):
            return None  # the user changed these lines too
    base_length, current_length = (opcodes[-1][2], opcodes[-1][4]) if opcodes else (0, 0)
    if start == base_length:
        return current_length, current_length
    return None


def follow(line: int, old: bytes | None, new: bytes | None) -> int:
    """Where 0-based `line` of `old` is in `new`: a line the two share keeps its place among the
    others; a line changed in between maps to the start of what replaced it."""
    for tag, i1, i2, j1, _ in _opcodes(old, new):
        if line < i2:
            return j1 + (line - i1) if tag == "equal" else j1
    return len(_lines(new))
