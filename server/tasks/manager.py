"""The task manager: queue, run and record tasks; the CLI and the language server share it.

A task goes queued → preparing → running → finished | failed | cancelled. Every step is an
event in its log; listeners (progress displays, editors) get each event as it is stored.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import ChangedFile, SandboxConfig, SandboxManager
from offload.sandbox.snapshot import find_root, load_snapshot

from .. import config as cfg
from ..agent.evidence import testing_checks
from ..agent.loop import Budget, run_agent
from ..agent.model import ModelClient, ToolCall
from .failures import failure_locations
from .merge import Merged
from .review import Hunk, accept, hunks, with_hunks
from .store import TaskStore

FINAL_STATES = ("finished", "failed", "cancelled")
Listener = Callable[[dict, dict], None]  # (task record, event)


class TaskError(Exception):
    """A request about a task cannot be done; the message says why."""


@dataclass
class _Running:
    cancel: threading.Event
    job: asyncio.Task | None = None


class TaskManager:
    def __init__(self, state_dir: Path | None = None, cache_dir: Path | None = None,
                 overrides: dict | None = None) -> None:
        self.store = TaskStore(state_dir or cfg.state_dir())
        self.cache_dir = Path(cache_dir or cfg.cache_dir())
        self.overrides = overrides or {}
        self.listeners: list[Listener] = []
        self._running: dict[str, _Running] = {}
        self._slots: asyncio.Semaphore | None = None

    # ---- queries -------------------------------------------------------------------------
    def recover(self) -> list[dict]:
        """Mark the tasks whose process died mid-way as interrupted; their logs stay whole."""
        recovered = []
        for record in self.store.all():
            if record["state"] in FINAL_STATES or record["id"] in self._running or _alive(record.get("owner")):
                continue
            self._set_state(record, "failed", "interrupted: the process running it stopped; "
                            "its history is kept and a follow-up can continue it", interrupted=True)
            recovered.append(record)
        return recovered

    def list(self, repo: Path | None = None) -> list[dict]:
        tasks = self.store.all()
        if repo is not None:
            root = str(find_root(Path(repo))[0])
            tasks = [t for t in tasks if t["repo"] == root]
        return tasks

    def get(self, task_id: str) -> dict:
        record = self.store.load(task_id) if isinstance(task_id, str) and task_id else None
        if record is None:
            matches = [t for t in self.store.all() if isinstance(task_id, str) and task_id and t["id"].startswith(task_id)]
            if len(matches) != 1:
                raise TaskError(f"no task {task_id!r}" if not matches else f"task id {task_id!r} is ambiguous")
            record = matches[0]
        return record

    def events(self, task_id: str) -> list[dict]:
        return self.store.events(self.get(task_id)["id"])

    # ---- life ----------------------------------------------------------------------------
    def submit(self, prompt: str, repo: str | Path, kind: str = "code") -> dict:
        """Record a new task and start it in the background; returns at once."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise TaskError("a task needs a prompt")
        directory = Path(repo).expanduser().resolve()
        if not directory.is_dir():
            raise TaskError(f"not a directory: {directory}")
        root, _ = find_root(directory)
        now = time.time()
        record = {
            "id": time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(3),
            "kind": kind, "prompt": prompt, "repo": str(root), "directory": str(directory),
            "state": "queued", "reason": "", "created": now, "updated": now,
            "message": "", "checks": [], "changes": [], "commit": None, "base": None,
            "steps": 0, "input_tokens": 0, "output_tokens": 0, "owner": _owner(),
        }
        self.store.create(record)
        self._emit(record, "state", {"state": "queued"})
        running = _Running(threading.Event())
        self._running[record["id"]] = running
        running.job = asyncio.get_running_loop().create_task(self._run(record, running.cancel))
        return record

    def follow_up(self, task_id: str, prompt: str) -> dict:
        """Continue an ended task with a new instruction, the conversation so far and the rejected hunks."""
        record = self.get(task_id)
        if not isinstance(prompt, str) or not prompt.strip():
            raise TaskError("a follow-up needs a prompt")
        if record["state"] not in FINAL_STATES:
            raise TaskError(f"task {record['id']} is {record['state']}; follow up when it has ended")
        ending = self._running.get(record["id"])  # the last run may still be cleaning up its sandbox
        if not record.get("tree"):
            raise TaskError(f"task {record['id']} never got a sandbox; start a new task instead")
        rejected = [h for h, status, _ in self.hunks(record["id"]) if status == "rejected"]
        text = prompt
        if rejected:
            text += "\n\nThe user rejected these parts of your change; they are undone in the workspace:\n" + \
                "\n".join(f"- {h.path} near line {h.base_start + 1}:\n" + "".join(f"  -{line}" for line in h.base_lines)
                          + "".join(f"  +{line}" for line in h.result_lines) for h in rejected)
        prior = self.conversation(record["id"])
        self._emit(record, "followup", {"prompt": prompt, "text": text, "rejected": [h.id for h in rejected]})
        record.update(discarded=False, interrupted=False, owner=_owner())
        self._set_state(record, "queued", "follow-up")
        running = _Running(threading.Event())
        self._running[record["id"]] = running

        async def after_last_run() -> None:
            if ending and ending.job:
                await asyncio.shield(ending.job)
            await self._run(record, running.cancel, followup=text, prior=prior)

        running.job = asyncio.get_running_loop().create_task(after_last_run())
        return record

    def conversation(self, task_id: str) -> list[dict]:
        """The model's conversation so far, rebuilt from the task's log."""
        history: list[dict] = []
        custom: set[str] = set()
        record = self.get(task_id)
        for event in self.store.events(record["id"]):
            kind = event["type"]
            if kind == "state" and event["state"] == "queued" and not history:
                history.append({"role": "user", "content": record["prompt"]})
            elif kind == "followup":
                history.append({"role": "user", "content": event["text"]})
            elif kind == "model.reply":
                calls = [ToolCall(c["id"], c["name"], c["arguments"], c.get("custom", False))
                         for c in event.get("calls", [])]
                custom.update(c.id for c in calls if c.custom)
                history.append({"role": "assistant", "content": event.get("text", ""), "calls": calls})
            elif kind == "tool.result":
                history.append({"role": "tool", "call_id": event["id"], "output": event.get("output", ""),
                                "custom": event["id"] in custom})
        answered = {item["call_id"] for item in history if item["role"] == "tool"}
        closed = []
        for item in history:  # a run cut off mid-step leaves calls without outputs: close them
            closed.append(item)
            for call in item.get("calls", []):
                if call.id not in answered:
                    closed.append({"role": "tool", "call_id": call.id, "output": "(interrupted: no output)",
                                   "custom": call.custom})
        return closed

    def _restore(self, record: dict, sandbox) -> None:
        """Put the task's work back into a fresh sandbox, without the hunks the user rejected."""
        for path, (change, chosen) in self._kept_hunks(record["id"]).items():
            content = with_hunks(change, chosen)
            if content is None:
                sandbox.runner.delete_file(path)
            else:
                sandbox.runner.write_file(path, content)
        sandbox.commit("Work so far")

    async def wait(self, task_id: str) -> dict:
        running = self._running.get(task_id)
        if running and running.job:
            await asyncio.shield(running.job)
        return self.get(task_id)

    def cancel(self, task_id: str) -> dict:
        record = self.get(task_id)
        running = self._running.get(record["id"])
        if record["state"] in FINAL_STATES:
            raise TaskError(f"task {record['id']} is {record['state']}; only a queued or running task can be cancelled")
        if running is not None:
            running.cancel.set()
        else:  # running in another process: it watches for this marker
            (self.store.dir(record["id"]) / "cancel-requested").touch()
        return record

    async def _watch_cancel(self, task_id: str, cancel: threading.Event) -> None:
        marker = self.store.dir(task_id) / "cancel-requested"
        while not cancel.is_set():
            if marker.exists():
                cancel.set()
            await asyncio.sleep(0.3)

    def _emit(self, record: dict, kind: str, data: dict) -> dict:
        event = self.store.append(record["id"], kind, data)
        for listener in list(self.listeners):
            listener(record, event)
        return event

    def _set_state(self, record: dict, state: str, reason: str = "", **fields) -> None:
        record.update(state=state, reason=reason, updated=time.time(), **fields)
        self.store.save(record)
        self._emit(record, "state", {"state": state, "reason": reason})

    async def _run(self, record: dict, cancel: threading.Event, followup: str | None = None,
                   prior: list[dict] | None = None) -> None:
        sandbox = None
        watcher = asyncio.get_running_loop().create_task(self._watch_cancel(record["id"], cancel))
        try:
            config = cfg.load_config(Path(record["repo"]), self.overrides)
            if self._slots is None:
                self._slots = asyncio.Semaphore(max(1, config.get("tasks.concurrency")))
            async with self._slots:
                if cancel.is_set():
                    return self._set_state(record, "cancelled", "cancelled before it started")
                self._set_state(record, "preparing", "snapshotting the workspace and starting a sandbox")
                model_settings = cfg.resolve_model(config)
                sandboxes = SandboxManager(_sandbox_config(config), self.cache_dir, owner=f"offload-{os.getpid()}")
                if followup is None:
                    snapshot = await asyncio.to_thread(sandboxes.snapshot, record["directory"])
                    record.update(base=snapshot.base, tree=snapshot.tree)
                else:  # continue from the same base, with the work so far minus what the user rejected
                    snapshot = load_snapshot(self.cache_dir, record["tree"], Path(record["repo"]),
                                             os.path.relpath(record["directory"], record["repo"]))
                sandbox = await asyncio.to_thread(sandboxes.create, snapshot, {"offload.task": record["id"]},
                                                  record["kind"] == "ask")
                if followup is not None:
                    await asyncio.to_thread(self._restore, record, sandbox)
                self._emit(record, "sandbox", {"sandbox": sandbox.id, "backend": sandbox.backend.backend,
                                               "base": snapshot.base, "workdir": sandbox.workdir})
                if cancel.is_set():
                    return self._set_state(record, "cancelled", "cancelled while preparing")
                self._set_state(record, "running", f"working with {model_settings['name']}")
                model = ModelClient(model_settings["base_url"], model_settings["api_key"], model_settings["name"],
                                    api=config.get("model.api"), stream=config.get("model.stream"),
                                    timeout=config.get("model.timeout"), max_retries=config.get("model.max_retries"),
                                    freeform_patch=config.get("model.freeform_patch"))
                try:
                    result = await run_agent(
                        sandbox, model, followup or record["prompt"], lambda kind, data: self._emit(record, kind, data),
                        cancel, read_only=record["kind"] == "ask", prior=prior,
                        budget=Budget(max_steps=config.get("budget.max_steps"),
                                      max_tokens=config.get("budget.max_tokens"),
                                      max_minutes=config.get("budget.max_minutes"),
                                      max_cost_usd=config.get("budget.max_cost_usd")),
                    )
                finally:
                    await model.close()
                record.update(message=result.message, commit=result.commit, steps=result.steps,
                              input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                              cost_usd=result.cost_usd, checks=testing_checks(result.message), plan=result.plan)
                if record["kind"] == "code" and result.outcome in ("completed", "budget"):
                    changes = await asyncio.to_thread(sandbox.export)
                    diff = await asyncio.to_thread(sandbox.diff)
                    self.store.save_changes(record["id"], changes, diff)
                    self.store.save_review(record["id"], {})  # new hunks, new decisions
                    record["changes"] = [{"path": c.path, "status": c.status} for c in changes]
                if record["kind"] == "code":
                    record["failures"] = self._failures(record)
                state = {"completed": "finished", "cancelled": "cancelled"}.get(result.outcome, "failed")
                self._set_state(record, state, result.reason)
        except (cfg.ConfigError, SandboxError) as e:
            self._set_state(record, "failed", str(e))
        except Exception as e:  # a bug of ours: record it on the task, never lose the task
            self._emit(record, "error", {"error": f"{type(e).__name__}: {e}"})
            self._set_state(record, "failed", f"internal error: {type(e).__name__}: {e}")
        finally:
            watcher.cancel()
            if sandbox is not None:
                await asyncio.to_thread(sandbox.destroy)
            if (running := self._running.get(record["id"])) and running.cancel is cancel:
                del self._running[record["id"]]

    def _failures(self, record: dict) -> list[dict]:
        """Locations from the checks of the last run whose latest attempt still failed."""
        events = self.store.events(record["id"])
        starts = [i for i, e in enumerate(events) if e["type"] == "state" and e["state"] == "running"]
        calls, latest = {}, {}
        for event in events[starts[-1] if starts else 0:]:
            if event["type"] == "tool.call" and event["name"] == "shell":
                calls[event["id"]] = event["arguments"]
            elif event["type"] == "tool.result" and event["id"] in calls:
                latest[calls[event["id"]]] = event
        subdir = os.path.relpath(record["directory"], record["repo"])
        failures = []
        for event in latest.values():
            if event.get("exit_code") not in (0, None):
                failures += failure_locations(event.get("output", ""), "" if subdir == "." else subdir)
        return failures

    # ---- results -------------------------------------------------------------------------
    def diff(self, task_id: str) -> str:
        return self.store.diff(self.get(task_id)["id"])

    def merge(self, task_id: str, read_current: Callable[[str], bytes | None] | None = None) -> list[Merged]:
        """Every hunk not rejected, merged three ways onto the files as they are now."""
        record = self.get(task_id)
        if record["state"] != "finished":
            raise TaskError(f"task {record['id']} is {record['state']}; only a finished task can be applied")
        root = Path(record["repo"])

        def from_disk(path: str) -> bytes | None:
            file = root / path
            return file.read_bytes() if file.is_file() else None

        read = read_current or from_disk
        return [accept(change, chosen, read(path)) for path, (change, chosen) in self._kept_hunks(record["id"]).items()]

    def _kept_hunks(self, task_id: str) -> dict[str, tuple[ChangedFile, list[Hunk]]]:
        """Each changed file with the hunks the user has not rejected (possibly none)."""
        by_file: dict[str, tuple[ChangedFile, list[Hunk]]] = {}
        for hunk, status, change in self.hunks(task_id):
            chosen = by_file.setdefault(change.path, (change, []))[1]
            if status != "rejected":
                chosen.append(hunk)
        return by_file

    def accepted_all(self, task_id: str) -> None:
        """After the whole change was applied, every pending hunk counts as accepted."""
        pending = [h.id for h, status, _ in self.hunks(task_id) if status == "pending"]
        if pending:
            self.decide(task_id, pending, "accepted")

    def hunks(self, task_id: str) -> list[tuple[Hunk, str, ChangedFile]]:
        """Every hunk of a finished task with its review status: pending, accepted or rejected."""
        record = self.get(task_id)
        review = self.store.review(record["id"])
        return [(h, review.get(h.id, "pending"), c) for c in self.store.changes(record["id"]) for h in hunks(c)]

    def _pending(self, task_id: str, hunk_ids: list[str]) -> list[tuple[Hunk, ChangedFile]]:
        """The named hunks of a finished task, each still waiting for a decision, or a TaskError."""
        record = self.get(task_id)
        if record["state"] != "finished":
            raise TaskError(f"task {record['id']} is {record['state']}; only a finished task has hunks to review")
        known = {hunk.id: (hunk, status, change) for hunk, status, change in self.hunks(record["id"])}
        found = []
        for hunk_id in hunk_ids:
            if hunk_id not in known:
                raise TaskError(f"task {record['id']} has no hunk {hunk_id!r}")
            hunk, status, change = known[hunk_id]
            if status != "pending":
                raise TaskError(f"hunk {hunk_id} was already {status}")
            found.append((hunk, change))
        return found

    def merge_hunks(self, task_id: str, hunk_ids: list[str],
                    read_current: Callable[[str], bytes | None]) -> list[Merged]:
        """The given hunks merged onto their files as they are now, one result per file; raises on a
        conflict or a hunk already decided, and writes nothing."""
        chosen: dict[str, tuple[ChangedFile, list[Hunk]]] = {}
        for hunk, change in self._pending(task_id, hunk_ids):
            chosen.setdefault(change.path, (change, []))[1].append(hunk)
        merged = [accept(change, hunks, read_current(path)) for path, (change, hunks) in chosen.items()]
        if conflicts := [m.path for m in merged if m.conflict]:
            raise TaskError(f"your edits overlap the chosen hunks in {', '.join(conflicts)}; nothing was applied")
        return merged

    def reject(self, task_id: str, hunk_ids: list[str]) -> None:
        """Reject pending hunks: they stay out of every later apply and go along to a follow-up."""
        self._pending(task_id, hunk_ids)
        self.decide(task_id, hunk_ids, "rejected")

    def decide(self, task_id: str, hunk_ids: list[str], decision: str) -> None:
        """Record decisions on hunks the caller has checked (see `_pending`)."""
        record = self.get(task_id)
        review = self.store.review(record["id"])
        review.update(dict.fromkeys(hunk_ids, decision))
        self.store.save_review(record["id"], review)
        self._emit(record, "review", {"hunks": hunk_ids, "decision": decision})

    def discard(self, task_id: str) -> dict:
        """Reject whatever is still pending; the task's history stays."""
        record = self.get(task_id)
        if record["state"] not in FINAL_STATES:
            raise TaskError(f"task {record['id']} is {record['state']}; cancel it first")
        pending = [h.id for h, status, _ in self.hunks(record["id"]) if status == "pending"]
        if pending:
            self.decide(record["id"], pending, "rejected")
        record["discarded"] = True
        self.store.save(record)
        self._emit(record, "discarded", {})
        return record

    def apply(self, task_id: str) -> list[Merged]:
        """Write the merged change into the checkout; nothing is written when any file conflicts."""
        record = self.get(task_id)
        merged = self.merge(task_id)
        conflicts = [m.path for m in merged if m.conflict]
        if conflicts:
            raise TaskError("your files changed where the task changed them; nothing was applied. Conflicts: "
                            + ", ".join(conflicts))
        root = Path(record["repo"])
        for m in merged:
            target = root / m.path
            if m.content is None:
                target.unlink(missing_ok=True)
            elif not m.unchanged:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(m.content)
        self._emit(record, "applied", {"files": [m.path for m in merged]})
        self.accepted_all(record["id"])
        return merged


def _owner() -> dict:
    """Who runs a task: enough to tell later whether that process is still alive."""
    return {"pid": os.getpid(), "started": _proc_stat(os.getpid())[1]}


def _proc_stat(pid: int) -> tuple[str, str | None]:
    """A process's state letter and start time (in clock ticks since boot), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], fields[19]
    except (OSError, IndexError):
        return "X", None


def _alive(owner: dict | None) -> bool:
    """The owner process still runs (and is the same process, not a reused pid or a zombie)."""
    if not owner:
        return False
    state, started = _proc_stat(owner["pid"])
    if state in ("X", "Z"):
        return False
    return owner.get("started") is None or started == owner["started"]


def _sandbox_config(config: cfg.Config) -> SandboxConfig:
    return SandboxConfig(
        backend=config.get("sandbox.backend"), image=config.get("sandbox.image"),
        network=config.get("sandbox.network"), memory=config.get("sandbox.memory"),
        cpus=config.get("sandbox.cpus"), pids=config.get("sandbox.pids"), disk=config.get("sandbox.disk"),
        docker_host=config.get("sandbox.docker_host") or None,
    )
