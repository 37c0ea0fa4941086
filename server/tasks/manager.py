"""The task manager: queue, run and record tasks; the CLI and the language server share it.

A task goes queued → preparing → running → finished | failed | cancelled. Every step is an
event in its log; listeners (progress displays, editors) get each event as it is stored, on the
thread that stored it: a task's own events come from the manager's thread (see `_start`), or,
when the tasks run in a worker process, from the thread reading its events (see `worker`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import os
import posixpath
import secrets
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from offload.sandbox import owner
from offload.sandbox.errors import SandboxError
from offload.sandbox.result import EXECUTABLE, SYMLINK, ChangedFile, RefusedChange
from offload.sandbox.snapshot import find_root, load_snapshot

from .. import config as cfg
from . import attempts
from .attempts import MAX_ATTEMPTS
from .failures import failure_locations
from .merge import Merged
from .branch import BranchError, default_name, make_branch, open_pull_request
from .checkout import Checkout, CheckoutError, Entry, Write
from . import taken
from .review import Hunk, accept, hunks, with_hunks
from .store import TaskStore
from .worker import Worker

if TYPE_CHECKING:  # the agent and the sandboxes (the model's and Docker's SDKs) load when a task runs,
    # so that the CLI's queries start at once
    from offload.sandbox.manager import SandboxConfig, SandboxManager

    from ..agent.loop import AgentResult

FINAL_STATES = ("finished", "failed", "cancelled")
Listener = Callable[[dict, dict], None]  # (task record, event)


class TaskError(Exception):
    """A request about a task cannot be done; the message says why."""


@dataclass
class _Running:
    cancel: threading.Event
    job: concurrent.futures.Future | None = None


class TaskManager:
    def __init__(self, state_dir: Path | None = None, cache_dir: Path | None = None,
                 overrides: dict | None = None, long_lived: bool = False, worker: bool = False) -> None:
        """`long_lived`: this process runs task after task, so the sandbox managers, with their warm
        sandboxes (`sandbox.warm`), are kept from one task to the next. `worker`: the tasks run in a
        child process (see `worker`), which is long-lived: the language server's way, whose own
        thread must stay free for the editor."""
        self.store = TaskStore(state_dir or cfg.state_dir())
        self.cache_dir = Path(cache_dir or cfg.cache_dir())
        self.overrides = overrides or {}
        self.long_lived = long_lived
        self._sandbox_managers: dict[str, SandboxManager] = {}  # by configuration, when long-lived
        self._sandbox_managers_lock = threading.Lock()
        self.listeners: list[Listener] = []
        self._running: dict[str, _Running] = {}
        self._hunks: dict[str, tuple] = {}  # task id -> (its change's stamp, its hunks, its changed files)
        self._hunks_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_lock = threading.Lock()
        self._slots: asyncio.Semaphore | None = None
        self._swept = False
        self._worker = Worker({"state_dir": str(self.store.root.parent), "cache_dir": str(self.cache_dir),
                               "overrides": self.overrides}, self._notify, self._lost) if worker else None

    def sweep(self, sandboxes: SandboxManager | None = None) -> list[str]:
        """Remove what sandboxes of processes that died left (containers, volumes, directories);
        run at start-up and, in the language server, on a timer. Returns the sandboxes removed."""
        from offload.sandbox.manager import SandboxManager

        self._swept = True
        if sandboxes is None:
            sandboxes = SandboxManager(_sandbox_config(cfg.load_config(Path.cwd(), self.overrides)), self.cache_dir)
        return sandboxes.sweep()

    def sandboxes(self, config: cfg.Config) -> SandboxManager:
        """The sandbox manager for a task with this configuration: when long-lived, the one kept for
        it (made, and its warm pool started, on first use); else a new one, without warm sandboxes."""
        from offload.sandbox.manager import SandboxManager

        settings = _sandbox_config(config)
        if not self.long_lived:
            settings.warm = 0  # one task per process: a sandbox started ahead would wait for nothing
            return SandboxManager(settings, self.cache_dir, owner=f"offload-{os.getpid()}")
        with self._sandbox_managers_lock:
            manager = self._sandbox_managers.get(repr(settings))
            made = manager is None
            if made:
                manager = self._sandbox_managers[repr(settings)] = SandboxManager(
                    settings, self.cache_dir, owner=f"offload-{os.getpid()}")
        if made:
            manager.prewarm()
        return manager

    def close(self) -> None:
        """Destroy the sandboxes kept for later tasks, and end the worker (at the language server's exit)."""
        if self._worker is not None:
            self._worker.close()
        with self._sandbox_managers_lock:
            managers, self._sandbox_managers = list(self._sandbox_managers.values()), {}
        for manager in managers:
            manager.close()

    # ---- queries -------------------------------------------------------------------------
    def recover(self) -> list[dict]:
        """Mark the tasks whose process died mid-way as interrupted; their logs stay whole."""
        recovered = []
        for record in self.store.all():
            if record["state"] in FINAL_STATES or record["id"] in self._running or owner.alive(record.get("owner")):
                continue
            self._interrupt(record, "the process running it")
            recovered.append(record)
        return recovered

    def runs_here(self, record: dict) -> bool:
        """Whether this process runs (or ran) the task: then its listeners hear every event of it."""
        return record["id"] in self._running or record.get("owner") == owner.current()

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
    def submit(self, prompt: str, repo: str | Path, kind: str = "code", attempts: int | None = None) -> dict:
        """Record a new task and start it in the background; returns at once. A Code task runs
        `attempts` (default `tasks.attempts`) independent attempts and keeps the best."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise TaskError("a task needs a prompt")
        directory = Path(repo).expanduser().resolve()
        if not directory.is_dir():
            raise TaskError(f"not a directory: {directory}")
        root, _ = find_root(directory)
        if attempts is None:
            attempts = cfg.load_config(root, self.overrides).get("tasks.attempts")
        if not isinstance(attempts, int) or isinstance(attempts, bool) or not 1 <= attempts <= MAX_ATTEMPTS:
            raise TaskError(f"attempts must be a whole number from 1 to {MAX_ATTEMPTS}, not {attempts!r}")
        now = time.time()
        record = {
            "id": time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(3),
            "kind": kind, "prompt": prompt, "repo": str(root), "directory": str(directory),
            "state": "queued", "reason": "", "created": now, "updated": now,
            "message": "", "checks": [], "changes": [], "commit": None, "base": None,
            "steps": 0, "input_tokens": 0, "output_tokens": 0, "owner": owner.current(),
            "attempts": attempts if kind == "code" else 1,
        }
        self.store.create(record)
        self._emit(record, "state", {"state": "queued"})
        self._launch(record)
        return record

    def follow_up(self, task_id: str, prompt: str) -> dict:
        """Continue an ended task with a new instruction, the conversation so far and the rejected hunks.
        A task that ended before its snapshot (interrupted while queued, say) starts from the
        workspace as it is now, its own prompt first."""
        record = self.get(task_id)
        if not isinstance(prompt, str) or not prompt.strip():
            raise TaskError("a follow-up needs a prompt")
        if record["state"] not in FINAL_STATES:
            raise TaskError(f"task {record['id']} is {record['state']}; follow up when it has ended")
        rejected = [h for h, status, _ in self.hunks(record["id"]) if status == "rejected"]
        text = prompt
        if rejected:
            text += "\n\nThe user rejected these parts of your change; they are undone in the workspace:\n" + \
                "\n".join(f"- {h.path} near line {h.base_start + 1}:\n" + "".join(f"  -{line}" for line in h.base_lines)
                          + "".join(f"  +{line}" for line in h.result_lines) for h in rejected)
        if record.get("interrupted"):
            text += "\n\n" + self._after_interruption(record)
        self._take(record)
        prior = self.conversation(record["id"])
        rebuilt = bool(rejected or record.get("interrupted"))  # the files differ from what earlier outputs show
        if rebuilt and prior:
            prior[-1]["rebuilt"] = True
        self._emit(record, "followup", {"prompt": prompt, "text": text, "rejected": [h.id for h in rejected],
                                        "rebuilt": rebuilt})
        record.update(discarded=False, interrupted=False, owner=owner.current())
        self._set_state(record, "queued", "follow-up")
        self._launch(record, text, prior)
        return record

    def _take(self, record: dict) -> None:
        """Record what the user has accepted so far as the base the follow-up's hunks are reviewed
        against: accepted hunks are in the user's files already, and are not proposed again."""
        files = {}
        for change, chosen in self._kept_hunks(record["id"], ("accepted",)).values():
            if chosen:
                files[change.path] = (with_hunks(change, chosen), change.result_mode)
        taken.record(self.store.dir(record["id"]), files)

    def _after_interruption(self, record: dict) -> str:
        """What the model must know when its last run was cut off: which workspace it now has."""
        if not record.get("tree"):
            return ("Note: the task was interrupted before its workspace was made. This run starts from the "
                    "repository as it is now; nothing of an earlier run is in it.")
        kept = ("the change of the last run that finished" if self.store.changes(record["id"])
                else "the repository as it was when the task began: none of your edits are in it")
        return ("Note: your last run was interrupted (its process stopped) before its work was saved. The "
                f"workspace holds {kept}; edits made in the interrupted run are gone, and outputs from it may not "
                "match the files. Look at the files again before you rely on them, and make those edits again.")

    def conversation(self, task_id: str) -> list[dict]:
        """The model's conversation so far, rebuilt from the task's log."""
        from ..agent.model import ToolCall

        history: list[dict] = []
        custom: set[str] = set()
        called: set[str] = set()
        record = self.get(task_id)
        for event in self.store.events(record["id"]):
            if event.get("attempt", record.get("attempt")) != record.get("attempt"):
                continue  # another attempt's work: the chosen one's is the conversation
            kind = event["type"]
            if kind == "state" and event["state"] == "queued" and not history:
                history.append({"role": "user", "content": record["prompt"]})
            elif kind == "followup" or (kind == "note" and "told" in event):
                history.append({"role": "user", "content": event.get("told") or event["text"],
                                **({"rebuilt": True} if event.get("rebuilt") else {})})
            elif kind == "model.reply":
                calls = [ToolCall(c["id"], c["name"], c["arguments"], c.get("custom", False))
                         for c in event.get("calls", [])]
                custom.update(c.id for c in calls if c.custom)
                called.update(c.id for c in calls)
                history.append({"role": "assistant", "content": event.get("text", ""), "calls": calls})
            elif kind == "tool.result" and event["id"] not in called:  # a check the harness ran itself
                history.append({"role": "user", "content": "After your final message, Offload ran this check:\n"
                                + event.get("output", ""), "chunk": event.get("chunk"),
                                **{k: event.get(k) for k in ("name", "exit_code", "command", "directory", "files")}})
            elif kind == "tool.result":
                history.append({"role": "tool", "call_id": event["id"], "output": event.get("output", ""),
                                "custom": event["id"] in custom, "chunk": event.get("chunk"),
                                **{k: event.get(k) for k in ("name", "exit_code", "command", "directory", "files")}})
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
        """Put the task's work back into a fresh sandbox, without the hunks the user rejected:
        bytes, exec bits and symlinks as the task left them."""
        for path, (change, chosen) in self._kept_hunks(record["id"]).items():
            content = with_hunks(change, chosen)
            taken = change.result_mode if chosen else change.base_mode
            if content is None:
                sandbox.runner.delete_file(path)
            elif taken == SYMLINK:
                sandbox.runner.delete_file(path)
                sandbox.runner.run(["ln", "-s", "--", os.fsdecode(content), path], cwd=sandbox.backend.workspace)
            else:
                sandbox.runner.write_file(path, content, 0o755 if taken == EXECUTABLE else 0o644)
        sandbox.commit("Work so far")

    def _launch(self, record: dict, followup: str | None = None,
                prior: list[dict] | None = None) -> concurrent.futures.Future:
        """Run the task (a follow-up when `followup` is given) in the worker, or on this process's
        task loop; the future is done when the run has ended."""
        ending = self._running.get(record["id"])  # the last run may still be cleaning up its sandbox
        running = self._running[record["id"]] = _Running(threading.Event())
        if self._worker is not None:  # which waits for the last run itself
            def ended(_) -> None:
                if self._running.get(record["id"]) is running:  # not yet replaced by a follow-up
                    del self._running[record["id"]]

            running.job = self._worker.run(record["id"], followup, prior)
            running.job.add_done_callback(ended)
            return running.job

        async def work() -> None:
            if ending and ending.job:
                await asyncio.shield(asyncio.wrap_future(ending.job))
            await self._run(record, running.cancel, followup=followup, prior=prior)

        running.job = self._start(work())
        return running.job

    def run_here(self, task_id: str, followup: str | None = None,
                 prior: list[dict] | None = None) -> concurrent.futures.Future:
        """The worker's way in: run a task its parent recorded, here."""
        return self._launch(self.get(task_id), followup, prior)

    def _start(self, work) -> concurrent.futures.Future:
        """Run a task's work on the manager's own event loop, in a thread of its own, so that many
        running agents never hold up the caller's loop: the language server answers at once."""
        with self._loop_lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                threading.Thread(target=self._loop.run_forever, name="offload-tasks", daemon=True).start()
        return asyncio.run_coroutine_threadsafe(work, self._loop)

    async def wait(self, task_id: str) -> dict:
        running = self._running.get(task_id)
        if running and running.job:
            await asyncio.shield(asyncio.wrap_future(running.job))
        return self.get(task_id)

    def cancel(self, task_id: str) -> dict:
        record = self.get(task_id)
        running = self._running.get(record["id"])
        if record["state"] in FINAL_STATES:
            raise TaskError(f"task {record['id']} is {record['state']}; only a queued or running task can be cancelled")
        if running is not None:
            running.cancel.set()
            if self._worker is not None:
                self._worker.cancel(record["id"])
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
        self._notify(record, event)
        return event

    def _notify(self, record: dict, event: dict) -> None:
        """An event stored here or by the worker, to every listener."""
        for listener in list(self.listeners):
            listener(record, event)

    def _interrupt(self, record: dict, who: str) -> None:
        """End a task whose runner died mid-way; its log stays whole and a follow-up can continue it."""
        self._set_state(record, "failed", f"interrupted: {who} stopped; its history is kept and "
                        "a follow-up can continue it", interrupted=True)

    def _lost(self, task_id: str) -> None:
        """The worker died while running the task: it ends as interrupted, like a task of a killed process."""
        record = self.store.load(task_id)
        if record is not None and record["state"] not in FINAL_STATES:
            self._interrupt(record, "the task worker")

    def _set_state(self, record: dict, state: str, reason: str = "", **fields) -> None:
        record.update(state=state, reason=reason, updated=time.time(), **fields)
        self.store.save(record)
        self._emit(record, "state", {"state": state, "reason": reason})

    async def _run(self, record: dict, cancel: threading.Event, followup: str | None = None,
                   prior: list[dict] | None = None) -> None:
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
                sandboxes = await asyncio.to_thread(self.sandboxes, config)
                if not self._swept:  # start-up: what dead processes left goes first
                    await asyncio.to_thread(self.sweep, sandboxes)
                if followup is None or not record.get("tree"):  # new, or ended before its snapshot: from now
                    taken.forget(self.store.dir(record["id"]))
                    snapshot = await asyncio.to_thread(sandboxes.snapshot, record["directory"])
                    record.update(base=snapshot.base, tree=snapshot.tree, head=snapshot.head)
                else:  # continue from the same base, with the work so far minus what the user rejected
                    snapshot = load_snapshot(self.cache_dir, record["tree"], Path(record["repo"]),
                                             os.path.relpath(record["directory"], record["repo"]))
                count = 1 if followup is not None else record.get("attempts", 1)
                outcomes = await asyncio.gather(*(
                    self._attempt(record, number if count > 1 else None, sandboxes, snapshot, config,
                                  model_settings, cancel, followup, prior)
                    for number in range(1, count + 1)), return_exceptions=True)
                if count == 1:
                    if isinstance(outcomes[0], BaseException):
                        raise outcomes[0]
                    self._finish(record, *outcomes[0])
                else:
                    self._finish_attempts(record, outcomes, cancel)
        except (cfg.ConfigError, SandboxError) as e:  # a cancel stops a setup script with an error too
            self._set_state(record, "cancelled" if cancel.is_set() else "failed", str(e))
        except Exception as e:  # a bug of ours: record it on the task, never lose the task
            self._emit(record, "error", {"error": f"{type(e).__name__}: {e}"})
            self._set_state(record, "failed", f"internal error: {type(e).__name__}: {e}")
        finally:
            watcher.cancel()
            if (running := self._running.get(record["id"])) and running.cancel is cancel:
                del self._running[record["id"]]

    async def _attempt(self, record: dict, number: int | None, sandboxes: SandboxManager, snapshot, config,
                       model_settings: dict, cancel: threading.Event, followup: str | None,
                       prior: list[dict] | None) -> tuple[AgentResult, list[ChangedFile] | None, str]:
        """One try at the task in a sandbox of its own: the agent's result and the change it made.
        Attempt `number` of a best-of-N task tags every event it emits; a lone run tags none."""
        from ..agent.loop import AgentResult, Budget, run_agent
        from ..agent.model import ModelClient

        tag = {} if number is None else {"attempt": number}

        def emit(kind: str, data: dict) -> dict:
            return self._emit(record, kind, {**data, **tag})

        labels = {"offload.task": record["id"], **({"offload.attempt": str(number)} if number else {})}
        # the setup phase (sandbox.setup), when it runs, logs its progress and output as "setup" events
        sandbox = await asyncio.to_thread(sandboxes.create, snapshot, labels, record["kind"] == "ask",
                                          on_setup=lambda data: emit("setup", data), cancel=cancel)
        try:
            if followup is not None:
                await asyncio.to_thread(self._restore, record, sandbox)
            emit("sandbox", {"sandbox": sandbox.id, "backend": sandbox.backend.backend,
                             "base": snapshot.base, "workdir": sandbox.workdir, "warm": sandbox.warm})
            if cancel.is_set():
                return AgentResult("cancelled", "cancelled while preparing"), None, ""
            if record["state"] == "preparing":
                self._set_state(record, "running", f"working with {model_settings['name']}")
            # in a thread: the HTTP client's TLS set-up takes ~0.1 s, which editors' requests would wait out
            model = await asyncio.to_thread(lambda: ModelClient(**model_settings))
            try:
                result = await run_agent(
                    sandbox, model, followup or record["prompt"], emit, cancel,
                    read_only=record["kind"] == "ask", prior=prior,
                    budget=Budget(max_steps=config.get("budget.max_steps"),
                                  max_tokens=config.get("budget.max_tokens"),
                                  max_minutes=config.get("budget.max_minutes"),
                                  max_cost_usd=config.get("budget.max_cost_usd")),
                )
            finally:
                await model.close()
            if record["kind"] == "code" and result.outcome in ("completed", "budget"):
                try:
                    changes = await asyncio.to_thread(sandbox.export, self.store.new_result(record["id"]))
                except RefusedChange as e:
                    emit("error", {"error": f"the sandbox's change was refused: {e}"})
                    return replace(result, outcome="failed",
                                   reason=f"the sandbox's change was refused, nothing of it is kept: {e}"), None, ""
                return result, changes, ""
            return result, None, ""
        finally:
            await asyncio.to_thread(sandboxes.destroy, sandbox.id)

    def _finish(self, record: dict, result: AgentResult, changes: list[ChangedFile] | None, diff: str) -> None:
        """A lone run's ending: its message, its change for review, its state."""
        record.update(message=result.message, commit=result.commit, steps=result.steps,
                      input_tokens=result.input_tokens, output_tokens=result.output_tokens,
                      cost_usd=result.cost_usd, checks=result.checks, plan=result.plan)
        if changes is not None:
            taken.promote(self.store.dir(record["id"]))  # a follow-up's hunks: against what the user took
            self.store.save_changes(record["id"], changes)
            self.store.save_review(record["id"], {})  # new hunks, new decisions
            record["changes"] = [{"path": c.path, "status": c.status} for c in changes]
        self.store.prune_results(record["id"])
        if record["kind"] == "code":
            record["failures"] = self._failures(record)
        state = {"completed": "finished", "cancelled": "cancelled"}.get(result.outcome, "failed")
        self._set_state(record, state, result.reason)

    def _finish_attempts(self, record: dict, outcomes: list, cancel: threading.Event) -> None:
        """A best-of-N ending: every attempt kept on its own, the best one chosen for review."""
        summaries = []
        for number, outcome in enumerate(outcomes, 1):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, (SandboxError, cfg.ConfigError)):
                    self._emit(record, "error", {"error": f"{type(outcome).__name__}: {outcome}", "attempt": number})
                summaries.append(attempts.summary(number, "failed", str(outcome), None, "", [], []))
                continue
            result, changes, diff = outcome
            if changes is not None:
                self.store.save_changes(record["id"], changes, attempt=number)
                diff = self.store.diff(record["id"], number)
            state = {"completed": "finished", "cancelled": "cancelled"}.get(result.outcome, "failed")
            summaries.append(attempts.summary(
                number, state, result.reason, result, diff,
                [{"path": c.path, "status": c.status} for c in changes or []], self._failures(record, number)))
        costs = [a["cost_usd"] for a in summaries]
        record.update(attempt_results=summaries, steps=sum(a["steps"] for a in summaries),
                      input_tokens=sum(a["input_tokens"] for a in summaries),
                      output_tokens=sum(a["output_tokens"] for a in summaries),
                      cost_usd=None if None in costs else round(sum(costs), 6))
        best = attempts.rank(summaries)[0]
        self._choose(record, best["attempt"])
        self.store.prune_results(record["id"])
        if best["state"] == "finished":
            return self._set_state(record, "finished", attempts.verdict(best, len(summaries)))
        if cancel.is_set():
            return self._set_state(record, "cancelled", "cancelled; every attempt stopped")
        self._set_state(record, "failed", f"all {len(summaries)} attempts failed: "
                        + "; ".join(f"{a['attempt']}: {a['reason']}" for a in summaries))

    def _choose(self, record: dict, number: int) -> None:
        """Make attempt `number` the task's change: the one reviewed, applied and followed up on."""
        chosen = record["attempt_results"][number - 1]
        self.store.save_changes(record["id"], self.store.changes(record["id"], number))
        self.store.save_review(record["id"], {})
        record.update(attempt=number, **{k: chosen[k] for k in ("message", "checks", "commit", "plan",
                                                                 "changes", "failures")})

    def choose_attempt(self, task_id: str, number: int) -> dict:
        """Put another attempt of a finished best-of-N task up for review (decisions start over)."""
        record = self.get(task_id)
        self._attempt_number(record, number)
        if record["state"] != "finished":
            raise TaskError(f"task {record['id']} is {record['state']}; choose an attempt when it has finished")
        if record.get("attempt") != number:
            self._choose(record, number)
            record["reason"] = attempts.verdict(self.attempt(record["id"], number), len(record["attempt_results"]),
                                                "by you")
            self.store.save(record)
            self._emit(record, "attempt.chosen", {"chosen": number})
        return record

    def attempt(self, task_id: str, number: int) -> dict:
        """One attempt of a best-of-N task as the record keeps it: state, checks, message, change."""
        record = self.get(task_id)
        return record["attempt_results"][self._attempt_number(record, number) - 1]

    def _attempt_number(self, record: dict, number) -> int:
        """`number` when it names one of the task's attempts, else a TaskError saying which exist."""
        count = len(record.get("attempt_results") or [])
        if not count:
            raise TaskError(f"task {record['id']} ran a single attempt; leave out the attempt number")
        if not isinstance(number, int) or isinstance(number, bool) or not 1 <= number <= count:
            raise TaskError(f"task {record['id']} has attempts 1 to {count}; {number!r} is not one of them")
        return number

    def _failures(self, record: dict, attempt: int | None = None) -> list[dict]:
        """Locations from the checks of the last run (of one attempt) whose latest try still failed."""
        events = [e for e in self.store.events(record["id"]) if e.get("attempt") == attempt]
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
    def diff(self, task_id: str, attempt: int | None = None) -> str:
        """The chosen change, or any attempt's of a best-of-N task."""
        record = self.get(task_id)
        return self.store.diff(record["id"], None if attempt is None else self._attempt_number(record, attempt))

    def merge(self, task_id: str, read_current: Callable[[str], bytes | None] | None = None,
              attempt: int | None = None) -> list[Merged]:
        """Every hunk not rejected, merged three ways onto the files as they are now (`read_current`
        gives an editor's unsaved text); naming another attempt of a best-of-N task chooses it first."""
        if attempt is not None:
            self.choose_attempt(task_id, attempt)
        record = self.get(task_id)
        if record["state"] != "finished":
            raise TaskError(f"task {record['id']} is {record['state']}; only a finished task can be applied")
        with Checkout(Path(record["repo"])) as checkout:
            return [self._merge_one(checkout, change, chosen, read_current)
                    for change, chosen in self._kept_hunks(record["id"]).values()]

    @staticmethod
    def _merge_one(checkout: Checkout, change: ChangedFile, chosen: list[Hunk],
                   read_current: Callable[[str], bytes | None] | None) -> Merged:
        """One file's merge, with what a write needs: its mode, whether it is a symlink, and why
        it can't be written (a clash in the checkout, a symlink pointing out of the repository)."""
        path = change.path
        try:
            current = checkout.read(path)
        except CheckoutError as e:
            return Merged(path, None, conflict=True, clash=str(e))
        expect = current.digest() if current else None
        if read_current is not None and (current is None or not current.symlink):
            text = read_current(path)  # the editor's buffer wins over the disk for a text file
            current = None if text is None else Entry(text, current.mode if current else 0o644)
        mode_of = change.result_mode if chosen else change.base_mode
        if change.status == "added" and current is None and chosen and mode_of != SYMLINK and read_current is None:
            return Merged(path, None, mode=_new_mode(mode_of), expect=expect, source=change.copy_result,
                          disk=True)  # written whole, straight from the result: the size does not matter
        if change.symlink or change.large or change.binary:
            wanted, base = with_hunks(change, chosen), change.base
            same = current is not None and wanted is not None and current.data == wanted \
                and current.symlink == (mode_of == SYMLINK)
            at_base = current is None if base is None else (
                current is not None and current.data == base and current.symlink == (change.base_mode == SYMLINK))
            merged = Merged(path, wanted, unchanged=same, conflict=not (same or at_base), disk=True)
        elif current is not None and current.symlink:
            return Merged(path, current.data, conflict=True, clash=f"{path} is a symlink in your checkout")
        else:
            merged = accept(change, chosen, None if current is None else current.data)
        merged.expect, merged.symlink = expect, mode_of == SYMLINK and merged.content is not None
        if merged.symlink and (why := _outward(path, merged.content)):
            merged.skipped, merged.conflict = why, False
        elif merged.content is not None and not merged.symlink:
            merged.mode = _new_mode(mode_of) if current is None or current.symlink else current.mode
            if chosen and change.base_mode and change.result_mode and change.base_mode != change.result_mode:
                merged.mode = _exec_bits(merged.mode, change.result_mode == EXECUTABLE)
            if current is not None and merged.mode != current.mode:
                merged.unchanged, merged.disk = False, True  # a text edit can't set an exec bit
        return merged

    def _kept_hunks(self, task_id: str, kept: tuple[str, ...] = ("pending", "accepted")
                    ) -> dict[str, tuple[ChangedFile, list[Hunk]]]:
        """Each changed file with its hunks whose status is one of `kept` (possibly none): by
        default, those the user has not rejected."""
        found, changes = self._hunks_and_changes(task_id)
        by_file = {c.path: (c, []) for c in changes}
        for hunk, status, change in found:
            if status in kept:
                by_file[change.path][1].append(hunk)
        return by_file

    def accepted_all(self, task_id: str) -> None:
        """After the whole change was applied, every pending hunk counts as accepted."""
        pending = [h.id for h, status, _ in self.hunks(task_id) if status == "pending"]
        if pending:
            self.decide(task_id, pending, "accepted")

    def hunks(self, task_id: str) -> list[tuple[Hunk, str, ChangedFile]]:
        """Every hunk of a finished task with its review status: pending, accepted or rejected.
        A task's hunks are computed once per recorded change (the few latest tasks kept)."""
        return self._hunks_and_changes(task_id)[0]

    def _hunks_and_changes(self, task_id: str) -> tuple[list[tuple[Hunk, str, ChangedFile]], list[ChangedFile]]:
        record = self.get(task_id)
        review = self.store.review(record["id"])
        stamp = self.store.changes_stamp(record["id"])
        with self._hunks_lock:  # the language server works them out on a thread too
            cached = self._hunks.pop(record["id"], None)
        if cached is None or cached[0] != stamp:
            changes = self._changes(record)
            cached = (stamp, [(h, c) for c in changes for h in hunks(c)], changes)
        with self._hunks_lock:
            self._hunks[record["id"]] = cached
            while len(self._hunks) > 8:
                del self._hunks[next(iter(self._hunks))]
        return [(h, review.get(h.id, "pending"), c) for h, c in cached[1]], cached[2]

    def _changes(self, record: dict) -> list[ChangedFile]:
        """The task's change, its files as a checkout of the user's repository writes them (line
        endings and filters from its .gitattributes and config), so they meet the files on disk."""
        root = Path(record["repo"])
        changes = self.store.changes(record["id"], worktree=root if (root / ".git").exists() else None)
        return taken.applied(self.store.dir(record["id"]), changes)

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
        record = self.get(task_id)
        with Checkout(Path(record["repo"])) as checkout:
            merged = [self._merge_one(checkout, change, hunks, read_current) for change, hunks in chosen.values()]
        if clashes := [m.clash for m in merged if m.clash]:
            raise TaskError("nothing was applied: " + "; ".join(clashes))
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

    def apply(self, task_id: str, attempt: int | None = None) -> list[Merged]:
        """Write the merged change into the checkout: every file or none (see `write`)."""
        record = self.get(task_id)
        with Checkout(Path(record["repo"])) as checkout:
            unfinished = checkout.recover(self._journal(record))  # an apply killed earlier is finished first
        merged = self.merge(task_id, attempt=attempt)
        self.write(task_id, merged, unfinished)
        self.accepted_all(record["id"])
        return merged

    def write(self, task_id: str, merged: list[Merged], unfinished: list[str] = ()) -> None:
        """Write merged files into the checkout through checkout.Checkout: never through a symlink,
        never outside it, every file or none. Nothing is written when any file conflicts or
        clashes; a symlink pointing out of the repository is named and left out."""
        record = self.get(task_id)
        if clashes := [m.clash for m in merged if m.clash]:
            raise TaskError("nothing was applied: " + "; ".join(clashes))
        if conflicts := [m.path for m in merged if m.conflict]:
            raise TaskError("your files changed where the task changed them; nothing was applied. Conflicts: "
                            + ", ".join(conflicts))
        writes = [Write(m.path, None if m.content is None and m.source is None else
                        Entry(m.content or b"", m.mode or 0o644, m.symlink, m.source), m.expect)
                  for m in merged if not m.unchanged and not m.skipped]
        try:
            with Checkout(Path(record["repo"])) as checkout:
                checkout.apply(writes, self._journal(record))
        except CheckoutError as e:
            raise TaskError(str(e)) from e
        self._emit(record, "applied", {"files": [w.path for w in writes],
                                       **({"skipped": {m.path: m.skipped for m in merged if m.skipped}}
                                          if any(m.skipped for m in merged) else {}),
                                       **({"unfinished": list(unfinished)} if unfinished else {})})

    def branch(self, task_id: str, name: str | None = None) -> tuple[str, str]:
        """Put the task's change on a new branch of the user's repository (branch.py): (name, commit)."""
        record = self.get(task_id)
        if record["state"] != "finished" or record["kind"] != "code":
            raise TaskError(f"task {record['id']} is {record['state']}; only a finished Code task makes a branch")
        name = name or default_name(record)
        try:
            commit = make_branch(record, self.store.changes(record["id"]), name)
        except BranchError as e:
            raise TaskError(str(e)) from e
        self._emit(record, "branch", {"name": name, "commit": commit})
        return name, commit

    def pull_request(self, task_id: str, name: str | None = None) -> tuple[str, list[list[str]]]:
        """The task's branch (made now, or the one made before), pushed, and a pull request opened
        with `gh` where it can be: what happened, and the commands left to run."""
        record = self.get(task_id)
        made = [e["name"] for e in self.store.events(record["id"]) if e["type"] == "branch"]
        root = Path(record["repo"])
        if name is None and made and subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q",
                                                     f"refs/heads/{made[-1]}"], capture_output=True).returncode == 0:
            name = made[-1]
        else:
            name, _ = self.branch(task_id, name)
        try:
            return open_pull_request(record, name)
        except BranchError as e:
            raise TaskError(str(e)) from e

    def _journal(self, record: dict) -> Path:
        """One apply journal per checkout, whichever task: a killed apply is finished by the next."""
        digest = hashlib.sha256(os.fsencode(record["repo"])).hexdigest()[:16]
        return self.store.root.parent / "applies" / f"{digest}.json"


def _new_mode(git_mode: str | None) -> int:
    """A new file's permission bits, as git's checkout gives them: 0666 or 0777 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if git_mode == EXECUTABLE else 0o666) & ~umask


def _exec_bits(mode: int, executable: bool) -> int:
    """`mode` with the execute bits set where it can read (chmod +x as git does it), or cleared."""
    return mode | (mode & 0o444) >> 2 if executable else mode & ~0o111


def _outward(path: str, target: bytes) -> str | None:
    """Why a symlink the task made must not be created in the checkout: it leads out of the
    repository or into its .git. None when it stays inside."""
    text = os.fsdecode(target)
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), text))
    if text.startswith("/") or resolved == ".." or resolved.startswith("../"):
        return f"a symlink to {text!r}, outside the repository: shown, never applied"
    if any(part.lower() == ".git" for part in resolved.split("/")):
        return f"a symlink to {text!r}, into .git: shown, never applied"
    return None


def _sandbox_config(config: cfg.Config) -> SandboxConfig:
    from offload.sandbox.manager import SandboxConfig

    return SandboxConfig(
        backend=config.get("sandbox.backend"), image=config.get("sandbox.image"),
        network=config.get("sandbox.network"), memory=config.get("sandbox.memory"),
        cpus=config.get("sandbox.cpus"), pids=config.get("sandbox.pids"), disk=config.get("sandbox.disk"),
        snapshot_cache=config.get("sandbox.snapshot_cache"),
        docker_host=config.get("sandbox.docker_host") or None, docker_hosts=list(config.get("sandbox.docker_hosts")),
        setup=config.get("sandbox.setup"), setup_secrets=list(config.get("sandbox.setup_secrets")),
        setup_timeout=config.get("sandbox.setup_timeout"), warm=config.get("sandbox.warm"),
        env=dict(config.get("sandbox.env")), ca_bundle=os.path.expanduser(config.get("sandbox.ca_bundle")),
    )
