"""The agent loop: model step, tool calls in the sandbox, repeat until a final message or a limit.

Everything the loop sees and does goes out through `emit` as an event, so the task's log is
the whole story; the loop itself keeps only the conversation it sends to the model, where old
tool outputs are hidden behind their chunk id (never summarised) to stay within the window.
Every ending — finished, failed, a budget, a loop, cancelled — is a clear outcome and reason,
and a cancel never leaves a half-applied patch: only a model call is abandoned mid-way.
"""

from __future__ import annotations

import asyncio
import json
import posixpath
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import Sandbox

from .checks import Check, CheckBook
from .evidence import Chunks, check_citations, checks_passed, task_checks
from .model import Attempt, ModelClient, ModelError, Reply, ToolCall, Usage
from .prompts import system_prompt
from .tools import Tools, tool_specs

Emit = Callable[[str, dict], None]

KEEP_OUTPUTS = 16  # tool outputs the model sees in full; older ones are hidden
CONTEXT_BYTES = 256 * 1024  # and at most this much of them
REPEAT_LIMIT = 3  # the same call this many times in a row gets a warning; once more stops the task
POLL = 0.05  # how soon a cancel or the time budget interrupts a wait
HIDDEN = "[output hidden to save context; it is in the task log as chunk {chunk}]"
REPEATED = ("\n\nNote: you have made exactly this call {n} times in a row and its result will not change. "
            "Do something different, or finish with your final message: the same call again stops the task.")
CANCELLED = "cancelled by the user"
CHECKS_REMINDER = ("Checks must run after the last edit, and these have not run since yours. Run them now, then send "
                   "your final message again with their results, citing each run:\n")
UNDECIDED_REMINDER = ("AGENTS.md names commands you have neither declared nor dismissed: call declare_checks to "
                      "declare the ones that apply (and run them) and dismiss the others with the reason. Candidates ")


@dataclass
class Budget:
    max_steps: int = 60
    max_tokens: int = 2_000_000
    max_minutes: float = 60.0
    max_cost_usd: float = 5.0  # checked only when the model's price is known


@dataclass
class AgentResult:
    outcome: str  # "completed" | "failed" | "cancelled" | "budget"
    reason: str
    message: str = ""
    commit: str | None = None
    steps: int = 0
    input_tokens: int = 0  # every request's, failed ones included
    output_tokens: int = 0
    plan: list = field(default_factory=list)
    cached_tokens: int = 0
    cost_usd: float | None = 0.0  # None when the model has no known price
    model_calls: int = 0
    citations: list = field(default_factory=list)
    checks: list = field(default_factory=list)  # see evidence.task_checks: "passed" only when proven

    def count(self, usage: Usage, cost: float | None) -> None:
        self.model_calls += 1
        self.input_tokens += usage.input_tokens
        self.output_tokens += usage.output_tokens
        self.cached_tokens += usage.cached_tokens
        self.cost_usd = None if cost is None or self.cost_usd is None else self.cost_usd + cost


class _End(Exception):
    def __init__(self, outcome: str, reason: str):
        super().__init__(reason)
        self.outcome, self.reason = outcome, reason


class _Stopped(Exception):
    """A wait was abandoned: the task was cancelled or ran out of time."""


def commit_message(summary: str, prompt: str) -> str:
    """A commit message from the final message's summary (or the prompt when there is none)."""
    summary = re.sub(r"\s*\[c\d+(?:\s*[,;]\s*c\d+)*\]", "", summary)  # chunk ids mean nothing outside the task
    lines = [line.strip() for line in summary.splitlines()]
    body = [line for line in lines if line and not line.startswith("#")]
    subject = (body[0] if body else prompt.strip().splitlines()[0] if prompt.strip() else "Offload change")
    subject = subject.lstrip("-* ").rstrip(".")
    if len(subject) > 72:
        subject = subject[:69].rstrip() + "..."
    return f"{subject}\n\n{summary.strip()}\n" if summary.strip() else subject


def hide_old_outputs(history: list[dict], keep: int, max_bytes: int) -> list[str]:
    """Hides tool outputs beyond the last `keep` or `max_bytes` behind their chunk id; returns those ids.

    Once over a limit it hides down to half of it, so the start of the conversation (and the
    endpoint's prompt cache) stays the same for the next steps instead of shifting every step.
    The latest output is never hidden.
    """
    shown = [item for item in history if item["role"] == "tool" and not item.get("hidden")]
    size = sum(len(item["output"]) for item in shown)
    if len(shown) <= keep and size <= max_bytes:
        return []
    hidden = []
    for item in shown[:-1]:
        if len(shown) - len(hidden) <= keep // 2 and size <= max_bytes // 2:
            break
        if not item.get("chunk"):  # an interrupted call's stand-in output: nothing to point at
            continue
        size -= len(item["output"])
        item["output"], item["hidden"] = HIDDEN.format(chunk=item["chunk"]), True
        hidden.append(item["chunk"])
    return hidden


async def run_agent(
    sandbox: Sandbox,
    model: ModelClient,
    prompt: str,
    emit: Emit,
    cancel: threading.Event,
    read_only: bool = False,
    budget: Budget | None = None,
    *,
    keep_outputs: int = KEEP_OUTPUTS,
    context_bytes: int = CONTEXT_BYTES,
    prior: list[dict] | None = None,
) -> AgentResult:
    """Work on `prompt` in `sandbox` and commit the result there.

    `prior` is the conversation of earlier runs of the same task (user, assistant and tool
    items, no system prompt): a follow-up continues it rather than starting over.
    """
    return await _Agent(sandbox, model, prompt, emit, cancel, read_only, budget or Budget(), keep_outputs,
                        context_bytes, prior or []).run()


class _Agent:
    def __init__(self, sandbox: Sandbox, model: ModelClient, prompt: str, emit: Emit, cancel: threading.Event,
                 read_only: bool, budget: Budget, keep_outputs: int, context_bytes: int, prior: list[dict]) -> None:
        self.sandbox, self.model, self.prompt, self.emit = sandbox, model, prompt, emit
        self.cancel, self.read_only, self.budget = cancel, read_only, budget
        self.keep_outputs, self.context_bytes = keep_outputs, context_bytes
        self.stop = threading.Event()  # cancel or time budget: kills a running command
        self.deadline = time.monotonic() + budget.max_minutes * 60
        self.book = None if read_only else CheckBook(sandbox.snapshot.path, sandbox.snapshot.subdir)
        declare = bool(self.book and self.book.files)
        for call in (c for item in prior for c in item.get("calls", ()) if c.name == "declare_checks" and declare):
            try:  # a follow-up keeps what the earlier runs declared and dismissed
                self.book.declare(json.loads(call.arguments))
            except (json.JSONDecodeError, AttributeError, TypeError):
                pass  # the earlier run was told what was wrong with it
        self.tools = Tools(sandbox, read_only, lambda call_id, chunk: emit("tool.output", {"id": call_id,
                                                                                           "chunk": chunk}), self.stop,
                           self.book if declare else None)
        self.specs = tool_specs(read_only, model.freeform_patch, declare)
        self.chunks = Chunks(prior, root=sandbox.backend.workspace)
        self.subdir = posixpath.normpath(sandbox.snapshot.subdir or ".")
        self.result = AgentResult("failed", "", cost_usd=model.cost(Usage()))
        self.history: list[dict] = []
        self.prior = prior
        self.reminded = False
        self.last_call: tuple[tuple, int] = ((), 0)  # (name, arguments) and how many times in a row

    async def run(self) -> AgentResult:
        watcher = asyncio.get_running_loop().create_task(self._watch())
        try:
            outcome, reason = await self._work()
        finally:
            watcher.cancel()
        r = self.result
        r.outcome, r.reason, r.plan = outcome, reason, self.tools.plan
        self.emit("agent.end", {"outcome": outcome, "reason": reason, "steps": r.steps, "model_calls": r.model_calls,
                                "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                                "cached_tokens": r.cached_tokens, "cost_usd": r.cost_usd})
        return r

    async def _watch(self) -> None:
        while not (self.cancel.is_set() or time.monotonic() >= self.deadline):
            await asyncio.sleep(POLL)
        self.stop.set()

    async def _work(self) -> tuple[str, str]:
        system, notes = system_prompt(self.sandbox.snapshot.path, self.sandbox.snapshot.subdir, self.read_only,
                                      self.book.offer() if self.book else "")
        for note in notes:
            self.emit("note", {"text": note})
        if self.book and self.book.candidates:  # what the model was offered, for the record
            self.emit("checks.offered", {"candidates": [
                {"candidate": n, "command": c.command, "file": c.file, "line": c.line, "directory": c.directory,
                 "placeholders": list(c.placeholders), "notes": list(c.notes), "required": c.required}
                for n, c in enumerate(self.book.candidates, 1)]})
        if self.result.cost_usd is None:
            self.emit("note", {"text": f"no price is known for model {self.model.name!r}: its tokens are counted, "
                                       "its cost is not, and budget.max_cost_usd cannot apply"})
        self.history = [{"role": "system", "content": system}, *self.prior, {"role": "user", "content": self.prompt}]
        try:
            while True:
                self._check_budget()
                reply = await self._step()
                if reply.calls:
                    for call in reply.calls:
                        await self._call(call)
                    continue
                self.result.message = reply.text
                reminder = self._reminder()
                if not reminder or self.reminded:
                    break
                self.reminded = True  # once: the model runs them, or the harness runs the required ones below
                # the log keeps what the model was told, so a follow-up's conversation has it too
                self.emit("note", {"text": "reminded the model of unrun checks: " + ", ".join(
                    c.label() for c in self._unrun()) or "undecided candidates", "told": reminder})
                self.history.append({"role": "user", "content": reminder})
            if missing := [c for c in self._unrun() if c.kind == "required"]:
                await self._run_checks(missing)
            await self._finish()
        except _End as end:
            return end.outcome, end.reason
        return "completed", "the model finished"

    def _stopped(self) -> _End:
        if self.cancel.is_set():
            return _End("cancelled", CANCELLED)
        return _End("budget", f"time budget reached: {self.budget.max_minutes:g} minutes (budget.max_minutes)")

    def _check_budget(self) -> None:
        r, b = self.result, self.budget
        if self.stop.is_set() or self.cancel.is_set() or time.monotonic() >= self.deadline:
            raise self._stopped()
        if r.steps >= b.max_steps:
            raise _End("budget", f"step budget reached: {r.steps} model steps (budget.max_steps = {b.max_steps})")
        if r.input_tokens + r.output_tokens >= b.max_tokens:
            raise _End("budget", f"token budget reached: {r.input_tokens + r.output_tokens} tokens used "
                                 f"(budget.max_tokens = {b.max_tokens})")
        if r.cost_usd is not None and r.cost_usd >= b.max_cost_usd:
            raise _End("budget", f"cost budget reached: ${r.cost_usd:.4f} spent (budget.max_cost_usd = "
                                 f"{b.max_cost_usd:g})")

    def _count_failed(self, step: int, attempts: list[Attempt]) -> None:
        for a in attempts:
            self.result.count(a.usage, a.cost_usd)
            self.emit("model.call.failed", {"step": step, "error": a.error, "duration": a.duration,
                                            **a.usage.as_dict(), "cost_usd": a.cost_usd})

    async def _step(self) -> Reply:
        self.result.steps += 1
        step = self.result.steps
        if hidden := hide_old_outputs(self.history, self.keep_outputs, self.context_bytes):
            self.emit("context", {"hidden": hidden})
        while True:
            try:
                reply = await _until(self.model.step(self.history, self.specs, self._waiting(step)), self.stop)
                break
            except _Stopped:
                raise self._stopped() from None
            except ModelError as e:
                self._count_failed(step, e.attempts)
                if e.context_overflow and (hidden := hide_old_outputs(self.history, 1, 0)):
                    self.emit("context", {"hidden": hidden, "reason": str(e)})
                    continue
                self.emit("model.error", {"step": step, "error": str(e)})
                raise _End("failed", str(e)) from None
        self._count_failed(step, reply.failed)
        self.result.count(reply.usage, reply.cost_usd)
        r = self.result
        self.emit("model.reply", {
            "step": step, "text": reply.text, "duration": round(reply.duration, 4), **reply.usage.as_dict(),
            "cost_usd": reply.cost_usd, "total_tokens": r.input_tokens + r.output_tokens, "total_cost_usd": r.cost_usd,
            "calls": [{"id": c.id, "name": c.name, "arguments": c.arguments, "custom": c.custom} for c in reply.calls],
            **({"reasoning": reply.reasoning} if reply.reasoning else {}),
        })
        self.history.append({"role": "assistant", "content": reply.text, "calls": reply.calls,
                             "reasoning": reply.reasoning})
        return reply

    def _waiting(self, step: int) -> Callable[[str], None]:
        """Tells the log (and so the terminal and the editor's progress) that the model is being waited for."""
        return lambda text: self.emit("model.wait", {"step": step, "text": text})

    async def _call(self, call: ToolCall) -> None:
        if self.stop.is_set():
            raise self._stopped()
        key = (call.name, _normal(call.arguments))
        repeats = self.last_call[1] + 1 if self.last_call[0] == key else 1
        self.last_call = (key, repeats)
        if repeats > REPEAT_LIMIT:
            self.emit("loop", {"id": call.id, "name": call.name, "arguments": call.arguments, "repeats": repeats})
            raise _End("failed", f"stopped a loop: the model made the same {call.name} call {repeats} times in a row")
        self.emit("tool.call", {"id": call.id, "name": call.name, "arguments": call.arguments, "custom": call.custom})
        started = time.monotonic()
        outcome = await asyncio.to_thread(self.tools.call, call.id, call.name, call.arguments, call.custom)
        chunk = self.chunks.add(call=call.id, name=call.name, **{k: outcome.event.get(k) for k in (
            "exit_code", "command", "directory", "files")})
        output = f"Chunk: {chunk}\n{outcome.output}" + (REPEATED.format(n=repeats) if repeats == REPEAT_LIMIT else "")
        self.emit("tool.result", {"id": call.id, "name": call.name, "chunk": chunk, "output": output,
                                  "duration": round(time.monotonic() - started, 4), **outcome.event})
        if call.name == "update_plan" and "plan" in outcome.event:
            self.emit("plan", {"plan": outcome.event["plan"], "explanation": outcome.event.get("explanation")})
        self.history.append({"role": "tool", "call_id": call.id, "output": output, "custom": call.custom,
                             "chunk": chunk})
        if self.stop.is_set():
            raise self._stopped()

    def _unrun(self) -> list[Check]:
        """The checks that must run and have not since the last edit (none before any edit)."""
        if not self.book or not self.chunks.last_edit:
            return []
        return [c for c in self.book.must_run() if self.chunks.latest_run(c.steps) is None]

    def _reminder(self) -> str:
        """What to tell a model that sends its final message with checks not run or candidates undecided."""
        parts = []
        if unrun := self._unrun():
            parts.append(CHECKS_REMINDER + "\n".join(f"- {c.label()} (from {c.file}:{c.line})" for c in unrun))
        if self.book and self.chunks.last_edit and (undecided := [n for n in self.book.undecided()
                                                                  if not self.book.candidates[n - 1].required]):
            parts.append(UNDECIDED_REMINDER + ", ".join(map(str, undecided)) + " of the list you were given.")
        return "\n\n".join(parts)

    async def _run_checks(self, checks: list[Check]) -> None:
        """The model would not run the checks AGENTS.md requires (`## Checks`): run them here, as
        written, and report them honestly in its message."""
        lines = []
        for check in checks:
            call_id = f"harness-{self.chunks.last + 1}"
            args = {"command": ["bash", "-lc", check.command],
                    "workdir": posixpath.relpath(check.directory, self.subdir)}
            self.emit("tool.call", {"id": call_id, "name": "shell", "by": "harness", "arguments": json.dumps(args)})
            started = time.monotonic()
            outcome = await asyncio.to_thread(self.tools.shell, call_id, args)
            chunk = self.chunks.add(call=call_id, name="shell", **{k: outcome.event.get(k) for k in (
                "exit_code", "command", "directory", "files")})
            self.emit("tool.result", {"id": call_id, "name": "shell", "by": "harness", "chunk": chunk,
                                      "output": f"Chunk: {chunk}\n{outcome.output}",
                                      "duration": round(time.monotonic() - started, 4), **outcome.event})
            status = "passed" if outcome.event.get("exit_code") == 0 else "failed"
            lines.append(f"- {check.label()} — {status} [{chunk}]")
        self.result.message = (self.result.message.rstrip() + "\n\n## Testing (run by Offload after the last edit, "
                               "as AGENTS.md asks)\n" + "\n".join(lines) + "\n")

    async def _finish(self) -> None:
        """Commits the work, then checks the final message's citations against the final tree."""
        r = self.result
        if not self.read_only:
            try:
                r.commit = await asyncio.to_thread(self.sandbox.commit, commit_message(r.message, self.prompt))
            except SandboxError as e:
                self.emit("error", {"error": f"commit failed: {e}"})
                raise _End("failed", f"could not commit in the sandbox: {e}") from None
            self.emit("commit", {"commit": r.commit})
        r.citations = await asyncio.to_thread(check_citations, r.message, self.sandbox.read_file, self.chunks,
                                              self.subdir)
        self.emit("citations", {"citations": r.citations, "checked": len(r.citations),
                                "flagged": sum(not c["ok"] for c in r.citations)})
        if self.book:  # a Code task's: an Ask has no checks to prove
            r.checks = task_checks(r.citations, self.book.must_run(), self.book.dismissals(), self.chunks)
            self.emit("checks", {"checks": r.checks, "passed": checks_passed(r.checks)})


def _normal(arguments: str) -> str:
    """Arguments in one spelling, so that a repeat is found whatever the key order or spacing."""
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except json.JSONDecodeError:
        return arguments.strip()


async def _until(coro, stop: threading.Event):
    """Await `coro`, abandoning it (raising _Stopped) as soon as `stop` is set."""
    task = asyncio.ensure_future(coro)
    while True:
        done, _ = await asyncio.wait({task}, timeout=POLL)
        if done:
            return task.result()
        if stop.is_set():
            task.cancel()
            await asyncio.wait({task})  # let the request close its connection; its outcome no longer matters
            raise _Stopped


def preview(arguments: str, limit: int = 120) -> str:
    """A one-line view of a tool call's arguments, for progress displays."""
    try:
        args = json.loads(arguments)
        if isinstance(args, dict) and isinstance(args.get("command"), list):
            text = " ".join(map(str, args["command"]))
        elif isinstance(args, dict) and isinstance(args.get("input"), str):
            text = args["input"].splitlines()[1] if "\n" in args["input"] else args["input"]
        else:
            text = arguments
    except (json.JSONDecodeError, IndexError):
        lines = arguments.splitlines()  # a freeform patch: its first file line says the most
        text = lines[1] if len(lines) > 1 and lines[0].startswith("*** Begin Patch") else arguments
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
