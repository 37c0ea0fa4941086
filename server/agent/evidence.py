"""The evidence behind a final message: numbered output chunks, and a check of every citation.

A reviewer trusts a summary only as far as its citations hold, so the harness checks them: each
`path:Lstart-Lend` must name lines that exist in the final tree, each chunk `[cN]` must be an
output the task really produced, and a check claimed as passed must cite its own run: the output
of a command equivalent to the check, which exited 0, after the last edit. Anything else is
*unverified*, and "passed" means proven everywhere: the task's checks, best-of-N, the exit code.

An edit is any output that changed the workspace's files: an apply_patch, and a shell command
that changed files (`sed -i`, a formatter, a script that writes, `git checkout -- f`; the tools
record which). A command that changed files and ran the check as its last step proves it: the
check ran on the edited files (`sed -i … && pytest`, or a suite that writes its own report),
while one that ran the check before a later step proves nothing (`pytest && sed -i …`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

from .checks import Check
from .commands import Step, same_check, steps

_STATUS = re.compile(r"\b(passed|pass|ok|failed|fail|failing|blocked|environment)\b", re.IGNORECASE)
_CANON = {"pass": "passed", "ok": "passed", "fail": "failed", "failing": "failed", "environment": "blocked"}
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_FILE_REF = re.compile(r"(?<![\w/.:@-])(?P<path>[\w.-]+(?:/[\w.-]+)*):(?P<L>L?)(?P<start>\d+)"
                       r"(?:-L?(?P<end>\d+))?(?::\d+)?(?!\w)")
_CHUNK_REF = re.compile(r"(?:[\[(]|\bchunks?:?\s*)\s*(c\d+(?:\s*(?:,|;|and)\s*c\d+)*)\s*(?=[\])]|\b)", re.IGNORECASE)
_LINE_COMMAND = re.compile(r":\s|\s[—–-]\s|\s\(|\s\[|\s(?:passed|pass|ok|failed|fail|failing|blocked)\b", re.IGNORECASE)


class Chunks:
    """The citable outputs of a task, numbered c1, c2, … in the order they were produced, with what
    each was: a command run (the steps it vouches for, its exit code) or another tool's output.

    A follow-up starts from the `earlier` runs' conversation, in order: their outputs (items with a
    `chunk`), numbering on after the highest, so that every id names one output in the task's whole
    log; an item marked `rebuilt` (the workspace was rebuilt after it, without rejected hunks or an
    interrupted run's edits) counts as an edit, so that the outputs before it prove no check.
    """

    def __init__(self, earlier: Iterable[dict] = (), root: str = "/workspace") -> None:
        self.meta: dict[str, dict] = {}
        self.root = root
        self.last = self.last_edit = 0
        self.rebuilt = False  # whether the last edit is a rebuilt workspace rather than an edit's output
        for item in earlier:
            if item.get("chunk"):
                self._record(item["chunk"], item)
            if item.get("rebuilt"):
                self.last_edit, self.rebuilt = self.last, True

    def add(self, **meta) -> str:
        """Records the next output: `call`, `name`, and for a command `exit_code`, `command` and
        `directory` (relative to the workspace root); for an edit (a patch, or a command that
        changed files), the `files` it changed."""
        return self._record(f"c{self.last + 1}", meta)

    def _record(self, chunk: str, meta: dict) -> str:
        number = _number(chunk)
        ran = meta.get("command") is not None and meta.get("exit_code") is not None
        command = meta.get("command")
        self.meta[chunk] = {"call": meta.get("call") or meta.get("call_id"), "name": meta.get("name"),
                            "exit_code": meta.get("exit_code"),
                            "steps": steps(command, meta.get("directory") or ".", self.root) if ran else None,
                            # as a model writes a command it ran: the arguments joined, unquoted
                            "plain": _plain(" ".join(command) if isinstance(command, list) else command) if ran else "",
                            "files": list(meta.get("files") or [])}
        self.last = max(self.last, number)
        if meta.get("files") and number > self.last_edit:
            self.last_edit, self.rebuilt = number, False
        return chunk

    def after_edit(self, chunk: str, check: list[Step] | None = None, any_directory: bool = False) -> bool:
        """Whether `chunk` ran after the last edit, or is the command that made it and ran `check` as
        its last step (so the check ran on the edited files)."""
        number = _number(chunk)
        if number != self.last_edit or self.rebuilt or check is None:
            return number > self.last_edit
        return self._ran_last(chunk, check, any_directory)

    def _ran_last(self, chunk: str, check: list[Step], any_directory: bool) -> bool:
        """Whether nothing ran after `check` in the command of `chunk`: its last step is one of the check's."""
        ran = self.meta[chunk]["steps"]
        return bool(ran) and any(ran[-1].text == c.text and (any_directory or ran[-1].directory == c.directory)
                                 for c in check)

    def latest_run(self, check: list[Step]) -> str | None:
        """The last chunk since the last edit that ran `check` in its directory, whatever its exit code."""
        runs = [c for c, m in self.meta.items()
                if m["steps"] and self.after_edit(c, check) and same_check(m["steps"], check)]
        return max(runs, key=_number, default=None)


def _plain(text: str) -> str:
    return " ".join(text.split())


def _number(chunk: str) -> int:
    return int(chunk[1:]) if re.fullmatch(r"c\d+", chunk) else 0


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


def claimed_command(line: str) -> str:
    """The command a Testing line names: its first code span, else its text before the status."""
    if m := re.search(r"`([^`]+)`", line):
        return m.group(1).strip()
    text = re.sub(r"^[^\w./]+", "", line)
    return _LINE_COMMAND.split(text, maxsplit=1)[0].strip()


def _disproof(chunk: str, command: str, claimed: list[Step], any_directory: bool, chunks: Chunks) -> str:
    """Why `chunk` does not prove the claimed command passed after the last edit; "" when it does."""
    meta = chunks.meta.get(chunk)
    if meta is None:
        return f"{chunk} is no output of this task"
    if not meta["steps"]:
        return f"{chunk} is the output of {meta['name'] or 'a tool'}, not of a command run"
    if not same_check(meta["steps"], claimed, any_directory) and _plain(command) != meta["plain"]:
        ran = " && ".join(s.text for s in meta["steps"])
        return f"{chunk} ran `{ran}`, not `{' && '.join(s.text for s in claimed)}`"
    if meta["exit_code"] != 0:
        return f"{chunk} exited {meta['exit_code']}"
    if chunks.after_edit(chunk, claimed, any_directory):
        return ""
    if chunks.rebuilt:
        return f"{chunk} ran before the workspace was rebuilt for a follow-up (without rejected hunks or lost edits)"
    if _number(chunk) == chunks.last_edit:  # this command changed files, and ran something after the check
        later = " && ".join(s.text for s in meta["steps"][_last_matched(meta["steps"], claimed, any_directory) + 1:])
        return (f"{chunk} changed files ({_listed(meta['files'])}) and ran `{later}` after the check, "
                "so the check may not have seen them")
    return f"{chunk} ran before the last edit (c{chunks.last_edit})"


def _last_matched(ran: list[Step], check: list[Step], any_directory: bool) -> int:
    """The index of the last step of `ran` that is one of the check's."""
    return max((i for i, r in enumerate(ran)
                if any(r.text == c.text and (any_directory or r.directory == c.directory) for c in check)), default=-1)


def _listed(files: list[str], most: int = 5) -> str:
    return ", ".join(files[:most]) + (f" and {len(files) - most} more" if len(files) > most else "")


def prove_line(check: dict, chunks: Chunks, subdir: str = ".") -> str:
    """Why a Testing line claiming passed is not proven by any chunk it cites; "" when one proves it."""
    if not check["chunks"]:
        return "cites no chunk"
    command = claimed_command(check["check"])
    claimed = steps(command, subdir, chunks.root)
    if not command:
        return "names no command"
    reasons = [_disproof(c, command, claimed, not re.search(r"\bcd\b", command), chunks) for c in check["chunks"]]
    return "" if "" in reasons else "claims passed, but " + "; ".join(reasons)


def check_citations(message: str, read_file: Callable[[str], bytes | None], chunks: Chunks,
                    subdir: str = ".") -> list[dict]:
    """Every citation of the final message, each `ok` or flagged with the `reason`.

    `read_file(path)` reads the final tree (None when the file does not exist; it may raise
    for a path outside the workspace). A Testing line claiming passed holds only when proven.
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
        why = prove_line(check, chunks, subdir) if check["status"] == "passed" else (
            "" if check["chunks"] else "cites no chunk")
        results.append({"kind": "check", "citation": check["check"], "status": check["status"],
                        "chunks": check["chunks"], "ok": not why, **({"reason": why} if why else {})})
    return results


def task_checks(citations: list[dict], must_run: list[Check], dismissals: list[dict], chunks: Chunks) -> list[dict]:
    """The task's checks as the record keeps them: each Testing line with its proven status (a pass
    that is not proven is "unverified"), each check AGENTS.md asked for with its last run since the
    last edit ("not run" when there is none), and each dismissal with its reason."""
    found = []
    for c in citations:
        if c["kind"] == "check":
            status = "unverified" if c["status"] == "passed" and not c["ok"] else c["status"]
            found.append({"check": c["citation"], "kind": "testing", "status": status, "claimed": c["status"],
                          "chunks": c["chunks"], **({"reason": c["reason"]} if "reason" in c else {})})
    for check in must_run:
        chunk = chunks.latest_run(check.steps)
        status = "not run" if chunk is None else "passed" if chunks.meta[chunk]["exit_code"] == 0 else "failed"
        if any(f["status"] == status and chunk in f["chunks"] for f in found):
            continue  # a Testing line reports this run already
        found.append({"check": check.label(), "kind": check.kind, "status": status, "chunks": [chunk] if chunk else [],
                      "source": f"{check.file}:{check.line}",
                      **({"reason": "no run of it since the last edit"} if chunk is None else {})})
    found += [{"check": d["check"], "kind": "dismissed", "status": "dismissed", "chunks": [],
               "source": f"{d['file']}:{d['line']}", "reason": d["reason"]} for d in dismissals]
    return found


def checks_passed(checks: list[dict]) -> bool:
    """True when at least one check is proven to have passed, and every other one did too
    (dismissals aside)."""
    counted = [c for c in checks if c["status"] != "dismissed"]
    return bool(counted) and all(c["status"] == "passed" for c in counted)


def checks_problem(checks: list[dict]) -> str:
    """Why the checks do not count as passed, in a line; "" when they do."""
    if checks_passed(checks):
        return ""
    counted = [c for c in checks if c["status"] != "dismissed"]
    if not counted:
        return "no check was reported: the final message has no Testing line and no check was declared"
    bad = [f"{c['check']} — {c['status']}" + (f": {c['reason']}" if c.get("reason") else "")
           for c in counted if c["status"] != "passed"]
    return "; ".join(bad[:3]) + (f"; and {len(bad) - 3} more" if len(bad) > 3 else "")
