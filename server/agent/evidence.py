"""The evidence behind a final message: numbered output chunks, and a check of every citation.

A reviewer trusts a summary only as far as its citations hold, so the harness checks them: each
`path:Lstart-Lend` must name lines that exist in the final tree, each chunk `[cN]` must be an
output the task really produced, and a check claimed as passed must cite a command that exited 0.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

_STATUS = re.compile(r"\b(passed|pass|ok|failed|fail|failing|blocked|environment)\b", re.IGNORECASE)
_CANON = {"pass": "passed", "ok": "passed", "fail": "failed", "failing": "failed", "environment": "blocked"}
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_FILE_REF = re.compile(r"(?<![\w/.:@-])(?P<path>[\w.-]+(?:/[\w.-]+)*):(?P<L>L?)(?P<start>\d+)"
                       r"(?:-L?(?P<end>\d+))?(?::\d+)?(?!\w)")
_CHUNK_REF = re.compile(r"(?:[\[(]|\bchunks?:?\s*)\s*(c\d+(?:\s*(?:,|;|and)\s*c\d+)*)\s*(?=[\])]|\b)", re.IGNORECASE)


class Chunks:
    """The citable outputs of a task, numbered c1, c2, … in the order they were produced.

    A follow-up starts from the `earlier` runs' chunks (id → meta) and numbers on after the
    highest of them, so that every id names one output in the task's whole log.
    """

    def __init__(self, earlier: Iterable[tuple[str, dict]] = ()) -> None:
        self.meta: dict[str, dict] = dict(earlier)
        self.last = max((int(c[1:]) for c in self.meta if re.fullmatch(r"c\d+", c)), default=0)

    def add(self, **meta) -> str:
        self.last += 1
        chunk = f"c{self.last}"
        self.meta[chunk] = meta
        return chunk


def _prose(message: str) -> str:
    """The message without fenced code, where `a:1` is code, not a citation."""
    return _FENCE.sub("", message)


def chunk_refs(text: str) -> list[str]:
    """The chunk ids `text` cites, as `[c3]`, `[c3, c4]`, `(c3)` or `chunk c3`, in order."""
    return [c.lower() for m in _CHUNK_REF.finditer(text) for c in re.findall(r"c\d+", m.group(1), re.IGNORECASE)]


def file_refs(message: str) -> list[dict]:
    """Each distinct `path:Lstart-Lend` (or `path:L5`, `path:5-9`) the message cites."""
    refs, seen = [], set()
    for m in _FILE_REF.finditer(_prose(message)):
        path, start = m["path"], int(m["start"])
        if not m["L"] and "." not in path and "/" not in path or re.fullmatch(r"[\d.]+", path):
            continue  # `12:30`, `localhost:8000`, `127.0.0.1:80`: not files
        if m.group(0) not in seen:
            seen.add(m.group(0))
            refs.append({"citation": m.group(0), "path": path, "start": start, "end": int(m["end"] or start)})
    return refs


def testing_checks(message: str) -> list[dict]:
    """Each line of the `## Testing` section with the status it claims and the chunks it cites."""
    checks, in_testing = [], False
    for line in _prose(message).splitlines():
        if line.lstrip().startswith("#"):
            in_testing = "testing" in line.lower()
            continue
        if in_testing and line.strip():
            statuses = [_CANON.get(m.lower(), m.lower()) for m in _STATUS.findall(line)]
            status = ("failed" if "failed" in statuses else "blocked" if "blocked" in statuses
                      else "passed" if statuses else "unknown")
            checks.append({"check": line.strip().lstrip("-* ").strip(), "status": status, "chunks": chunk_refs(line)})
    return checks


def checks_passed(checks: list[dict]) -> bool:
    """True when at least one check ran and none failed."""
    return bool(checks) and all(c["status"] == "passed" for c in checks)


def check_citations(message: str, read_file: Callable[[str], bytes | None], chunks: Chunks) -> list[dict]:
    """Every citation of the final message, each `ok` or flagged with the `reason`.

    `read_file(path)` reads the final tree (None when the file does not exist; it may raise
    for a path outside the workspace).
    """
    results = []
    for ref in file_refs(message):
        try:
            data = read_file(ref["path"])
        except Exception as e:  # a path the sandbox refuses (outside the workspace) is a bad citation
            data, why = None, f"cannot be read: {e}"
        else:
            why = "no such file in the final tree"
        if data is not None:
            lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
            why = ("" if 1 <= ref["start"] <= ref["end"] <= lines
                   else f"lines {ref['start']}-{ref['end']} are outside the file's {lines} lines")
        results.append({"kind": "file", **ref, "ok": not why, **({"reason": why} if why else {})})
    known = ", ".join(chunks.meta) or "none"
    for chunk in dict.fromkeys(chunk_refs(_prose(message))):
        why = "" if chunk in chunks.meta else f"no such chunk (the task's chunks: {known})"
        results.append({"kind": "chunk", "citation": chunk, "ok": not why, **({"reason": why} if why else {})})
    for check in testing_checks(message):
        why = "" if check["chunks"] else "cites no chunk"
        if check["status"] == "passed":
            failing = [c for c in check["chunks"] if chunks.meta.get(c, {}).get("exit_code") not in (None, 0)]
            if failing:
                why = "claims passed, but " + ", ".join(f"{c} exited {chunks.meta[c]['exit_code']}" for c in failing)
        results.append({"kind": "check", "citation": check["check"], "status": check["status"],
                        "chunks": check["chunks"], "ok": not why, **({"reason": why} if why else {})})
    return results
