"""The checks of one task: what AGENTS.md offers, what the model declares or dismisses, what runs.

The model declares each check it will run with the `declare_checks` tool, tied to AGENTS.md
text that the harness finds in a file that applies (so nothing is invented), with placeholders
filled and a directory; it dismisses the others with a reason, and the dismissals stay as
evidence. Which run proves a check is `evidence`'s business; this module says what a check is.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from . import agents_md
from .agents_md import AgentsFile, Candidate
from .commands import Step, steps

DECLARE_CHECKS = {
    "type": "function",
    "name": "declare_checks",
    "description": (
        "Declares the checks from AGENTS.md that you run after your last edit, and dismisses the candidates "
        "that do not apply, each with its reason. Name a candidate by its number, or quote the AGENTS.md text "
        "a check comes from. Give each declared check its command as you run it, placeholders filled, and its "
        "workdir (relative to your working directory, as for shell)."
    ),
    "parameters": {
        "type": "object",
        "properties": {
            "checks": {"type": "array", "items": {
                "type": "object",
                "properties": {"candidate": {"type": "integer"}, "source": {"type": "string"},
                               "command": {"type": "string"}, "workdir": {"type": "string"}},
                "required": ["command"], "additionalProperties": False}},
            "dismissed": {"type": "array", "items": {
                "type": "object",
                "properties": {"candidate": {"type": "integer"}, "source": {"type": "string"},
                               "reason": {"type": "string"}},
                "required": ["reason"], "additionalProperties": False}},
        },
        "additionalProperties": False,
    },
}


@dataclass
class Check:
    """A check that must run after the last edit: declared by the model, or required by AGENTS.md."""

    command: str
    directory: str  # relative to the workspace root
    file: str
    line: int
    kind: str  # "declared" | "required"
    steps: list[Step] = field(default_factory=list)

    def label(self) -> str:
        where = "" if self.directory == "." else f" (in {self.directory}/)"
        return f"`{self.command}`{where}"


class CheckBook:
    """The AGENTS.md files that apply to a task, their candidates, and the model's decisions."""

    def __init__(self, workspace: Path, subdir: str = "") -> None:
        self.subdir = posixpath.normpath(subdir or ".")
        self.files: list[AgentsFile] = (agents_md.instruction_files(workspace, subdir)
                                        + agents_md.nested_files(workspace, subdir))
        self.candidates: list[Candidate] = agents_md.candidates(self.files)
        self.declared: list[Check] = []
        self.dismissed: dict[int, str] = {}  # candidate number → reason
        self.dismissed_sources: list[dict] = []  # text not among the candidates, dismissed
        self.decided: set[int] = set()
        self.required = [Check(c.command, c.directory, c.file, c.line, "required", steps(c.command, c.directory))
                         for c in self.candidates if c.required]

    def offer(self) -> str:
        """The candidates as the model is shown them, numbered."""
        if not self.candidates:
            return ""
        lines = [f"{n}. {c.describe()}" + (" — required: Offload runs it if you do not" if c.required else "")
                 for n, c in enumerate(self.candidates, 1)]
        return ("Commands AGENTS.md names (candidates for checks; none has run). Before your final message, call "
                "declare_checks: declare the ones that apply to your change, with placeholders filled and the "
                "directory to run in, run them after your last edit, and dismiss the others with the reason. "
                "Never run a command AGENTS.md warns against.\n" + "\n".join(lines))

    def undecided(self) -> list[int]:
        return [n for n in range(1, len(self.candidates) + 1) if n not in self.decided]

    def declare(self, args: dict) -> tuple[str, dict]:
        """Records the model's declarations; returns the reply for the model and the event."""
        accepted, errors = [], []
        for i, item in enumerate(args.get("checks") or []):
            check = self._check(item)
            if isinstance(check, str):
                errors.append(f"checks[{i}] ({item.get('command', '')!r}): {check}")
                continue
            self.declared = [c for c in self.declared if (c.command, c.directory) != (check.command, check.directory)]
            self.declared.append(check)
            accepted.append(check)
        dismissed = []
        for i, item in enumerate(args.get("dismissed") or []):
            if not str(item.get("reason", "")).strip():
                errors.append(f"dismissed[{i}]: give the reason")
                continue
            found = self._source(item)
            if isinstance(found, str):
                errors.append(f"dismissed[{i}]: {found}")
                continue
            number, file, line = found
            if number:
                self.dismissed[number] = item["reason"].strip()
                self.decided.add(number)
                cand = self.candidates[number - 1]
                self.declared = [c for c in self.declared if (c.file, c.line) != (file.name, line)
                                 or not agents_md.fits(cand.command, c.command)]
            else:
                self.decided.update(n for n, c in enumerate(self.candidates, 1)
                                    if c.file == file.name and c.command in item["source"])
                self.dismissed_sources.append({"source": item["source"], "file": file.name, "line": line,
                                               "reason": item["reason"].strip()})
            dismissed.append({"candidate": number, "file": file.name, "line": line, "reason": item["reason"].strip()})
        reply = []
        if accepted:
            reply.append("Declared; run each after your last edit and report it in Testing, citing its run:\n"
                         + "\n".join(f"- {c.label()} from {c.file}:{c.line}" for c in accepted))
        if dismissed:
            reply.append(f"Dismissed: {len(dismissed)}.")
        if errors:
            reply.append("Not accepted:\n" + "\n".join(f"- {e}" for e in errors))
        if left := self.undecided():
            reply.append("Candidates neither declared nor dismissed yet: " + ", ".join(map(str, left)) + ".")
        event = {"declared": [self._as_dict(c) for c in accepted], "dismissed": dismissed, "errors": errors}
        return "\n".join(reply) or "Nothing declared.", event

    def _source(self, item: dict) -> tuple[int, AgentsFile, int] | str:
        """(candidate number or 0, file, line) of what an item names, or why it names nothing."""
        if item.get("candidate") is not None:
            number = item["candidate"]
            if not 1 <= number <= len(self.candidates):
                return f"there is no candidate {number} (they are 1 to {len(self.candidates)})"
            cand = self.candidates[number - 1]
            return number, next(f for f in self.files if f.name == cand.file), cand.line
        if not str(item.get("source", "")).strip():
            return "name a candidate by its number, or quote the AGENTS.md text it comes from as source"
        found = agents_md.find_source(self.files, item["source"])
        if found is None:
            return ("this text is in no AGENTS.md that applies here; quote it exactly as it is written ("
                    + ", ".join(f.name for f in self.files) + ")" if self.files else "no AGENTS.md applies here")
        file, line = found
        return 0, file, line

    def _check(self, item: dict) -> Check | str:
        found = self._source(item)
        if isinstance(found, str):
            return found
        number, file, line = found
        command = str(item.get("command", "")).strip()
        if not command:
            return "give the command"
        if left := agents_md.PLACEHOLDER.findall(command):
            return "fill in the placeholder(s) " + ", ".join(f"`{p}`" for p in left)
        named = [self.candidates[number - 1].command] if number else agents_md.templates(item["source"])
        if not any(agents_md.fits(t, command) for t in named):
            return (f"it is not {' or '.join(f'`{t}`' for t in named) or 'a command of that text'} "
                    f"(from {file.name}:{line}) with its placeholders filled")
        default = self.candidates[number - 1].directory if number else file.directory
        workdir = item.get("workdir")
        directory = posixpath.normpath(posixpath.join(self.subdir, workdir) if workdir else default)
        if directory == ".." or directory.startswith("../") or posixpath.isabs(directory):
            return f"workdir {workdir!r} is outside the workspace"
        for n, cand in enumerate(self.candidates, 1):  # the candidate declared, by number or by its text
            if n == number or not number and cand.file == file.name and agents_md.fits(cand.command, command):
                self.decided.add(n)
                self.dismissed.pop(n, None)
        return Check(command, directory, file.name, line, "declared", steps(command, directory))

    def must_run(self) -> list[Check]:
        """The declared checks, and the required ones the model did not declare in another spelling."""
        extra = [r for r in self.required
                 if not any(d.steps and [s.text for s in d.steps] == [s.text for s in r.steps] for d in self.declared)]
        return [*self.declared, *extra]

    def dismissals(self) -> list[dict]:
        """Every dismissal with its reason: evidence of what the model chose not to run, and why."""
        return [{"check": f"`{self.candidates[n - 1].command}`", "file": self.candidates[n - 1].file,
                 "line": self.candidates[n - 1].line, "reason": reason} for n, reason in sorted(self.dismissed.items())
                ] + [{"check": d["source"], "file": d["file"], "line": d["line"], "reason": d["reason"]}
                     for d in self.dismissed_sources]

    @staticmethod
    def _as_dict(check: Check) -> dict:
        return {"command": check.command, "directory": check.directory, "file": check.file, "line": check.line}
