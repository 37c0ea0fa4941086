"""Three-way merges of a task's change onto the files as they are now.

The base is the snapshot the task started from, the result is the task's, and the current
text is what the user has now: a user edit made while the task ran is kept, and a real
conflict is reported as one rather than resolved behind the user's back.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Merged:
    path: str
    content: bytes | None  # None: delete the file
    conflict: bool = False
    unchanged: bool = False  # the current text already equals the result
    mode: int | None = None  # the file's permission bits, when it is written
    symlink: bool = False  # `content` is a symlink's target
    disk: bool = False  # no text edit can carry it (binary, symlink, exec bit): Offload writes it itself
    skipped: str | None = None  # shown, never written (a symlink pointing out of the repository)
    clash: str | None = None  # the checkout holds something the change cannot be written over
    expect: str | None = None  # the checkout's entry when this was merged (checkout.Entry.digest)
    source: object = None  # streams `content` when it is too large to hold (a file added whole)

    @property
    def action(self) -> str:
        """What applying does to the file, in a word."""
        if self.skipped or self.unchanged:
            return "skipped" if self.skipped else "unchanged"
        return "deleted" if self.content is None and self.source is None else "written"


def merge_file(path: str, base: bytes | None, result: bytes | None, current: bytes | None) -> Merged:
    if current == result:
        return Merged(path, result, unchanged=True)
    if current == base:
        return Merged(path, result)
    if base is None or result is None or current is None:
        # added on both sides differently, or deleted on one side and edited on the other
        return Merged(path, current, conflict=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for name, data in (("current", current), ("base", base), ("result", result)):
            file = Path(tmp) / name
            file.write_bytes(data)
            files.append(str(file))
        proc = subprocess.run(
            ["git", "merge-file", "-p", "-L", f"{path} (yours)", "-L", f"{path} (base)", "-L", f"{path} (task)", *files],
            capture_output=True,
        )
    if proc.returncode < 0 or proc.returncode > 127:
        raise RuntimeError(f"git merge-file failed on {path}: {proc.stderr.decode(errors='replace')}")
    return Merged(path, proc.stdout, conflict=proc.returncode > 0)
