"""Reading AGENTS.md: which files apply, and the commands they name as checks.

Real AGENTS.md files name their checks every way prose can: fenced code blocks with trailing
`# comments`, sentences ("Run `make lint` before submitting"), labelled bullets, tables, under
headings of any name, with placeholders (`<project_name>`), in subdirectories, with conditions
("after dependency changes") and warnings ("never run pytest on the host"). A broad reading
finds these *candidates* for the model to declare or dismiss; the harness runs none of them.
Only a team's explicit list — a `## Checks` heading or a ```checks block — is `required`: those
fixed commands the harness runs itself when the model did not.
"""

from __future__ import annotations

import bisect
import os
import posixpath
import re
from dataclasses import dataclass, replace
from pathlib import Path

from .commands import steps

NAME = "AGENTS.md"
_SKIP_DIRS = {"node_modules", "vendor", "target", "build", "dist", "venv", "__pycache__", "third_party"}

# The first word of a command that can be a check: test runners, linters, type checkers, builds.
_RUNNERS = set("""
pytest python python3 py tox nox uv uvx poetry pdm hatch pipenv pip pip3 ruff mypy pyright black isort flake8 pylint
bandit coverage pre-commit django-admin npm npx pnpm yarn bun bunx deno node tsc eslint prettier jest vitest mocha
playwright cypress ava xo biome turbo nx lerna make cmake ctest ninja meson bazel bazelisk buck2 just task cargo rustc
rustfmt go gofmt golangci-lint staticcheck mvn mvnw gradle gradlew ant sbt dotnet msbuild bundle bundler rake rspec
rubocop ruby rails composer php phpunit phpstan psalm mix elixir swift xcodebuild flutter dart tsx ts-node shellcheck
shfmt clang-format clang-tidy cppcheck valgrind lua luacheck busted stack cabal nix zig bats hadolint actionlint tflint
terraform helm kubectl docker podman
""".split())
_SHELL_FENCES = {"", "sh", "bash", "shell", "console", "zsh", "shell-session", "sh-session", "fish", "powershell",
                 "ps1", "pwsh", "cmd", "bat", "text", "txt", "checks"}
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
_STRICT_BULLET = re.compile(r"^\s*[-*+]\s+`([^`]+)`")
PLACEHOLDER = re.compile(r"<[A-Za-z_][^<>]*>|(?<![$\w])\{[A-Za-z_][\w .-]*\}|\bpath/to/[\w./-]*|\[[A-Za-z_][\w -]*\]"
                         r"|(?<![/.\w])\w+\.\.\.|\bYOUR_[A-Z_]+\b")
_WARNING = re.compile(r"\b(?:never|don'?t|do not|avoid|wrong|must not|should not|not run|will hang|hangs|"
                      r"instead of|deprecated|broken)\b", re.IGNORECASE)
_CONDITION = re.compile(r"\b(?:if|when|whenever|after|only|unless|once)\b", re.IGNORECASE)
_FORGET = re.compile(r"\b(?:never|don'?t|do not)\s+(?:forget|skip)\b", re.IGNORECASE)
_NOT_A_CHECK = re.compile(r"(?:^|\s)(?:install|add|update|upgrade|accept|review|publish|release|deploy|dev|serve|"
                          r"start|clean|init|--fix|--write|-w|fix|format|fmt|migrate|bump)(?=\s|$)|watch|"
                          r"\b(?:npm|pnpm|yarn|bun)\s+(?:ci|i)\b")
_IS_CHECK = re.compile(r"--check\b|--diff\b|--dry-run\b|--frozen-lockfile")
_DIRECTORY = re.compile(r"\b(?:from|inside|within)\s+(?:the\s+)?`?((?:\.{0,2}/)?[\w.-]+(?:/[\w.-]*)*)`?"
                        r"|\bin\s+(?:the\s+)?`?((?:\.{0,2}/)?[\w.-]+(?:/[\w.-]*)*)`?\s+(?:directory|folder|package)\b",
                        re.IGNORECASE)


@dataclass(frozen=True)
class AgentsFile:
    name: str  # as shown to the model: its path in the workspace, or "global AGENTS.md"
    directory: str  # where its commands run, relative to the workspace root
    text: str


@dataclass(frozen=True)
class Candidate:
    """A command an AGENTS.md names, as written (placeholders kept), with where it came from."""

    command: str
    file: str
    line: int
    source: str  # the text of that line
    directory: str  # where it runs, relative to the workspace root
    placeholders: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # conditions, warnings, and why it may not be a check
    required: bool = False  # listed under `## Checks` or in a ```checks block

    def describe(self) -> str:
        """One line for the model."""
        where = "" if self.directory == "." else f", in {self.directory}/"
        parts = [f"`{self.command}` — {self.file}:{self.line}{where}"]
        if self.placeholders:
            parts.append("fill in " + ", ".join(f"`{p}`" for p in self.placeholders))
        parts += list(self.notes)
        return "; ".join(parts)


def global_file() -> Path:
    """The user's own AGENTS.md, read before any repository's (the least specific of all)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "offload" / NAME


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace") if path.is_file() else None
    except OSError:
        return None


def instruction_files(workspace: Path, subdir: str = "") -> list[AgentsFile]:
    """The files whose text the model works under: the global one, then one per directory from
    the workspace root down to the task's directory, least specific first."""
    found = []
    if (text := _read(global_file())) is not None:
        found.append(AgentsFile("global " + NAME, ".", text))
    here = "."
    for part in ("", *Path(subdir).parts) if subdir else ("",):
        here = posixpath.normpath(posixpath.join(here, part))
        if (text := _read(workspace / here / NAME)) is not None:
            found.append(AgentsFile(posixpath.join(here, NAME) if here != "." else NAME, here, text))
    return found


def nested_files(workspace: Path, subdir: str = "") -> list[AgentsFile]:
    """The AGENTS.md files below the task's directory: they apply to changes under their own."""
    start = workspace / subdir if subdir else workspace
    found = []
    for top, dirs, files in os.walk(start):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _SKIP_DIRS)
        if NAME in files and Path(top) != start and (text := _read(Path(top) / NAME)) is not None:
            rel = Path(top).relative_to(workspace).as_posix()
            found.append(AgentsFile(f"{rel}/{NAME}", rel, text))
    return found


def _command_like(text: str) -> bool:
    """Whether a code span reads as a command a check could be: a known runner or a script."""
    words = text.strip().split()
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    if words[:1] == ["cd"] and "&&" in words:
        words = words[words.index("&&") + 1:]
    if not words:
        return False
    first = words[0].lstrip("$").strip()
    return (posixpath.basename(first) in _RUNNERS or first.startswith(("./", "bin/", "scripts/", "script/"))
            and len(first) > 2 and not first.endswith("/"))


def _notes(context: str, command: str, before: str = "") -> tuple[str, ...]:
    """What the text around a command says about running it: `context` is its sentence (or its
    code line's comment), `before` what precedes it (the sentence's start, or a comment line)."""
    notes = []
    context_warns = _WARNING.search(context) and "instead of" not in context.lower()
    if (_WARNING.search(before) or context_warns) and not _FORGET.search(f"{before} {context}"):
        notes.append(f"AGENTS.md warns: “{_clip(context if context_warns else before)}”")
    elif _CONDITION.search(context) or _CONDITION.search(before):
        notes.append(f"condition: “{_clip(context if _CONDITION.search(context) else before)}”")
    if _NOT_A_CHECK.search(command) and not _IS_CHECK.search(command):
        notes.append("changes files, installs or keeps running: likely not a check")
    return tuple(notes)


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(text.replace("`", "").replace("**", "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _directory(base: str, text: str) -> str:
    """Where a command runs: its file's directory, or a subdirectory the text names."""
    m = _DIRECTORY.search(text)
    path = m and (m.group(1) or m.group(2))
    if path and path.strip("./") and ("/" in path or m.group(2)) and not re.search(r"\.\w{1,5}$", path):
        return posixpath.normpath(posixpath.join(base, path))
    return base


def _sentence(line: str, start: int, end: int) -> tuple[str, str]:
    """The sentence of `line` holding the span at start:end, and its part before the span."""
    left = max(line.rfind(". ", 0, start), line.rfind("; ", 0, start), line.rfind("|", 0, start)) + 1
    stops = [i for i in (line.find(". ", end), line.find("; ", end), line.find("|", end)) if i >= 0]
    right = min(stops) if stops else len(line)
    return line[left:right].strip(" -*|"), line[left:start]


def candidates(files: list[AgentsFile]) -> list[Candidate]:
    """Every command the files name that could be a check, in file order, each once."""
    found: dict[tuple[str, str], Candidate] = {}
    for file in files:
        for cand in _read_file(file):
            found.setdefault((cand.command, cand.directory), cand)
    return list(found.values())


def _read_file(file: AgentsFile) -> list[Candidate]:
    out: list[Candidate] = []
    fence, lang, heading, intro, comment, pending = None, "", "", "", "", ""
    indented = blank = listed = False  # in an indented code block; after a blank line; in a list

    def code(number: int, line: str) -> None:
        """One line of a code block: a comment, part of a continued command, or a command."""
        nonlocal comment, pending
        if line.endswith("\\"):
            pending += line[:-1] + " "
            return
        line, pending = pending + line, ""
        if not line or line.startswith(("#", "//", "REM ")):
            comment = line  # a comment line speaks of the command after it
            return
        command, _, trailing = re.sub(r"^(?:\$|>|PS>|%)\s+", "", line).partition(" #")
        command = command.strip()
        required = lang == "checks" or heading == "checks"
        if required or _command_like(command):
            cand = _candidate(file, number, line, command, trailing.strip(), comment, f"{intro} {heading}", required)
            if trailing.strip() and not cand.notes:  # "# the unit tests": what the file says it is for
                cand = replace(cand, notes=(f"“{_clip(trailing)}”",))
            out.append(cand)
        comment = ""

    for number, raw in enumerate(file.text.splitlines(), 1):
        line = raw.strip()
        if fence:
            if line.startswith(fence) and not line.strip(fence[0]):
                fence = None
            elif lang in _SHELL_FENCES:
                code(number, line)
            continue
        if line and raw.startswith(("    ", "\t")) and (indented or blank) and not listed:
            indented, lang = True, ""  # a CommonMark indented code block
            code(number, line)
        elif m := _FENCE.match(raw):
            fence, lang, comment, pending = m.group(1), m.group(2).lower(), "", ""
        elif m := _HEADING.match(raw):
            heading, intro, listed = m.group(2).strip().lower().strip(":"), "", False
        elif line:
            intro, listed = line, bool(re.match(r"([-*+]|\d+[.)])\s", line)) or listed and raw[:1].isspace()
            strict = _STRICT_BULLET.match(raw) if heading == "checks" else None
            for span in _SPAN.finditer(raw):
                command = span.group(1).strip()
                required = bool(strict) and span.start(1) == strict.start(1)
                if required or _command_like(command):
                    context, before = _sentence(raw, span.start(), span.end())
                    out.append(_candidate(file, number, line, command, context, before,
                                          f"{before} {context} {heading}", required))
        if line:
            indented = indented and raw.startswith(("    ", "\t"))
        blank = not line
    return out


def _candidate(file: AgentsFile, number: int, source: str, command: str, context: str, before: str,
               where: str, required: bool) -> Candidate:
    placeholders = tuple(dict.fromkeys(PLACEHOLDER.findall(command)))
    return Candidate(command, file.name, number, source, _directory(file.directory, where),
                     placeholders, _notes(context, command, before), required and not placeholders)


# ---- declarations ------------------------------------------------------------------------

def _normal(text: str) -> str:
    return " ".join(text.replace("`", " ").replace("**", " ").split())


def find_source(files: list[AgentsFile], source: str) -> tuple[AgentsFile, int] | None:
    """The file and line where `source` (quoted from it, whitespace and markup aside) is."""
    wanted = _normal(source)
    if len(wanted) < 2:
        return None
    for file in files:
        starts, numbers, words = [], [], []
        position = 0
        for number, line in enumerate(file.text.splitlines(), 1):
            for word in _normal(line).split():
                starts.append(position)
                numbers.append(number)
                words.append(word)
                position += len(word) + 1
        at = " ".join(words).find(wanted)
        if at >= 0:
            return file, numbers[bisect.bisect_right(starts, at) - 1]
    return None


def templates(source: str) -> list[str]:
    """The commands a quoted source names: its code spans, or the text itself (a code line)."""
    spans = _SPAN.findall(source)
    if spans:
        return [s.strip() for s in spans]
    text = re.sub(r"^(?:\$|>)\s+", "", source.strip()).partition(" #")[0]
    return [text.strip()] if text.strip() else []


def fits(template: str, command: str) -> bool:
    """Whether `command` is `template` with its placeholders filled (and spelled any equivalent way)."""
    marks: list[str] = []

    def mark(m: re.Match) -> str:
        marks.append("optional" if m.group(0).startswith("[") else "value")
        return f"PLACEHOLDER{len(marks) - 1}X"

    wanted = steps(PLACEHOLDER.sub(mark, template))
    given = steps(command)
    if not wanted or len(wanted) != len(given):
        return False
    for w, g in zip(wanted, given):
        pattern = re.escape(w.text)
        for i, kind in enumerate(marks):
            pattern = (pattern.replace(rf"\ PLACEHOLDER{i}X", r"(?:\ \S+)*").replace(rf"PLACEHOLDER{i}X", r"\S*")
                       if kind == "optional" else pattern.replace(f"PLACEHOLDER{i}X", r"\S+"))
        if not re.fullmatch(pattern, g.text):
            return False
    return True
