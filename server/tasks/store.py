"""Tasks on disk: an append-only JSONL event log per task beside its latest summary.

`$XDG_STATE_HOME/offload/tasks/<id>/` holds `events.jsonl` (every event, appended and
flushed one line at a time, so a killed process loses nothing already emitted), `task.json`
(the summary), `changes.json` (every changed file by its blob ids and modes) and `diff.patch`;
the bytes live in a result repository under `results/` (the sandbox's commits, checked by git
on the way in: offload.sandbox.result), so they are there for review and apply long after the
sandbox is gone. Every file but the log is replaced whole, never written in place:
another process (an editor window, the CLI, the task worker) reading it sees the old or the
new, never half of one. A best-of-N task keeps each attempt's
change under `attempts/<n>/`; the top-level change is the chosen attempt's.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
import time
import uuid
from pathlib import Path

from offload.sandbox.errors import SandboxError
from offload.sandbox.result import ChangedFile, diff_text, from_files  # light: git and the standard library


class TaskStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root) / "tasks"
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)  # the user's code, the model's edits and logs: no other account's
        self._lock = threading.Lock()

    def dir(self, task_id: str) -> Path:
        return self.root / task_id

    def create(self, record: dict) -> None:
        self.dir(record["id"]).mkdir(parents=True)
        self.save(record)

    def save(self, record: dict) -> None:
        _replace(self.dir(record["id"]) / "task.json", json.dumps(record, indent=1))

    def load(self, task_id: str) -> dict | None:
        try:
            return json.loads((self.dir(task_id) / "task.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError, NotADirectoryError):
            return None

    def append(self, task_id: str, kind: str, data: dict) -> dict:
        event = {"t": round(time.time(), 3), "type": kind, **data}
        line = json.dumps(event, ensure_ascii=False) + "\n"
        with self._lock, open(self.dir(task_id) / "events.jsonl", "a", encoding="utf-8",
                                     errors="backslashreplace") as f:  # a name that is not UTF-8: \udcXX, still JSON
            f.write(line)
        return event

    def events(self, task_id: str) -> list[dict]:
        path = self.dir(task_id) / "events.jsonl"
        if not path.exists():
            return []
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a crash mid-write
        return events

    def all(self) -> list[dict]:
        records = [self.load(d.name) for d in self.root.iterdir() if d.is_dir()]
        return sorted((r for r in records if r), key=lambda r: r["created"])

    def _results(self, task_id: str, attempt: int | None) -> Path:
        """Where a change lives: the task's own (the chosen one), or one attempt's."""
        return self.dir(task_id) if attempt is None else self.dir(task_id) / "attempts" / str(attempt)

    def new_result(self, task_id: str) -> Path:
        """A fresh place for one run's result repository: readers of the last one keep it."""
        return self.dir(task_id) / "results" / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}.git"

    def save_changes(self, task_id: str, changes: list[ChangedFile], attempt: int | None = None) -> None:
        """Record a run's change (its files, its readable diff); the bytes stay in its repository."""
        where = self._results(task_id, attempt)
        where.mkdir(parents=True, exist_ok=True)
        repo = changes[0].repo if changes else None
        tmp = where / f".diff.patch.{os.getpid()}.{threading.get_ident()}.tmp"
        if repo is not None:
            diff_text(repo, tmp)
        else:
            tmp.write_bytes(b"")
        os.replace(tmp, where / "diff.patch")
        _replace(where / "changes.json", json.dumps({
            "repo": os.path.relpath(repo, self.dir(task_id)) if repo else None,
            "files": [c.as_dict() for c in changes]}))

    def prune_results(self, task_id: str) -> None:
        """Remove the result repositories no recorded change refers to any more (an earlier run's,
        a run that changed nothing). Called when a run has saved every change it made."""
        task = self.dir(task_id)
        kept = set()
        for saved in [task / "changes.json", *task.glob("attempts/*/changes.json")]:
            try:
                kept.add(json.loads(saved.read_text())["repo"])
            except (FileNotFoundError, ValueError, KeyError, TypeError):
                continue
        for repo in task.glob("results/*.git"):
            if os.path.relpath(repo, task) not in kept:
                shutil.rmtree(repo, ignore_errors=True)

    def changes_stamp(self, task_id: str) -> tuple | None:
        """Changes when the task's recorded change does (it is replaced whole, never edited)."""
        try:
            st = (self.dir(task_id) / "changes.json").stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def changes(self, task_id: str, attempt: int | None = None, worktree: Path | None = None) -> list[ChangedFile]:
        """The recorded change; with `worktree` (the user's git work tree), its files read as a
        checkout there would write them."""
        path = self._results(task_id, attempt) / "changes.json"
        if not path.exists():
            return []
        saved = json.loads(path.read_text())
        if isinstance(saved, list):  # as an older Offload kept it: both sides of each file, in base64
            self._upgrade(task_id, attempt, saved)
            saved = json.loads(path.read_text())
        repo = self.dir(task_id) / saved["repo"] if saved["repo"] else None
        return [ChangedFile(**c, repo=repo, worktree=worktree) for c in saved["files"]]

    def _upgrade(self, task_id: str, attempt: int | None, files: list[dict]) -> None:
        """Record a change kept by an older Offload as this one keeps it, in a result repository."""
        def side(text: str | None) -> bytes | None:
            return None if text is None else base64.b64decode(text)

        if not files:
            return self.save_changes(task_id, [], attempt)
        repo = self.new_result(task_id)
        try:
            changes = from_files(repo, [(f["path"], side(f["base"]), side(f["result"])) for f in files])
        except SandboxError as e:
            shutil.rmtree(repo, ignore_errors=True)
            raise SandboxError(f"task {task_id}'s change was recorded by an older Offload and cannot be read: {e}") from e
        self.save_changes(task_id, changes, attempt)

    def review(self, task_id: str) -> dict[str, str]:
        """Each reviewed hunk's decision: "accepted" or "rejected"."""
        path = self.dir(task_id) / "review.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def save_review(self, task_id: str, review: dict[str, str]) -> None:
        _replace(self.dir(task_id) / "review.json", json.dumps(review))

    def diff(self, task_id: str, attempt: int | None = None) -> str:
        """The readable diff; bytes that are not UTF-8 (a Latin-1 file's lines) as U+FFFD."""
        path = self._results(task_id, attempt) / "diff.patch"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


def _replace(path: Path, text: str) -> None:
    """Write `path` whole by renaming a sibling over it; the sibling's name is this writer's own,
    so two processes or threads saving at once cannot take each other's half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
