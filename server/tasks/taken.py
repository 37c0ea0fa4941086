"""What the user has taken of a task: the base its next run's hunks are reviewed against.

A follow-up continues from the task's work, but the hunks the user accepted are already in the
user's files. Reviewed against the task's original base they would be proposed again and clash
with themselves; reviewed against the base with those hunks in it, only the follow-up's own
changes (and what was still pending) remain. The follow-up records that state as `next`; it
becomes the task's when the run's change is saved, so a run that fails leaves the review as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, fields
from pathlib import Path

from offload.sandbox.result import LARGE, ChangedFile


@dataclass(eq=False)
class Taken(ChangedFile):
    """A changed file whose base is what the user has taken of it (None: the file is absent)."""

    taken: bytes | None = None

    @property
    def base(self) -> bytes | None:
        return self.taken

    @property
    def binary(self) -> bool:
        return b"\0" in (self.taken or b"")[:8000] or bool(self.result_oid and b"\0" in self._info(self.result_oid)[1])

    @property
    def large(self) -> bool:
        return len(self.taken or b"") > LARGE or bool(self.result_oid and self._info(self.result_oid)[0] > LARGE)


def record(task_dir: Path, files: dict[str, tuple[bytes | None, str | None]]) -> None:
    """Keep `files` ({path: (bytes or None, git mode)}), with what was taken before, as the next run's base."""
    state = task_dir / "taken.next"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    index = {}
    for path, (data, mode) in {**_load(task_dir / "taken"), **files}.items():
        name = None
        if data is not None:
            name = hashlib.sha256(data).hexdigest()
            (state / name).write_bytes(data)
        index[path] = {"file": name, "mode": mode}
    (state / "index.json").write_text(json.dumps(index))


def promote(task_dir: Path) -> None:
    """The run whose follow-up recorded `next` saved its change: that state is now the task's."""
    state = task_dir / "taken.next"
    if state.exists():
        shutil.rmtree(task_dir / "taken", ignore_errors=True)
        os.replace(state, task_dir / "taken")


def forget(task_dir: Path) -> None:
    """The task starts again from a new snapshot: nothing was taken of it."""
    for name in ("taken", "taken.next"):
        shutil.rmtree(task_dir / name, ignore_errors=True)


def applied(task_dir: Path, changes: list[ChangedFile]) -> list[ChangedFile]:
    """`changes` with each taken file's base replaced by what was taken of it."""
    taken = _load(task_dir / "taken")
    out = []
    for change in changes:
        if change.path not in taken:
            out.append(change)
            continue
        data, mode = taken[change.path]
        same = data == change.result and mode == change.result_mode
        status = "added" if data is None else "deleted" if change.result_oid is None else "modified"
        kept = {f.name: getattr(change, f.name) for f in fields(ChangedFile) if f.init and f.name != "_cache"}
        out.append(Taken(**{**kept, "status": status, "base_mode": mode,
                            "base_oid": change.result_oid if same else None}, taken=data))
    return out


def _load(state: Path) -> dict[str, tuple[bytes | None, str | None]]:
    index = state / "index.json"
    if not index.exists():
        return {}
    return {path: (None if e["file"] is None else (state / e["file"]).read_bytes(), e["mode"])
            for path, e in json.loads(index.read_text()).items()}
