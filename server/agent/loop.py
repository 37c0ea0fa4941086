"""The agent loop: model step, tool calls in the sandbox, repeat until a final message or a budget.

Everything the loop sees and does goes out through `emit` as an event, so the task's log is
the whole story; the loop itself keeps only the conversation it sends to the model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import Sandbox

from .model import ModelClient, ModelError
from .prompts import system_prompt
from .tools import Tools, tool_specs

Emit = Callable[[str, dict], None]


@dataclass
class Budget:
    max_steps: int = 60
    max_tokens: int = 2_000_000
    max_minutes: float = 60.0


@dataclass
class AgentResult:
    outcome: str  # "completed" | "failed" | "cancelled" | "budget"
    reason: str
    message: str = ""
    commit: str | None = None
    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    plan: list = field(default_factory=list)


def commit_message(summary: str, prompt: str) -> str:
    """A commit message from the final message's summary (or the prompt when there is none)."""
    lines = [line.strip() for line in summary.splitlines()]
    body = [line for line in lines if line and not line.startswith("#")]
    subject = (body[0] if body else prompt.strip().splitlines()[0] if prompt.strip() else "Offload change")
    subject = subject.lstrip("-* ").rstrip(".")
    if len(subject) > 72:
        subject = subject[:69].rstrip() + "..."
    return f"{subject}\n\n{summary.strip()}\n" if summary.strip() else subject


async def run_agent(
    sandbox: Sandbox,
    model: ModelClient,
    prompt: str,
    emit: Emit,
    cancel: threading.Event,
    read_only: bool = False,
    budget: Budget | None = None,
) -> AgentResult:
    """Work on `prompt` in `sandbox` and commit the result there."""
    budget = budget or Budget()
    system, notes = system_prompt(sandbox.snapshot.path, sandbox.snapshot.subdir, read_only)
    for note in notes:
        emit("note", {"text": note})
    history: list[dict] = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    tools = Tools(sandbox, read_only, lambda call_id, chunk: emit("tool.output", {"id": call_id, "chunk": chunk}),
                  cancel)
    result = AgentResult("failed", "")
    started = time.monotonic()

    def ended(outcome: str, reason: str) -> AgentResult:
        result.outcome, result.reason, result.plan = outcome, reason, tools.plan
        return result

    while True:
        if cancel.is_set():
            return ended("cancelled", "cancelled by the user")
        if result.steps >= budget.max_steps:
            return ended("budget", f"step budget of {budget.max_steps} reached")
        if result.input_tokens + result.output_tokens >= budget.max_tokens:
            return ended("budget", f"token budget of {budget.max_tokens} reached")
        if time.monotonic() - started >= budget.max_minutes * 60:
            return ended("budget", f"time budget of {budget.max_minutes:g} minutes reached")
        result.steps += 1
        call_started = time.monotonic()
        try:
            reply = await _cancellable(model.step(history, tool_specs(read_only)), cancel)
        except asyncio.CancelledError:
            return ended("cancelled", "cancelled by the user")
        except ModelError as e:
            emit("model.error", {"step": result.steps, "error": str(e)})
            return ended("failed", str(e))
        result.input_tokens += reply.input_tokens
        result.output_tokens += reply.output_tokens
        emit("model.reply", {
            "step": result.steps, "text": reply.text, "duration": round(time.monotonic() - call_started, 3),
            "input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens,
            "calls": [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.calls],
        })
        history.append({"role": "assistant", "content": reply.text, "calls": reply.calls})
        if not reply.calls:
            if not reply.text.strip():
                return ended("failed", "the model sent an empty reply")
            result.message = reply.text
            break
        for call in reply.calls:
            if cancel.is_set():
                return ended("cancelled", "cancelled by the user")
            emit("tool.call", {"id": call.id, "name": call.name, "arguments": call.arguments})
            tool_started = time.monotonic()
            outcome = await asyncio.to_thread(tools.call, call.id, call.name, call.arguments)
            emit("tool.result", {"id": call.id, "name": call.name, "output": outcome.output,
                                 "duration": round(time.monotonic() - tool_started, 3), **outcome.event})
            if call.name == "update_plan" and "plan" in outcome.event:
                emit("plan", {"plan": outcome.event["plan"], "explanation": outcome.event.get("explanation")})
            history.append({"role": "tool", "call_id": call.id, "output": outcome.output, "custom": call.custom})
    if not read_only:
        try:
            result.commit = await asyncio.to_thread(sandbox.commit, commit_message(result.message, prompt))
        except SandboxError as e:
            emit("error", {"error": f"commit failed: {e}"})
            return ended("failed", f"could not commit in the sandbox: {e}")
        emit("commit", {"commit": result.commit})
    return ended("completed", "the model finished")


async def _cancellable(coro, cancel: threading.Event):
    """Await `coro`, abandoning it as soon as `cancel` is set."""
    task = asyncio.ensure_future(coro)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=0.1)
        if not done and cancel.is_set():
            task.cancel()
            raise asyncio.CancelledError
    return task.result()


def preview(arguments: str, limit: int = 120) -> str:
    """A one-line view of a tool call's arguments, for progress displays."""
    try:
        args = json.loads(arguments)
        if isinstance(args, dict) and isinstance(args.get("command"), list):
            text = " ".join(args["command"])
        elif isinstance(args, dict) and isinstance(args.get("input"), str):
            text = args["input"].splitlines()[1] if "\n" in args["input"] else args["input"]
        else:
            text = arguments
    except (json.JSONDecodeError, IndexError):
        text = arguments
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
