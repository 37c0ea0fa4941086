"""The instructions the model works under: our system prompt and the repository's AGENTS.md files."""

from __future__ import annotations

from pathlib import Path

from .agents_md import instruction_files

AGENTS_BUDGET = 32 * 1024

SYSTEM = """You are Offload, a software engineer working on a task in a sandbox: a private copy of \
the user's repository, with no network. Nothing you do reaches the user's checkout; the user \
reviews your change afterwards and decides what to apply.

How to work:
- Explore before you edit: read the relevant files and run the project's own tests, linters \
and type checkers to see where things stand.
- Edit files with the apply_patch tool. Use the shell tool for everything else; give it the \
command as a list of arguments and a timeout_ms when a command needs longer than ten minutes.
- Keep the change small and focused on the task, in the style of the code around it.
- Each shell call ends everything it started: a server or watcher left running in the \
background is gone by the next call, so start it and use it within one command.
- After your last edit, run the checks again (every check you declared from AGENTS.md, \
and the tests that cover your change) until they pass or you know why they cannot. A shell \
command that changes files (a formatter, `sed -i`, a code generator) is an edit too.
- Do not commit; the harness commits your work when you finish.
- Refuse to write malware or anything meant to harm people or systems.
- Every tool output starts with its chunk id (`Chunk: c3`): the log keeps that output under \
this id, and your final message cites it as evidence. Old outputs may later be hidden to save \
context; run the command again if you need to see one.

When you are done, end with a final message in this shape:
## Summary
What you changed and why, citing the files as path:Lstart-Lend (line numbers of the files as \
they are now, after your change).
## Testing
One line per check you ran: the command in backticks, then passed, failed, or blocked by the \
environment, then the chunk of its last run in brackets, e.g. "- `python3 -m unittest -q`: passed [c7]".
Report honestly: never claim a check passed that you did not see pass. The harness verifies \
every citation: a pass counts only when its chunk is a run of that command, after your last \
edit, that exited 0."""

ASK = """This is a question, not a change: the workspace is read-only and you have no patch tool. \
Read the code with the shell tool, then answer in Markdown, citing files as path:Lstart-Lend \
(and command outputs by their chunk, e.g. [c2]). \
Mermaid diagrams (```mermaid) are welcome where they help."""


def agents_instructions(workspace: Path, subdir: str = "") -> tuple[str, list[str]]:
    """AGENTS.md files joined least specific first; over budget, the least specific go first.

    Returns the joined text and a note for each file dropped or cut.
    """
    texts = [(f.name, f.text) for f in instruction_files(workspace, subdir)]
    notes = []
    while texts and sum(len(t.encode()) for _, t in texts) > AGENTS_BUDGET:
        if len(texts) == 1:
            name, text = texts[0]
            texts[0] = (name, text.encode()[:AGENTS_BUDGET].decode(errors="ignore"))
            notes.append(f"{name} cut to {AGENTS_BUDGET} bytes")
            break
        name, _ = texts.pop(0)
        notes.append(f"{name} dropped: AGENTS.md files exceed {AGENTS_BUDGET} bytes")
    joined = "\n\n".join(f"# AGENTS.md ({name})\n{text}" for name, text in texts)
    return joined, notes


def system_prompt(workspace: Path, subdir: str, read_only: bool, checks: str = "") -> tuple[str, list[str]]:
    """Our instructions, the repository's AGENTS.md, and the `checks` AGENTS.md offers (a Code task's)."""
    agents, notes = agents_instructions(workspace, subdir)
    parts = [SYSTEM, ASK] if read_only else [SYSTEM]
    if agents:
        parts.append("The repository's instructions (deeper files win on conflict; the user's words win over all):\n\n"
                     + agents)
    if checks:
        parts.append(checks)
    return "\n\n".join(parts), notes
