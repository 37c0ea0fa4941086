"""The tools the model gets — Codex's `shell`, `apply_patch` and `update_plan` — and their execution.

Every reply is text the model can act on: a bad argument is an error message, never a crash.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import Sandbox

from .patch import PatchError, apply_patch

DEFAULT_TIMEOUT_MS = 10 * 60 * 1000  # test suites take minutes, not seconds
MAX_TIMEOUT_MS = 60 * 60 * 1000
KEEP_BYTES = 10 * 1024
KEEP_LINES = 256

SHELL = {
    "type": "function",
    "name": "shell",
    "description": "Runs a command in the sandbox and returns its exit code, wall time and output.",
    "parameters": {
        "type": "object",
        "properties": {
            "command": {"type": "array", "items": {"type": "string"}, "description": "The command and its arguments."},
            "workdir": {"type": "string", "description": "The working directory to run the command in."},
            "timeout_ms": {"type": "integer", "description": "The timeout for the command in milliseconds."},
        },
        "required": ["command"],
        "additionalProperties": False,
    },
}
APPLY_PATCH = {
    "type": "function",
    "name": "apply_patch",
    "description": (
        "Edits files with a patch: '*** Begin Patch', then '*** Add File: path', '*** Delete File: path' "
        "or '*** Update File: path' (optionally '*** Move to: path') with '@@' chunks of ' ', '-' and '+' "
        "lines located by their context, then '*** End Patch'."
    ),
    "parameters": {
        "type": "object",
        "properties": {"input": {"type": "string", "description": "The entire patch."}},
        "required": ["input"],
        "additionalProperties": False,
    },
}
UPDATE_PLAN = {
    "type": "function",
    "name": "update_plan",
    "description": "Records the task's plan: steps with a status each; at most one step in_progress.",
    "parameters": {
        "type": "object",
        "properties": {
            "explanation": {"type": "string"},
            "plan": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "step": {"type": "string"},
                        "status": {"type": "string", "enum": ["pending", "in_progress", "completed"]},
                    },
                    "required": ["step", "status"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["plan"],
        "additionalProperties": False,
    },
}


def tool_specs(read_only: bool = False) -> list[dict]:
    return [SHELL, UPDATE_PLAN] if read_only else [SHELL, APPLY_PATCH, UPDATE_PLAN]


def format_output(text: str) -> str:
    """Head and tail of a long output with an 'omitted' marker, as Codex shows it."""
    lines = text.splitlines(keepends=True)
    if len(lines) <= KEEP_LINES and len(text.encode()) <= KEEP_BYTES:
        return text
    half_lines = KEEP_LINES // 2
    head, tail = lines[:half_lines], lines[-half_lines:] if len(lines) > half_lines else []
    head_text = "".join(head).encode()[: KEEP_BYTES // 2].decode(errors="ignore")
    tail_text = "".join(tail).encode()[-(KEEP_BYTES // 2):].decode(errors="ignore")
    omitted = max(0, len(lines) - head_text.count("\n") - tail_text.count("\n"))
    return f"{head_text}\n[... omitted {omitted} of {len(lines)} lines ...]\n\n{tail_text}"


@dataclass
class ToolResult:
    output: str  # what the model sees
    event: dict  # what the log records beside it


class Tools:
    """Runs the model's tool calls in one sandbox."""

    def __init__(self, sandbox: Sandbox, read_only: bool, on_output: Callable[[str, str], None],
                 cancel: threading.Event) -> None:
        self.sandbox = sandbox
        self.read_only = read_only
        self.on_output = on_output  # (call_id, chunk) → the task log
        self.cancel = cancel
        self.plan: list[dict] = []

    def call(self, call_id: str, name: str, arguments: str) -> ToolResult:
        if name == "apply_patch" and not self.read_only:
            try:
                args = json.loads(arguments) if arguments.lstrip().startswith("{") else {"input": arguments}
            except json.JSONDecodeError as e:
                return ToolResult(f"error: apply_patch arguments are not valid JSON ({e}); "
                                  'send {"input": "*** Begin Patch\\n...\\n*** End Patch"}', {"error": "bad json"})
            if not isinstance(args, dict) or not isinstance(args.get("input"), str):
                return ToolResult('error: apply_patch takes {"input": PATCH} where PATCH is a string', {"error": "bad args"})
            return self.patch(args["input"])
        if name not in {spec["name"] for spec in tool_specs(self.read_only)}:
            available = ", ".join(spec["name"] for spec in tool_specs(self.read_only))
            return ToolResult(f"error: unknown tool {name!r}; the tools are: {available}", {"error": "unknown tool"})
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            return ToolResult(f"error: the arguments of {name} are not valid JSON ({e}); resend the call",
                              {"error": "bad json"})
        if not isinstance(args, dict):
            return ToolResult(f"error: the arguments of {name} must be a JSON object", {"error": "bad args"})
        if name == "shell":
            return self.shell(call_id, args)
        return self.update_plan(args)

    def shell(self, call_id: str, args: dict) -> ToolResult:
        command, workdir, timeout_ms = args.get("command"), args.get("workdir"), args.get("timeout_ms")
        if isinstance(command, str):
            command = ["bash", "-lc", command]
        if not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
            return ToolResult('error: shell takes {"command": ["program", "arg", ...]} — a non-empty list of strings',
                              {"error": "bad args"})
        if workdir is not None and not isinstance(workdir, str):
            return ToolResult("error: workdir must be a string", {"error": "bad args"})
        if timeout_ms is not None and (not isinstance(timeout_ms, int) or timeout_ms <= 0):
            return ToolResult("error: timeout_ms must be a positive integer", {"error": "bad args"})
        patch = _embedded_patch(command)
        if patch is not None:
            if self.read_only:
                return ToolResult("error: this is a read-only task; files cannot be edited", {"error": "read-only"})
            return self.patch(patch)
        timeout = min(timeout_ms or DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS) / 1000
        try:
            result = self.sandbox.run(command, workdir=workdir, timeout=timeout,
                                      on_output=lambda chunk: self.on_output(call_id, chunk), cancel=self.cancel)
        except SandboxError as e:
            return ToolResult(f"error: {e}", {"error": str(e)})
        note = ""
        if result.timed_out:
            note = f"command timed out after {timeout:g} seconds; pass a larger timeout_ms if it needs longer\n"
        elif result.output_limited:
            note = "command was stopped: it printed more output than the sandbox keeps\n"
        text = (f"Exit code: {result.exit_code}\nWall time: {result.duration:.1f} seconds\n"
                f"Output:\n{note}{format_output(result.output)}")
        return ToolResult(text, {"exit_code": result.exit_code, "timed_out": result.timed_out,
                                 "duration": round(result.duration, 3)})

    def patch(self, text: str) -> ToolResult:
        try:
            changes, summary = apply_patch(text, self.sandbox.read_file)
            for change in changes:
                if change.kind == "delete":
                    self.sandbox.delete_file(change.path)
                else:
                    if change.new_path:
                        self.sandbox.write_file(change.new_path, change.content)
                        self.sandbox.delete_file(change.path)
                    else:
                        self.sandbox.write_file(change.path, change.content)
        except (PatchError, SandboxError) as e:
            return ToolResult(f"error: the patch was not applied, nothing changed: {e}", {"error": str(e)})
        return ToolResult(summary, {"files": [c.new_path or c.path for c in changes]})

    def update_plan(self, args: dict) -> ToolResult:
        plan = args.get("plan")
        if not isinstance(plan, list) or not all(
            isinstance(s, dict) and isinstance(s.get("step"), str)
            and s.get("status") in ("pending", "in_progress", "completed") for s in plan
        ):
            return ToolResult('error: update_plan takes {"plan": [{"step": str, "status": '
                              '"pending" | "in_progress" | "completed"}]}', {"error": "bad args"})
        self.plan = plan
        return ToolResult("Plan updated", {"plan": plan, "explanation": args.get("explanation")})


def _embedded_patch(command: list[str]) -> str | None:
    """The patch of `["apply_patch", PATCH]` or a shell script that pipes one into apply_patch."""
    if command[0] in ("apply_patch", "applypatch") and len(command) == 2:
        return command[1]
    if len(command) == 3 and command[0] in ("bash", "sh") and command[1] in ("-lc", "-c"):
        script = command[2].lstrip()
        if script.startswith(("apply_patch", "applypatch")):
            return script
    return None
