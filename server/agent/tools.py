"""The tools the model gets — Codex's `shell`, `apply_patch` and `update_plan`, and `declare_checks`
where an AGENTS.md applies — and their execution.

Every reply is text the model can act on: a bad argument is an error message, never a crash.
A command that changed the workspace's files is an edit, as a patch is: its result carries the
files it changed (`WorkspaceProbe`), so that a test run before it proves nothing.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass

from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import COMMAND_ENV, Sandbox

from .checks import DECLARE_CHECKS, CheckBook
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


# Codex's grammar for the freeform apply_patch (Lark syntax): the model writes the patch as is,
# with no JSON string escaping to get wrong.
PATCH_GRAMMAR = r"""start: begin_patch hunk+ end_patch
begin_patch: "*** Begin Patch" LF
end_patch: "*** End Patch" LF?

hunk: add_hunk | delete_hunk | update_hunk
add_hunk: "*** Add File: " filename LF add_line+
delete_hunk: "*** Delete File: " filename LF
update_hunk: "*** Update File: " filename LF change_move? change?

filename: /(.+)/
add_line: "+" /(.*)/ LF -> line

change_move: "*** Move to: " filename LF
change: (change_context | change_line)+ eof_line?
change_context: ("@@" | "@@ " /(.+)/) LF
change_line: ("+" | "-" | " ") /(.*)/ LF
eof_line: "*** End of File" LF

%import common.LF
"""
APPLY_PATCH_FREEFORM = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edits files. Send the patch itself (no JSON): " + APPLY_PATCH["description"].split(": ", 1)[1],
    "format": {"type": "grammar", "syntax": "lark", "definition": PATCH_GRAMMAR},
}


def tool_specs(read_only: bool = False, freeform: bool = False, declare: bool = False) -> list[dict]:
    """The tools offered; `freeform` offers apply_patch as a Responses custom tool with its grammar;
    `declare` adds declare_checks (a Code task under an AGENTS.md)."""
    if read_only:
        return [SHELL, UPDATE_PLAN]
    tools = [SHELL, APPLY_PATCH_FREEFORM if freeform else APPLY_PATCH, UPDATE_PLAN]
    return tools + [DECLARE_CHECKS] if declare else tools


def schema_problem(value, schema: dict, where: str = "") -> str | None:
    """What is wrong with `value` against the subset of JSON Schema our tools use, or None."""
    kind, name = schema.get("type"), where or "the arguments"
    types = {"object": dict, "array": list, "string": str, "integer": int}
    if kind in types and (not isinstance(value, types[kind]) or isinstance(value, bool)):
        return f"{name} must be {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not {json.dumps(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{name} must be one of {', '.join(map(json.dumps, schema['enum']))}, not {json.dumps(value)}"
    if kind == "object":
        props = schema.get("properties", {})
        missing = [key for key in schema.get("required", []) if key not in value]
        if missing:
            return f"missing {', '.join(map(repr, missing))} in {name}"
        extra = sorted(set(value) - set(props)) if schema.get("additionalProperties") is False else []
        if extra:
            return f"unknown {', '.join(map(repr, extra))} in {name}; allowed: {', '.join(props)}"
        for key, sub in props.items():
            if key in value and (problem := schema_problem(value[key], sub, f"{where}.{key}" if where else key)):
                return problem
    if kind == "array":
        for i, item in enumerate(value):
            if problem := schema_problem(item, schema.get("items", {}), f"{name}[{i}]"):
                return problem
    return None


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


class WorkspaceProbe:
    """Which files of the workspace a command changed, found by git: a private index in the sandbox's
    .git (`offload-probe-index`, first copied from the real one) brought up to date with `git add -A`,
    which trusts the size and mtime of unchanged files and honours .gitignore, so that caches a test
    run writes are no edit; its tree is compared with the last one's. The index is split, so that
    a change rewrites a small file rather than the whole index. It costs milliseconds on a large
    repository (docs/benchmarks.md), and never touches the real index or HEAD the task's commit uses."""

    INDEX = "offload-probe-index"
    # one round trip: seed the index from the real one the first time, bring it up to date (an index git
    # cannot read — the command spoiled it or the real one — is rebuilt from HEAD, and when even that
    # fails the next look starts afresh), print its tree after a mark (git's warnings, if any, come
    # before it), and the files changed since tree $1
    LOOK = ('test -e "$GIT_INDEX_FILE" || cp "$GIT_DIR/index" "$GIT_INDEX_FILE" 2>/dev/null; '
            'git add -A 2>/dev/null || { rm -f "$GIT_INDEX_FILE"; git read-tree HEAD && git add -A; } '
            '|| { rm -f "$GIT_INDEX_FILE"; exit 1; }; '
            't=$(git write-tree) && printf "\\n%s %s\\n" "$0" "$t" && '
            '{ test -z "$1" || test "$1" = "$t" || git diff-tree -r -z --no-renames --name-only "$1" "$t"; }')
    MARK = "offload-probe-tree"

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.tree: str | None = None  # the workspace's tree when last looked at; None: not known

    def forget(self) -> None:
        """Something other than a command (a patch) changed files: the next command starts from a new look."""
        self.tree = None

    def changed(self) -> list[str]:
        """The files (relative to the workspace root) that changed since the last look, sorted; raises
        SandboxError when git cannot tell, and then the next look starts afresh."""
        before, self.tree = self.tree, None
        output = self._run(["sh", "-c", self.LOOK, self.MARK, before or ""], "git add -A").output
        found = re.search(rf"(?:^|\n){self.MARK} ([0-9a-f]{{40}}|[0-9a-f]{{64}})\n", output)
        if not found:
            raise SandboxError(f"git write-tree printed no tree: {output.strip()[-200:]}")
        self.tree = found[1]
        return sorted(name for name in output[found.end():].split("\0") if name) if before else []

    def _run(self, argv: list[str], what: str):
        root = self.sandbox.backend.workspace
        count = int(COMMAND_ENV["GIT_CONFIG_COUNT"])
        env = {**COMMAND_ENV, "PATH": self.sandbox.env["PATH"], "GIT_DIR": f"{root}/.git", "GIT_WORK_TREE": root,
               "GIT_INDEX_FILE": f"{root}/.git/{self.INDEX}",
               # a split index: a look that finds a change rewrites a small file, not the whole index
               f"GIT_CONFIG_KEY_{count}": "core.splitIndex", f"GIT_CONFIG_VALUE_{count}": "true",
               "GIT_CONFIG_COUNT": str(count + 1)}
        result = self.sandbox.runner.run(argv, cwd=root, env=env, timeout=300)
        if result.exit_code != 0:
            raise SandboxError(f"{what} failed in the sandbox: {result.output.strip()}")
        return result


@dataclass
class ToolResult:
    output: str  # what the model sees
    event: dict  # what the log records beside it


class Tools:
    """Runs the model's tool calls in one sandbox."""

    def __init__(self, sandbox: Sandbox, read_only: bool, on_output: Callable[[str, str], None],
                 cancel: threading.Event, checks: CheckBook | None = None) -> None:
        self.sandbox = sandbox
        self.read_only = read_only
        self.checks = checks  # where declare_checks records the model's declarations
        self.on_output = on_output  # (call_id, chunk) → the task log
        self.cancel = cancel
        self.plan: list[dict] = []
        self.probe = WorkspaceProbe(sandbox)

    def call(self, call_id: str, name: str, arguments: str, custom: bool = False) -> ToolResult:
        """Runs one call; `custom` marks a freeform call whose `arguments` is the raw input."""
        specs = {spec["name"]: spec for spec in tool_specs(self.read_only, declare=self.checks is not None)}
        if name == "apply_patch" and self.read_only:
            return ToolResult("error: this is a read-only task; files cannot be edited", {"error": "read-only"})
        if name not in specs:
            return ToolResult(f"error: unknown tool {name!r}; the tools are: {', '.join(specs)}",
                              {"error": "unknown tool"})
        if custom or (name == "apply_patch" and arguments.lstrip().startswith("*** Begin Patch")):
            if name != "apply_patch":
                return ToolResult(f"error: {name} takes JSON arguments, not freeform text", {"error": "bad args"})
            return self.patch(arguments)
        try:
            args = json.loads(arguments or "{}")
        except json.JSONDecodeError as e:
            return ToolResult(f"error: the arguments of {name} are not valid JSON ({e}); resend the call with "
                              f"a JSON object for {_shape(specs[name])}", {"error": "bad json"})
        if name == "shell" and isinstance(args, dict) and isinstance(args.get("command"), str):
            args["command"] = ["bash", "-lc", args["command"]]  # models trained on other harnesses send a string
        problem = schema_problem(args, specs[name]["parameters"])
        if problem:
            return ToolResult(f"error: the arguments of {name} do not fit its schema: {problem}; resend the call "
                              f"with {_shape(specs[name])}", {"error": "bad args"})
        if name == "apply_patch":
            return self.patch(args["input"])
        if name == "shell":
            return self.shell(call_id, args)
        if name == "declare_checks":
            output, event = self.checks.declare(args)
            return ToolResult(output, event)
        return self.update_plan(args)

    def shell(self, call_id: str, args: dict) -> ToolResult:
        command, workdir, timeout_ms = args["command"], args.get("workdir"), args.get("timeout_ms")
        if not command:
            return ToolResult('error: shell takes {"command": ["program", "arg", ...]}: a non-empty list',
                              {"error": "bad args"})
        if timeout_ms is not None and timeout_ms <= 0:
            return ToolResult("error: timeout_ms must be a positive integer", {"error": "bad args"})
        embedded = _embedded_patch(command)
        if embedded is not None:
            if self.read_only:
                return ToolResult("error: this is a read-only task; files cannot be edited", {"error": "read-only"})
            patch, directory = embedded
            return self.patch(patch, posixpath.join(workdir or "", directory))
        timeout = min(timeout_ms or DEFAULT_TIMEOUT_MS, MAX_TIMEOUT_MS) / 1000
        known = self.read_only or self.probe.tree is not None
        if not known:
            try:  # where the command starts from, so that only its own changes are its
                self.probe.changed()
                known = True
            except SandboxError:
                pass  # then it counts as an edit whatever it does
        try:
            result = self.sandbox.run(command, workdir=workdir, timeout=timeout,
                                      on_output=lambda chunk: self.on_output(call_id, chunk), cancel=self.cancel)
        except SandboxError as e:
            self.probe.forget()
            return ToolResult(f"error: {e}", {"error": str(e)})
        note = ""
        if result.killed:
            note = "command was stopped: the task is ending\n"
        elif result.timed_out:
            note = f"command timed out after {timeout:g} seconds; pass a larger timeout_ms if it needs longer\n"
        elif result.output_limited:
            note = "command was stopped: it printed more output than the sandbox keeps\n"
        text = (f"Exit code: {result.exit_code}\nWall time: {result.duration:.1f} seconds\n"
                f"Output:\n{note}{format_output(result.output)}")
        directory = posixpath.relpath(self.sandbox.resolve(workdir), self.sandbox.backend.workspace)
        event = {"exit_code": result.exit_code, "timed_out": result.timed_out, "killed": result.killed,
                 "command": command, "directory": directory, "run_duration": round(result.duration, 4)}
        if files := self._changed_by_command(result.killed, known):
            event["files"] = files
            text = text.rstrip("\n") + "\n" + (
                f"Files changed by this command: {_listed(files)}\n" if files != ["."] else
                "Offload could not tell which files this command changed (git cannot read the workspace): "
                "it counts as an edit\n")
        return ToolResult(text, event)

    def _changed_by_command(self, killed: bool, known: bool) -> list[str]:
        """The files the command just run changed; "." when git cannot tell (before it, when not `known`,
        or after it): then it may have changed any."""
        if self.read_only or killed:  # a killed command ends the task: no evidence is weighed after it
            return []
        try:
            files = self.probe.changed()
        except SandboxError:
            return ["."]
        return files if known else ["."]

    def patch(self, text: str, directory: str = "") -> ToolResult:
        """Applies a patch all or nothing: a write that fails halfway puts back what was written.
        Its paths are relative to `directory` (a `workdir`, or the `cd` before an apply_patch)."""
        base = posixpath.normpath(directory) if directory else ""
        try:
            if base:
                self.sandbox.resolve(base)  # refuses a directory outside the workspace
        except SandboxError as e:
            return ToolResult(f"error: the patch was not applied, nothing changed: {e}", {"error": str(e)})

        def at(path: str) -> str:
            return posixpath.normpath(posixpath.join(base, path)) if base else path

        before: dict[str, bytes | None] = {}

        def read(path: str) -> bytes | None:
            before[at(path)] = self.sandbox.read_file(at(path))
            return before[at(path)]

        try:
            changes, summary = apply_patch(text, read)
        except (PatchError, SandboxError) as e:
            return ToolResult(f"error: the patch was not applied, nothing changed: {e}", {"error": str(e)})
        written: list[str] = []
        try:
            for change in changes:
                for path in filter(None, (change.path, change.new_path)):
                    if at(path) not in before:
                        read(path)
                if change.new_path:
                    written.append(at(change.new_path))
                    self.sandbox.write_file(at(change.new_path), change.content)
                written.append(at(change.path))
                if change.kind == "delete" or change.new_path:
                    self.sandbox.delete_file(at(change.path))
                else:
                    self.sandbox.write_file(at(change.path), change.content)
        except SandboxError as e:
            self._restore({path: before[path] for path in written})
            return ToolResult(f"error: the patch was not applied, nothing changed: {e}", {"error": str(e)})
        finally:
            if written:
                self.probe.forget()  # the patch is its own edit, not the next command's
        return ToolResult(summary, {"files": [at(c.new_path or c.path) for c in changes]})

    def _restore(self, files: dict[str, bytes | None]) -> None:
        for path, data in files.items():
            try:
                if data is None:
                    self.sandbox.delete_file(path)
                else:
                    self.sandbox.write_file(path, data)
            except SandboxError:
                pass  # the sandbox itself is gone; there is nothing left to keep consistent

    def update_plan(self, args: dict) -> ToolResult:
        plan = args["plan"]
        if sum(step["status"] == "in_progress" for step in plan) > 1:
            return ToolResult("error: at most one step of the plan may be in_progress", {"error": "bad args"})
        self.plan = plan
        return ToolResult("Plan updated", {"plan": plan, "explanation": args.get("explanation")})


def _listed(files: list[str], most: int = 20) -> str:
    return ", ".join(files[:most]) + (f" and {len(files) - most} more" if len(files) > most else "")


def _shape(spec: dict) -> str:
    """A one-line example of a tool's arguments, for error messages."""
    props = spec["parameters"]["properties"]
    required = spec["parameters"].get("required", [])
    example = {"array": [], "string": "...", "integer": 0, "object": {}}
    return json.dumps({k: example.get(v.get("type"), "...") for k, v in props.items() if k in required}) + (
        f" (optional: {', '.join(k for k in props if k not in required)})" if set(props) - set(required) else "")


_CD = re.compile(r"cd\s+('[^']*'|\"[^\"]*\"|[^\s;&|]+)\s*&&\s*")


def _embedded_patch(command: list[str]) -> tuple[str, str] | None:
    """(patch, directory) of `["apply_patch", PATCH]`, or of a shell script that feeds one to
    apply_patch (or applypatch), after a `cd DIR &&` as Codex allows."""
    if command[0] in ("apply_patch", "applypatch") and len(command) == 2:
        return command[1], ""
    if len(command) == 3 and command[0] in ("bash", "sh") and command[1] in ("-lc", "-c"):
        script, directory = command[2].lstrip(), ""
        if m := _CD.match(script):
            directory, script = shlex.split(m.group(1))[0], script[m.end():]
        if script.startswith(("apply_patch", "applypatch")):
            return script, directory
    return None
