"""The apply_patch engine: Codex's patch grammar, applied so that it never corrupts a file.

The engine is pure. It reads files through a callback and returns the changes to write, so
a patch that fails anywhere changes nothing, and the caller alone decides how bytes reach
the disk (and enforces symlink containment while doing so).

Where Codex would guess, this engine refuses with a message written for the model: which
file and chunk failed, why, and the nearest text in the file with line numbers, so that
the next attempt can succeed.
"""

from __future__ import annotations

import difflib
import heapq
import re
from dataclasses import dataclass
from typing import Callable, Literal, NoReturn

__all__ = ["Chunk", "FileChange", "FileOp", "PatchError", "apply_patch", "parse_patch"]


class PatchError(Exception):
    """A patch that cannot be applied safely; str(e) is written for the model to act on."""


@dataclass(frozen=True)
class Chunk:
    """One `@@` section of an Update File: where it goes and what it changes.

    `lines` holds (op, text) pairs in patch order: op is " " (context), "-" (removed)
    or "+" (added). `headers` are the `@@ text` lines that narrow the search, outermost
    first; `end_of_file` anchors the chunk to the end of the file.
    """

    headers: tuple[str, ...]
    lines: tuple[tuple[str, str], ...]
    end_of_file: bool
    patch_line: int


@dataclass(frozen=True)
class FileOp:
    """One file section of a parsed patch; paths are relative, posix and normalised."""

    kind: Literal["add", "delete", "update"]
    path: str
    patch_line: int
    new_path: str | None = None
    content: str | None = None  # the text of an added file
    chunks: tuple[Chunk, ...] = ()


@dataclass(frozen=True)
class FileChange:
    """What to write: `content` goes to `new_path or path`; a move also removes `path`."""

    path: str
    kind: Literal["add", "delete", "update"]
    new_path: str | None
    content: bytes | None  # None for a delete


_NOTHING_CHANGED = "No files were changed; fix the patch and send the whole patch again."

# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------

_MARKER_RE = re.compile(
    r"\*\*\*\s*(begin patch|end patch|end of file|add file|delete file|update file|move to)\s*(:.*)?",
    re.IGNORECASE,
)
_FILE_MARKERS = ("add file", "delete file", "update file")
_HEREDOC_RE = re.compile(r"(?:apply_?patch\s*)?<<-?\s*(['\"]?)(\w+)\1")
_UNIFIED_HEADER_RE = re.compile(r"-\d+(?:,\d+)?\s+\+\d+(?:,\d+)?\s*@@(.*)")
_FENCE_END_RE = re.compile(r"```+\s*")  # at column 0: " ```" is a context line

_Line = tuple[int, str]  # (1-based line number in the patch text, text)


def _fail(message: str) -> NoReturn:
    raise PatchError(message)


def _marker(raw: str) -> tuple[str, str | None] | None:
    """The marker a line is (name, argument), or None for an ordinary line.

    Leading/trailing whitespace and case are forgiven: reading a misplaced marker as
    context would silently splice the next file's lines into this one.
    """
    if raw[:1] in ("+", "-"):
        return None
    m = _MARKER_RE.fullmatch(raw.strip())
    if m is None:
        return None
    name, arg = m.group(1).lower(), m.group(2)
    return name, (arg[1:].strip() if arg is not None else None)


def _trim_blank(lines: list[_Line]) -> list[_Line]:
    start, end = 0, len(lines)
    while start < end and not lines[start][1].strip():
        start += 1
    while end > start and not lines[end - 1][1].strip():
        end -= 1
    return lines[start:end]


def _unwrap(text: str) -> list[_Line]:
    """The lines between `*** Begin Patch` and `*** End Patch`, wrappers models add removed.

    Accepted because their meaning is plain: CRLF, a ``` fence, a heredoc
    (`apply_patch <<'EOF'` … `EOF`, or `applypatch`), a patch indented as a whole, a missing
    `*** Begin Patch` when the text starts with a file section, and a missing `*** End Patch`
    when a closed fence or heredoc shows the patch arrived whole. Without either, the patch may
    have been cut off (a truncated last chunk would delete lines), so it is refused.
    """
    lines = _trim_blank(list(enumerate(text.replace("\r\n", "\n").split("\n"), 1)))
    closed = False  # a wrapper's end arrived: the patch is whole
    if lines and lines[0][1].lstrip().startswith("```"):
        lines = lines[1:]
        if lines and _FENCE_END_RE.fullmatch(lines[-1][1]):
            lines, closed = lines[:-1], True
        lines = _trim_blank(lines)
    if lines and (m := _HEREDOC_RE.fullmatch(lines[0][1].strip())):
        lines = lines[1:]
        if lines and lines[-1][1].strip() == m.group(2):
            lines, closed = lines[:-1], True
        lines = _trim_blank(lines)
    if not lines:
        _fail("Invalid patch: it is empty. Send '*** Begin Patch', file sections, then '*** End Patch'.")
    indent = re.match(r"[ \t]*", lines[0][1]).group()
    if indent and all(raw.startswith(indent) or not raw.strip() for _, raw in lines):
        lines = [(ln, raw[len(indent):]) for ln, raw in lines]

    first = _marker(lines[0][1])
    if first is not None and first[0] == "begin patch":
        lines = lines[1:]
    elif first is None or first[0] not in _FILE_MARKERS:
        ln, raw = lines[0]
        _fail(f"Invalid patch, line {ln}: a patch starts with '*** Begin Patch', got {raw!r}.")
    for idx, (ln, raw) in enumerate(lines):
        mk = _marker(raw)
        if mk is None:
            continue
        if mk[0] == "begin patch":
            _fail(
                f"Invalid patch, line {ln}: a second '*** Begin Patch'. "
                "Send one patch per call (it may hold many files)."
            )
        if mk[0] == "end patch":
            rest = [(n, r) for n, r in lines[idx + 1 :] if r.strip()]
            if rest:
                _fail(f"Invalid patch, line {rest[0][0]}: unexpected text after '*** End Patch': {rest[0][1]!r}.")
            return lines[:idx]
    if not closed:
        _fail("Invalid patch: it does not end with '*** End Patch', so it may have been cut off. "
              "Send the whole patch again, ending with '*** End Patch'.")
    return lines


_DRIVE_RE = re.compile(r"[A-Za-z]:")


def _clean_path(raw: str | None, ln: int) -> str:
    """A relative, posix, normalised path, or a PatchError for one that could leave the workspace."""
    path = (raw or "").strip()
    where = f"Invalid patch, line {ln}"
    if not path:
        _fail(f"{where}: the file path is empty.")
    if "\x00" in path:
        _fail(f"{where}: the path {path!r} contains a NUL character.")
    if path.startswith(("/", "\\", "~")) or _DRIVE_RE.match(path):
        _fail(f"{where}: {path!r} is an absolute path; use a path relative to the workspace root (e.g. 'src/app.py').")
    if "\\" in path:
        _fail(f"{where}: {path!r} contains a backslash; separate directories with '/'.")
    if path.endswith("/"):
        _fail(f"{where}: {path!r} names a directory, not a file.")
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                _fail(f"{where}: {path!r} escapes the workspace root; use a path inside the workspace.")
            parts.pop()
        else:
            parts.append(part)
    if not parts:
        _fail(f"{where}: {path!r} does not name a file.")
    return "/".join(parts)


def _header_text(raw: str) -> str:
    """The context of an `@@` line; a unified-diff `@@ -3,4 +3,5 @@ def f():` keeps only `def f():`."""
    text = raw[2:].strip()
    m = _UNIFIED_HEADER_RE.fullmatch(text)
    return m.group(1).strip() if m else text


def _chunk_line(raw: str, ln: int) -> tuple[str, str] | None:
    """One line of an Update chunk as (op, text); None for a line that carries nothing."""
    first = raw[:1]
    if first in ("+", "-", " "):
        return first, raw[1:]
    if not raw.strip():
        return " ", ""  # a blank context line whose leading space was lost
    if first == "\t":
        return " ", raw  # a tab-indented context line whose leading space was lost
    if raw.startswith("\\ No newline"):
        return None  # git's marker; the final newline follows the file's own convention
    _fail(
        f"Invalid patch, line {ln}: in an Update File chunk every line starts with ' ' (unchanged), "
        f"'+' (added) or '-' (removed); got {raw!r}. If it is an unchanged line, prefix it with a space."
    )


def _parse_add(lines: list[_Line], i: int, path: str) -> tuple[FileOp, int]:
    ln = lines[i][0]
    content: list[str] = []
    blanks = 0
    j = i + 1
    while j < len(lines):
        row, raw = lines[j]
        if raw.startswith("+"):
            content.extend([""] * blanks)  # blank lines between '+' lines are empty lines of the file
            blanks = 0
            content.append(raw[1:])
        elif not raw.strip():
            blanks += 1
        elif (mk := _marker(raw)) is not None:
            if mk[0] == "end of file":
                j += 1  # harmless after an added file's lines: the file ends there anyway
            break
        else:
            _fail(f"Invalid patch, line {row}: every line of an added file starts with '+'; got {raw!r}.")
        j += 1
    text = "".join(line + "\n" for line in content)
    return FileOp("add", path, ln, content=text), j


def _parse_update(lines: list[_Line], i: int, path: str) -> tuple[FileOp, int]:
    ln = lines[i][0]
    j = i + 1
    while j < len(lines) and not lines[j][1].strip():
        j += 1
    new_path = None
    if j < len(lines) and (mk := _marker(lines[j][1])) and mk[0] == "move to":
        new_path = _clean_path(mk[1], lines[j][0])
        j += 1

    chunks: list[Chunk] = []
    headers: list[str] = []
    ops: list[tuple[str, str]] = []
    start: int | None = None  # patch line of the open chunk, None when no chunk is open
    after_eof = False

    def close(eof: bool) -> None:
        if not ops:
            where = f"'@@ {headers[-1]}'" if headers else "'@@'"
            _fail(f"Invalid patch, line {start}: the chunk {where} in {path} has no lines.")
        chunks.append(Chunk(tuple(headers), tuple(ops), eof, start))

    while j < len(lines):
        row, raw = lines[j]
        mk = _marker(raw)
        if mk is not None:
            if mk[0] == "end of file":
                if start is None or not ops:
                    _fail(f"Invalid patch, line {row}: '*** End of File' must follow the lines of a chunk.")
                close(True)
                headers, ops, start, after_eof = [], [], None, True
                j += 1
                continue
            if mk[0] == "move to":
                _fail(f"Invalid patch, line {row}: '*** Move to:' must come right after '*** Update File:'.")
            break
        if raw.startswith("@@"):
            text = _header_text(raw)
            if start is not None and not ops:
                if text:
                    headers.append(text)  # nested headers: '@@ class A' then '@@ def f(self):'
            else:
                if start is not None:
                    close(False)
                headers, ops, start = ([text] if text else []), [], row
            after_eof = False
            j += 1
            continue
        if start is None:
            if not raw.strip():
                j += 1
                continue
            if after_eof:
                _fail(f"Invalid patch, line {row}: after '*** End of File', start the next chunk with '@@'.")
            headers, ops, start = [], [], row  # the first chunk may omit its '@@' line
        if (op := _chunk_line(raw, row)) is not None:
            ops.append(op)
        j += 1
    if start is not None:
        close(False)
    if not chunks and new_path is None:
        _fail(f"Invalid patch, line {ln}: '*** Update File: {path}' has no chunks ('@@' then ' ', '-', '+' lines).")
    return FileOp("update", path, ln, new_path=None if new_path == path else new_path, chunks=tuple(chunks)), j


def parse_patch(text: str) -> list[FileOp]:
    """Parse a whole patch before anything is applied; PatchError on malformed input."""
    lines = _unwrap(text)
    ops: list[FileOp] = []
    i = 0
    while i < len(lines):
        ln, raw = lines[i]
        mk = _marker(raw)
        if not raw.strip():
            i += 1
            continue
        if mk is None or mk[0] not in _FILE_MARKERS:
            _fail(
                f"Invalid patch, line {ln}: expected a file section ('*** Add File: PATH', "
                f"'*** Update File: PATH' or '*** Delete File: PATH'), got {raw!r}."
            )
        name, arg = mk
        path = _clean_path(arg, ln)
        if name == "add file":
            op, i = _parse_add(lines, i, path)
        elif name == "delete file":
            op, i = FileOp("delete", path, ln), i + 1
            while i < len(lines) and not lines[i][1].strip():
                i += 1
            if i < len(lines) and _marker(lines[i][1]) is None:
                _fail(
                    f"Invalid patch, line {lines[i][0]}: '*** Delete File: {path}' takes no lines; "
                    "remove the lines after it."
                )
        else:
            op, i = _parse_update(lines, i, path)
        ops.append(op)
    if not ops:
        _fail("Invalid patch: it has no file sections ('*** Add File:', '*** Update File:' or '*** Delete File:').")
    seen: dict[str, int] = {}
    for op in ops:
        for path in (op.path, op.new_path):
            if path is None:
                continue
            if path in seen:
                _fail(
                    f"Invalid patch, line {op.patch_line}: {path} is touched twice in this patch "
                    f"(also at line {seen[path]}); put all changes to a file in one section."
                )
            seen[path] = op.patch_line
    return ops


# ---------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------

_LEVELS = ("exact", "ignoring trailing whitespace", "ignoring surrounding whitespace", "normalising Unicode punctuation")

_PUNCT = str.maketrans(
    {
        **{c: "-" for c in "\u2010\u2011\u2012\u2013\u2014\u2015\u2212"},
        **{c: "'" for c in "\u2018\u2019\u201a\u201b\u2032"},
        **{c: '"' for c in "\u201c\u201d\u201e\u201f\u2033"},
        **{c: " " for c in "\u00a0\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u202f\u205f\u3000"},
        **{c: "" for c in "\u200b\u200c\u200d\u2060\ufeff"},
        "\u2026": "...",
    }
)


def _key(level: int, line: str) -> str:
    if level == 0:
        return line
    if level == 1:
        return line.rstrip()
    if level == 2:
        return line.strip()
    return line.translate(_PUNCT).strip()


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def _width(line: str) -> int:
    return len(_indent(line).expandtabs(8))


class _File:
    """A decoded text file: its lines, their endings, and match keys computed on demand."""

    def __init__(self, data: bytes):
        text = data.decode("utf-8", "surrogateescape")
        self.bom = text.startswith("\ufeff")
        if self.bom:
            text = text[1:]
        parts = text.split("\n")
        last = parts.pop()
        self.lines: list[str] = []
        self.eols: list[str] = []
        for part in parts:
            crlf = part.endswith("\r")
            self.lines.append(part[:-1] if crlf else part)
            self.eols.append("\r\n" if crlf else "\n")
        if last:
            self.lines.append(last)
            self.eols.append("")
        self.final_newline = not self.eols or self.eols[-1] != ""
        self.nl = "\r\n" if self.eols.count("\r\n") > self.eols.count("\n") else "\n"
        end = len(self.lines)
        while end and not self.lines[end - 1].strip():
            end -= 1
        self.content_end = end  # trailing blank lines do not stop a chunk from ending the file
        self._keys: dict[int, list[str]] = {}

    def keys(self, level: int) -> list[str]:
        if level not in self._keys:
            self._keys[level] = [_key(level, line) for line in self.lines]
        return self._keys[level]

    def matches(self, pattern: list[str], level: int, lo: int, hi: int) -> list[int]:
        """Every start in [lo, hi) where `pattern` matches the file at `level`."""
        keys = self.keys(level)
        want = [_key(level, line) for line in pattern]
        m = len(want)
        return [i for i in range(max(lo, 0), min(hi, len(keys) - m + 1)) if keys[i] == want[0] and keys[i : i + m] == want]

    def header_hits(self, header: str, lo: int, hi: int) -> list[int]:
        """Lines in [lo, hi) an `@@` header names, at the strictest level that finds any.

        Last comes a prefix at a word boundary, because models write `@@ def total` for
        `def total(items):`; `def tot` never names it.
        """
        for level in range(len(_LEVELS)):
            want = _key(level, header)
            keys = self.keys(level)
            hits = [i for i in range(lo, hi) if keys[i] == want]
            if hits:
                return hits
        want = _key(3, header)
        keys = self.keys(3)
        return [
            i
            for i in range(lo, hi)
            if want
            and keys[i].startswith(want)
            and (len(keys[i]) == len(want) or not _is_word(want[-1]) or not _is_word(keys[i][len(want)]))
        ]

    def opens_block(self, at: int) -> bool:
        """Whether the next non-blank line after `at` is indented deeper than it."""
        base = _width(self.lines[at])
        for k in range(at + 1, len(self.lines)):
            if self.lines[k].strip():
                return _width(self.lines[k]) > base
        return False

    def block_end(self, at: int) -> int:
        """End (exclusive) of the indented block the line `at` opens; the file's end if it opens none.

        This is what `@@ def f():` means: the chunk belongs inside f, not in a later function.
        A closing line at the header's depth ends the block with it (`}`, `end`), unless it
        goes on to open the body, as the `):` of a signature split over several lines does.
        """
        n = len(self.lines)
        if not self.opens_block(at):
            return n
        base = _width(self.lines[at])
        for k in range(at + 1, n):
            line = self.lines[k].strip()
            if not line or _width(self.lines[k]) > base:
                continue
            if not (line.startswith(("}", ")", "]")) or line.split()[0] in ("end", "fi", "done", "esac")):
                return k
            if not line.endswith((":", "{")):
                return k + 1
        return n

    def numbered(self, lo: int, hi: int) -> str:
        return "\n".join(f"{k + 1:>6} | {self.lines[k][:200]}" for k in range(max(lo, 0), min(hi, len(self.lines))))


# ---------------------------------------------------------------------------------------
# Locating chunks
# ---------------------------------------------------------------------------------------

# (header line or None, first start, end exclusive, whether only the first match counts)
_Region = tuple[int | None, int, int, bool]


@dataclass(frozen=True)
class _Placed:
    pos: int
    ops: tuple[tuple[str, str], ...]
    level: int


def _old(ops: tuple[tuple[str, str], ...]) -> list[str]:
    return [text for op, text in ops if op != "+"]


def _show(lines: list[str]) -> str:
    return "\n".join(f"    {line}" for line in lines[:12]) + ("\n    …" if len(lines) > 12 else "")


def _header_regions(f: _File, chunk: Chunk, start: int, where: str) -> list[_Region]:
    """Where the chunk may start once its `@@` headers narrow the search.

    Each occurrence of a header opens a region that runs to its next occurrence or the
    end of the block it opens, whichever is first; nested headers narrow within it. In a
    block (`def f():`) the chunk must match once; after a line that opens none (a
    Markdown heading, a TOML table) the first match is the one the header points at.
    """
    regions: list[_Region] = [(None, start, len(f.lines), False)]
    for header in chunk.headers:
        narrowed: list[_Region] = []
        for _, lo, hi, _ in regions:
            hits = f.header_hits(header, lo, hi)
            for j, hit in enumerate(hits):
                end = hits[j + 1] if j + 1 < len(hits) else hi
                narrowed.append((hit, hit, min(end, f.block_end(hit)), not f.opens_block(hit)))
        if not narrowed:
            _fail(_header_missing(f, header, regions, start, where))
        regions = narrowed
    return regions


def _header_missing(f: _File, header: str, regions: list[_Region], start: int, where: str) -> str:
    lo = regions[0][1]
    msg = f"{where}: could not find the line '@@ {header}' (searched from line {lo + 1})."
    earlier = f.header_hits(header, 0, lo)
    if earlier:
        msg += (
            f"\nIt is at line {earlier[-1] + 1}, above where the search started: chunks must come in the "
            "order their lines appear in the file, and an inner '@@' line must follow the outer one."
        )
    close = _similar_lines(f, [header], 3)
    if close:
        msg += "\nLines in the file like it:\n" + "\n".join(f.numbered(k, k + 1) for k, _ in close)
    return msg


def _find(f: _File, old: list[str], regions: list[_Region], start: int, eof: bool) -> tuple[list[int], int] | None:
    """Candidate starts at the strictest level that finds any, or None.

    Every match in a region is a candidate (more than one is ambiguous), except in a
    region where only the first match counts.
    """
    m, n = len(old), len(f.lines)
    for level in range(len(_LEVELS)):
        found: set[int] = set()
        for hit, lo, hi, first_only in regions:
            first = lo if hit is None else max(start, hit - m + 1)  # the body may repeat the header line
            if eof:
                ms = f.matches(old, level, max(first, f.content_end - m), n - m + 1)
                if ms:
                    found.add(ms[-1])
            else:
                ms = f.matches(old, level, first, hi)
                found.update(ms[:1] if first_only else ms)
        if found:
            return sorted(found), level
    return None


def _trim_blank_context(ops: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The chunk without blank context lines at its ends, which models add as separators."""
    lo, hi = 0, len(ops)
    while lo < hi and ops[lo][0] == " " and not ops[lo][1].strip():
        lo += 1
    while hi > lo and ops[hi - 1][0] == " " and not ops[hi - 1][1].strip():
        hi -= 1
    return ops[lo:hi]


def _locate(f: _File, chunk: Chunk, start: int, where: str) -> _Placed:
    """Place one chunk at or after `start`, or raise a PatchError that says why not."""
    regions = _header_regions(f, chunk, start, where)
    if not _old(chunk.lines):
        if chunk.headers and not chunk.end_of_file:
            _fail(
                f"{where}: this chunk only adds lines and has no unchanged lines, so nothing says where "
                f"under '@@ {chunk.headers[-1]}' they go. Add the lines around the insertion as ' ' context lines."
            )
        return _Placed(len(f.lines), chunk.lines, 0)
    attempts = [chunk.lines]
    trimmed = _trim_blank_context(chunk.lines)
    if trimmed != chunk.lines and _old(trimmed):
        attempts.append(trimmed)
    for ops in attempts:
        found = _find(f, _old(ops), regions, start, chunk.end_of_file)
        if found is None:
            continue
        starts, level = found
        if len(starts) > 1:
            _fail(_ambiguous(f, _old(ops), starts, level, chunk, where))
        return _Placed(starts[0], ops, level)
    _fail(_missing(f, chunk, regions, start, where))


def _ambiguous(f: _File, old: list[str], starts: list[int], level: int, chunk: Chunk, where: str) -> str:
    lines = ", ".join(str(s + 1) for s in starts)
    how = "" if level == 0 else f" ({_LEVELS[level]})"
    msg = (
        f"{where}: the lines of this chunk match {len(starts)} places in the file{how}, starting at lines "
        f"{lines}; refusing to guess. Add unchanged lines that differ between these places, or an "
        "'@@ <line>' header naming the enclosing function or class, so that only one place matches."
    )
    if chunk.headers:
        msg += f" ('@@ {chunk.headers[-1]}' does not tell them apart.)"
    for s in starts[:4]:
        msg += f"\nAt line {s + 1}:\n" + f.numbered(s - 2, s + min(len(old), 3))
    return msg


def _missing(f: _File, chunk: Chunk, regions: list[_Region], start: int, where: str) -> str:
    old = _old(chunk.lines)
    msg = f"{where}: could not find the lines this chunk changes"
    msg += f" (searched from line {start + 1}):\n" if start else ":\n"
    msg += _show([f"{op}{text}" for op, text in chunk.lines if op != "+"])
    whole: list[_Region] = [(None, 0, len(f.lines), False)]
    anywhere = _find(f, old, whole, 0, False)
    if anywhere is not None:
        at = ", ".join(str(s + 1) for s in anywhere[0])
        if all(s < start for s in anywhere[0]):
            return msg + (
                f"\nThey are at line {at}, above where the previous chunk ended (line {start}): chunks must "
                "come in the order their lines appear in the file."
            )
        if chunk.end_of_file and _find(f, old, whole, 0, True) is None:
            return msg + f"\n'*** End of File' says they end the file, but they are at line {at} of {len(f.lines)}."
        if chunk.headers:
            hits = ", ".join(str(h + 1) for h, *_ in regions)
            return msg + (
                f"\nThey are at line {at}, which is not inside the block that '@@ {chunk.headers[-1]}' "
                f"(line {hits}) opens. Fix the '@@' line or drop it."
            )
    return msg + "\n" + _nearest(f, old, start)


_WORD_RE = re.compile(r"\w+")


def _similar_lines(f: _File, wanted: list[str], limit: int) -> list[tuple[int, int]]:
    """(file line, index in `wanted`) for the file lines most like a wanted line, best first.

    Bounded for large files: the three longest wanted lines are tried; file lines are
    ranked cheaply by the identifiers they share with it (what matters in code), or,
    when that finds nothing, by difflib's quick_ratio (which survives typos in the
    identifiers); only the top few are confirmed with difflib's ratio (≥ 0.6).
    """
    scored: dict[int, tuple[float, int]] = {}
    stripped = [line.strip() for line in f.lines[:50000]]
    words = [set(_WORD_RE.findall(line)) for line in stripped]
    tried = sorted((j for j, w in enumerate(wanted) if w.strip()), key=lambda j: -len(wanted[j].strip()))[:3]
    for j in tried:
        want = wanted[j].strip()
        want_words = set(_WORD_RE.findall(want))
        sm = difflib.SequenceMatcher(None, "", want)

        def confirm(ranked: list[tuple[float, int]]) -> bool:
            hit = False
            for _, k in ranked:
                sm.set_seq1(stripped[k])
                if (r := sm.ratio()) >= 0.6:
                    hit = True
                    if r > scored.get(k, (0.0, 0))[0]:
                        scored[k] = (r, j)
            return hit

        def quick(line: str) -> float:
            sm.set_seq1(line)
            return sm.quick_ratio() if sm.real_quick_ratio() >= 0.6 else 0.0

        by_words = ((len(want_words & w) / len(want_words | w), k) for k, w in enumerate(words) if want_words & w)
        if not confirm(heapq.nlargest(25, by_words)):
            confirm(heapq.nlargest(25, ((quick(line), k) for k, line in enumerate(stripped) if line)))
    best = sorted(scored, key=lambda k: (-scored[k][0], k))[:limit]
    return [(k, scored[k][1]) for k in best]


def _nearest(f: _File, old: list[str], start: int) -> str:
    """The few numbered lines of the file most like the chunk, and the first line that differs."""
    n, m = len(f.lines), len(old)
    if n == 0:
        return "The file is empty."
    keys = f.keys(3)
    want = [_key(3, line) for line in old]
    best: tuple[tuple[int, bool, int], int] | None = None
    for i in range(max(1, n - m + 1)):
        score = sum(1 for j, w in enumerate(want) if w and i + j < n and keys[i + j] == w)
        rank = (score, i >= start, -abs(i - start))
        if score and (best is None or rank > best[0]):
            best = (rank, i)
    if best is not None:
        at = best[1]
    else:
        close = _similar_lines(f, old, 1)
        if not close:
            return "No text in the file resembles these lines; read the file again before patching it."
        at = close[0][0] - close[0][1]
    lo, hi = max(0, at - 1), min(n, max(at, 0) + m + 1, max(at, 0) + 13)
    msg = f"Nearest text in the file (lines {lo + 1}-{hi}):\n{f.numbered(lo, hi)}"
    for j, line in enumerate(old):
        k = at + j
        if 0 <= k < n and keys[k] != want[j]:
            msg += f"\nLine {k + 1} is {f.lines[k]!r}, but the patch expects {line!r}."
            break
    return msg


# ---------------------------------------------------------------------------------------
# Applying
# ---------------------------------------------------------------------------------------


def _indent_map(ops: tuple[tuple[str, str], ...], matched: list[str]) -> Callable[[str], str | None] | None:
    """How to re-indent added lines, or None to write them as given.

    Only a shift that every non-blank matched line agrees on counts: a fixed prefix more or
    less, or the same depth in tabs instead of spaces (or the reverse).
    """
    pairs = [
        (_indent(have), _indent(text))
        for (op, text), have in zip([o for o in ops if o[0] != "+"], matched)
        if text.strip() and have.strip()
    ]
    if not pairs or all(have == given for have, given in pairs):
        return None
    have0, given0 = pairs[0]
    shifts: list[Callable[[str], str | None]] = []
    if have0.endswith(given0):
        extra = have0[: len(have0) - len(given0)]
        shifts.append(lambda ws, extra=extra: extra + ws)
    if given0.endswith(have0):
        surplus = given0[: len(given0) - len(have0)]
        shifts.append(lambda ws, surplus=surplus: ws[len(surplus) :] if ws.startswith(surplus) else None)
    for tabs_in_file in (True, False):
        file_ch, patch_ch = ("\t", " ") if tabs_in_file else (" ", "\t")
        if not all(set(h) <= {file_ch} and set(g) <= {patch_ch} for h, g in pairs):
            continue
        ratios = {len(g) / len(h) if tabs_in_file else len(h) / len(g) for h, g in pairs if h and g}
        if len(ratios) == 1 and (ratio := ratios.pop()) == int(ratio) and ratio > 0:
            width = int(ratio)
            if tabs_in_file:
                shifts.append(lambda ws, w=width: "\t" * (len(ws) // w) if set(ws) <= {" "} and len(ws) % w == 0 else None)
            else:
                shifts.append(lambda ws, w=width: " " * (len(ws) * w) if set(ws) <= {"\t"} else None)
    added = [text for op, text in ops if op == "+" and text.strip()]
    for shift in shifts:
        if all(shift(given) == have for have, given in pairs) and all(shift(_indent(a)) is not None for a in added):
            return shift
    return None


def _update(op: FileOp, data: bytes) -> bytes:
    f = _File(data)
    out: list[tuple[str, str]] = []  # (text, ending); "" ending = the file's own line ending
    cur = 0
    ends_file = False  # an End of File chunk changes the last line: Codex then ends it with a newline
    for k, chunk in enumerate(op.chunks, 1):
        where = f"{op.path}, chunk {k} of {len(op.chunks)} (patch line {chunk.patch_line})"
        placed = _locate(f, chunk, cur, where)
        ends_file = ends_file or (chunk.end_of_file and placed.ops[-1][0] != " ")
        out.extend(zip(f.lines[cur : placed.pos], f.eols[cur : placed.pos]))
        m = len(_old(placed.ops))
        shift = _indent_map(placed.ops, f.lines[placed.pos : placed.pos + m]) if placed.level >= 2 else None
        # Trailing context is checked but left in place, so the next chunk's leading context
        # may reuse those lines (models overlap neighbouring chunks' context).
        changed = [i for i, (kind, _) in enumerate(placed.ops) if kind != " "]
        at = placed.pos
        for kind, text in placed.ops[: changed[-1] + 1 if changed else 0]:
            if kind == " ":
                out.append((f.lines[at], f.eols[at]))  # the file's own text, not the patch's drifted copy
                at += 1
            elif kind == "-":
                at += 1
            else:
                if shift is not None and text.strip():
                    ws = _indent(text)
                    text = shift(ws) + text[len(ws) :]
                out.append((text, ""))
        cur = at
    out.extend(zip(f.lines[cur:], f.eols[cur:]))
    keep_missing = not f.final_newline and not ends_file
    pieces = ["\ufeff"] if f.bom else []
    for text, eol in out:
        pieces.append(text + (eol or f.nl))
    if keep_missing and out:
        pieces[-1] = out[-1][0]
    return _encode("".join(pieces), op.path)


def _encode(text: str, path: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as e:
        raise PatchError(f"{path}: the patch holds a character that cannot be written as UTF-8 ({e.reason}).") from None


def _read(read: Callable[[str], bytes | None], path: str) -> bytes | None:
    try:
        return read(path)
    except OSError as e:
        raise PatchError(f"{path}: cannot be read ({e.strerror or e}).") from None


def _apply_op(op: FileOp, read: Callable[[str], bytes | None]) -> FileChange:
    data = _read(read, op.path)
    if op.kind == "add":
        if data is not None:
            _fail(
                f"{op.path} (patch line {op.patch_line}): '*** Add File' but the file already exists; "
                "use '*** Update File' to change it."
            )
        return FileChange(op.path, "add", None, _encode(op.content or "", op.path))
    if data is None:
        verb = "Delete" if op.kind == "delete" else "Update"
        _fail(f"{op.path} (patch line {op.patch_line}): '*** {verb} File' but the file does not exist.")
    if op.kind == "delete":
        return FileChange(op.path, "delete", None, None)
    if op.new_path is not None and _read(read, op.new_path) is not None:
        _fail(
            f"{op.path} (patch line {op.patch_line}): '*** Move to: {op.new_path}' but that file already exists; "
            "refusing to overwrite it."
        )
    if not op.chunks:
        return FileChange(op.path, "update", op.new_path, data)  # a pure move keeps every byte
    if b"\x00" in data[:8192]:
        _fail(f"{op.path} (patch line {op.patch_line}): a binary file; apply_patch only edits text files.")
    return FileChange(op.path, "update", op.new_path, _update(op, data))


def apply_patch(text: str, read: Callable[[str], bytes | None]) -> tuple[list[FileChange], str]:
    """Compute every change a patch makes, all or nothing, and Codex's success summary.

    `read(path)` returns a workspace file's bytes, or None when it does not exist. Nothing
    is written here; on any failure in any file a PatchError says what to fix, and no
    change is returned.
    """
    try:
        ops = parse_patch(text)
    except PatchError as e:
        raise PatchError(f"{e}\n{_NOTHING_CHANGED}") from None
    changes: list[FileChange] = []
    problems: list[str] = []
    for op in ops:
        try:
            changes.append(_apply_op(op, read))
        except PatchError as e:
            problems.append(str(e))
    if problems:
        raise PatchError("\n\n".join(problems) + f"\n\n{_NOTHING_CHANGED}")
    summary = ["Success. Updated the following files:"]
    for kind, letter in (("add", "A"), ("update", "M"), ("delete", "D")):
        summary += [f"{letter} {c.new_path or c.path}" for c in changes if c.kind == kind]
    return changes, "\n".join(summary) + "\n"
