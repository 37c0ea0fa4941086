"""When two spellings of a shell command run the same check.

A model runs `npm test 2>&1`, `cd pkg && pytest -q` or `python -m pytest` where AGENTS.md says
`npm test`, `pytest` (in `pkg`) or `pytest`; a pass counts only when the run was the check.
Each command becomes the steps an exit status 0 vouches for: an `&&` chain vouches for every
step, `A; B` only for `B`; `cd` moves the directory; redirections are dropped; pipes and `||`
stay, since they hide a failing exit status.
"""

from __future__ import annotations

import posixpath
import re
import shlex
from dataclasses import dataclass

_REDIRECT = re.compile(r"^(?:\d*|&)(?:>>?|>&|<|&>>?)$")
_QUIET_FLAGS = re.compile(r"^(?:-q+|-v+|--quiet|--verbose|-x|--exitfirst|--no-header|--tb=\S+|--color=\S+|-b|"
                          r"--buffer)$")
_SHELLS = ("bash", "sh", "zsh", "dash")


@dataclass(frozen=True)
class Step:
    """One command a run vouches for: its directory (relative to the workspace root) and its text."""

    directory: str
    text: str


def script_of(command: list[str] | str) -> str:
    """The shell text of a `shell` call's argv (`["bash", "-lc", S]` is S) or of a string."""
    if isinstance(command, str):
        return command.strip()
    if len(command) == 3 and posixpath.basename(command[0]) in _SHELLS and command[1] in ("-lc", "-c", "-l", "-ic"):
        return command[2].strip()
    return shlex.join(command)


def _tokens(script: str) -> list[str] | None:
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    try:
        return list(lexer)
    except ValueError:  # an unclosed quote: not a command we can read
        return None


def _canonical(words: list[str]) -> str:
    """One spelling: redirections gone, `python3 -m pytest` as `pytest`, `npm run test` as `npm test`,
    pytest's and unittest's output flags dropped."""
    kept, i = [], 0
    while i < len(words):
        word = words[i]
        if _REDIRECT.match(word) or word in (">", ">>", "<", ">&", "&>"):
            if kept and kept[-1].isdigit() and i and words[i - 1] == kept[-1]:
                kept.pop()  # the `2` of `2>`: split off by the lexer
            i += 2
            continue
        kept.append(word)
        i += 1
    while kept and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", kept[0]) and kept[0].split("=")[0] in ("CI", "FORCE_COLOR",
                                                                                                  "NO_COLOR", "TERM"):
        kept.pop(0)  # display settings, not a different check
    if kept[:1] and re.fullmatch(r"python3?(\.\d+)?", kept[0]):
        kept[0] = "python"
    if kept[:3] == ["python", "-m", "pytest"]:
        kept = ["pytest", *kept[3:]]
    if kept[:2] in (["npm", "run"], ["yarn", "run"], ["pnpm", "run"]) and len(kept) > 2:
        kept = [kept[0], *kept[2:]] if kept[2] in ("test", "start") or kept[0] != "npm" else kept
    if kept[:1] == ["pytest"] or kept[:3] == ["python", "-m", "unittest"]:
        kept = [w for w in kept if not _QUIET_FLAGS.match(w)]
    return shlex.join(kept)


def steps(command: list[str] | str, directory: str = ".", root: str = "/workspace") -> list[Step]:
    """The steps a zero exit status of `command`, run in `directory` (relative to the workspace
    root `root`), vouches for; [] when it cannot be read."""
    tokens = _tokens(script_of(command))
    if tokens is None:
        return []
    found: list[Step] = []
    here, words = posixpath.normpath(directory or "."), []
    for token in [*tokens, None]:
        if token not in ("&&", ";", None):
            words.append(token)
            continue
        if words[:1] == ["cd"] and len(words) <= 2:
            target = words[1] if len(words) == 2 else "."
            if target == root or target.startswith(root + "/"):
                target = posixpath.relpath(target, root)
            here = posixpath.normpath(posixpath.join(here, target))
        elif words:
            found.append(Step(here, _canonical(words)))
        if token == ";":
            found = []  # only what follows the last `;` decides the exit status
        words = []
    return [s for s in found if s.text]


def same_check(ran: list[Step], check: list[Step], any_directory: bool = False) -> bool:
    """Whether a run vouching for `ran` ran every step of `check` (in its directory, unless
    `any_directory`)."""
    return bool(check) and all(any(r.text == c.text and (any_directory or r.directory == c.directory) for r in ran)
                               for c in check)
