"""Tasks run in a process of their own, beside the language server.

Sixteen agents at work parse model replies, talk to their sandboxes and write their logs; in
the editor's process they would hold the interpreter lock the editor's requests need, and
every request would wait its turn. So the language server's task manager hands each run to
this worker: one child process with a task manager of its own on the same store. The child
writes the events to the store itself and sends each, with the task's record, up a pipe; the
parent hands them to its listeners as if its own thread had emitted them.

The wire is JSON lines. Parent to child: the settings first, then `{"run": id, "key": n,
"followup": text, "prior": [...]}` and `{"cancel": id}`. Child to parent: `{"record": ...,
"event": ...}` and `{"done": n}` when run `n` has ended. The child exits when its input ends:
the parent closed it, or died; and a parent whose child died fails the runs it was waiting for.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from offload.sandbox.channel import end_process

log = logging.getLogger(__name__)
NICENESS = 5  # the editor's process comes first when both want the CPU


class Worker:
    """The parent's side: starts the child on first use and again after it died."""

    def __init__(self, settings: dict, on_event: Callable[[dict, dict], None],
                 on_lost: Callable[[str], None]) -> None:
        """`settings`: the child's task manager's (state_dir, cache_dir, overrides); `on_event(record,
        event)` for every event of a run; `on_lost(task_id)` for each run the child died during."""
        self.settings = settings
        self.on_event, self.on_lost = on_event, on_lost
        self._proc: subprocess.Popen | None = None
        self._jobs: dict[int, tuple[str, concurrent.futures.Future, subprocess.Popen]] = {}
        self._keys = itertools.count(1)
        self._lock = threading.Lock()

    def run(self, task_id: str, followup: str | None = None,
            prior: list[dict] | None = None) -> concurrent.futures.Future:
        """Start a run of the task in the child; the future is done when the run has ended."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            key = next(self._keys)
            self._send({"run": task_id, "key": key, "followup": followup, "prior": encode_prior(prior)})
            self._jobs[key] = (task_id, future, self._proc)
        return future

    def cancel(self, task_id: str) -> None:
        with self._lock:
            if self._proc is not None:
                self._send({"cancel": task_id})

    def configure(self) -> None:
        """The settings' overrides changed (in place): a running child takes them for its next runs."""
        with self._lock:
            if self._proc is not None:
                self._send({"overrides": self.settings["overrides"]})

    def close(self, timeout: float = 30) -> None:
        """End the child: it destroys its warm sandboxes and exits."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            end_process(proc, timeout)

    def _send(self, message: dict) -> None:
        """Under `_lock`: to the child, started first when there is none."""
        lines = [message]
        if self._proc is None:
            self._proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, encoding="utf-8")
            threading.Thread(target=self._read, args=(self._proc,), name="offload-worker", daemon=True).start()
            lines.insert(0, self.settings)
        try:
            self._proc.stdin.write("".join(json.dumps(line) + "\n" for line in lines))
            self._proc.stdin.flush()
        except OSError as e:  # it died just now: its reader fails the runs it had
            log.warning("the task worker is gone: %s", e)

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("the task worker wrote a line that is not JSON: %r", line[:200])
                continue
            if "event" in message:
                self.on_event(message["record"], message["event"])
            elif "done" in message:
                with self._lock:
                    _, future, _ = self._jobs.pop(message["done"], (None, None, None))
                if future:
                    future.set_result(None)
        proc.wait()
        with self._lock:
            if self._proc is proc:
                self._proc = None
            lost = [(key, job) for key, job in self._jobs.items() if job[2] is proc]
            for key, _ in lost:
                del self._jobs[key]
        if lost:
            log.error("the task worker stopped (exit status %s) with %d run(s) unfinished", proc.returncode, len(lost))
        for _, (task_id, future, _) in lost:
            try:
                self.on_lost(task_id)
            finally:
                future.set_result(None)


def encode_prior(prior: list[dict] | None) -> list[dict] | None:
    """The conversation so far as JSON: its tool calls as plain objects."""
    if prior is None:
        return None
    return [{**item, "calls": [dataclasses.asdict(c) for c in item["calls"]]} if "calls" in item else item
            for item in prior]


def decode_prior(prior: list[dict] | None) -> list[dict] | None:
    from ..agent.model import ToolCall

    if prior is None:
        return None
    return [{**item, "calls": [ToolCall(**c) for c in item["calls"]]} if "calls" in item else item for item in prior]


def main() -> int:
    """The child: run what the parent sends until its input ends."""
    from .manager import TaskError, TaskManager

    out = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not break the wire
    try:
        os.nice(NICENESS)
    except OSError:
        pass
    settings = json.loads(sys.stdin.readline())
    manager = TaskManager(Path(settings["state_dir"]), Path(settings["cache_dir"]), settings["overrides"],
                          long_lived=True)
    lock = threading.Lock()

    def send(message: dict) -> None:
        line = json.dumps(message, ensure_ascii=False) + "\n"
        with lock:
            out.write(line)
            out.flush()

    manager.listeners.append(lambda record, event: send({"record": record, "event": event}))
    for line in sys.stdin:
        message = json.loads(line)
        if "run" in message:
            try:
                job = manager.run_here(message["run"], message.get("followup"), decode_prior(message.get("prior")))
            except Exception as e:  # the task is gone from the store: nothing ran, say so
                log.error("cannot run task %s: %s", message["run"], e)
                send({"done": message["key"]})
                continue
            job.add_done_callback(lambda _, key=message["key"]: send({"done": key}))
        elif "overrides" in message:  # the editor's settings changed: for the runs that start from now on
            manager.overrides.clear()
            manager.overrides.update(message["overrides"])
        elif "cancel" in message:
            try:
                manager.cancel(message["cancel"])
            except TaskError:
                pass  # it ended meanwhile
    manager.close()  # the warm sandboxes; a task still running stops with this process
    out.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
