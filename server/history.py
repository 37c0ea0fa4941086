"""A task's history, readable: its event log (`tasks/store.py`) told step by step, and followed
while it grows, like `tail -f`.

Each model step with its text, tokens and cost; each command with its exit code, time and output
(head and tail, whole with `full`); patches as diffs; plan updates; the checks the final message
claims, each with the proof the harness found for it; the task's states. Every piece of text
from the log goes through `Out`, so nothing a model or a command wrote can drive the terminal.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .terminal import BOLD, CYAN, DIM, GREEN, RED, YELLOW, Out, diff_styles

HEAD = TAIL = 10  # lines kept at each end of a long output
WIDTH = 400  # characters kept of one output line
STATE_STYLE = {"finished": (GREEN,), "failed": (RED,), "cancelled": (YELLOW,)}
CHECK_STYLE = {"passed": (GREEN,), "failed": (RED,), "blocked": (YELLOW,), "unverified": (YELLOW,), "not run": (RED,)}
PLAN_MARK = {"completed": "[x]", "in_progress": "[>]", "pending": "[ ]"}


@dataclass
class _Output:
    """A command's output as it streams: its whole lines, the line still being written, and how
    many lines are on the screen already."""

    lines: list[str] = field(default_factory=list)
    partial: str = ""
    shown: int = 0

    def add(self, text: str) -> None:
        *whole, self.partial = (self.partial + text).split("\n")
        self.lines += whole


class History:
    """Prints events one at a time; it keeps what a later event refers back to (a result's call,
    a check's chunks)."""

    def __init__(self, out: Out, full: bool = False) -> None:
        self.out, self.full = out, full
        # keyed by (attempt, id): the attempts of a best-of-N task are separate conversations
        self.calls: dict[tuple, dict] = {}  # tool.call events, by call id
        self.streamed: dict[tuple, _Output] = {}  # a running command's output, by call id
        self.exits: dict[tuple, int | None] = {}  # each output chunk's exit code, by chunk id
        self.shown: tuple | None = None  # the call whose lines came last
        self.setup = _Output()  # the setup script's output since its last status
        self.attempt: int | None = None
        self.prefix = ""

    def show(self, event: dict) -> None:
        kind, self.attempt = event.get("type"), event.get("attempt")
        self.prefix = "" if self.attempt is None else f"#{self.attempt} "
        if kind == "tool.output":
            self._streaming(event)
            return
        if kind == "setup" and "output" in event:
            self.setup.add(str(event["output"]))
            return
        self._end_output(self.setup)
        self.setup = _Output()
        try:
            getattr(self, "_on_" + str(kind).replace(".", "_"), self._as_is)(event)
        except (KeyError, TypeError, ValueError, AttributeError):  # a shape this viewer does not know
            self._as_is(event)
        if kind != "tool.call":
            self.shown = None

    def _as_is(self, e: dict) -> None:
        """An event of a type (or shape) without its own rendering: its fields, as they are."""
        rest = {k: v for k, v in e.items() if k not in ("t", "type", "attempt")}
        self._line(f"  {e.get('type')}: {json.dumps(rest, ensure_ascii=False, default=str)}", DIM)

    def _line(self, text: str, *styles: str) -> None:
        for line in text.split("\n"):
            self.out.line(self.prefix + line, *styles)

    def _stamp(self, event: dict) -> str:
        return time.strftime("%H:%M:%S", time.localtime(event.get("t", 0)))

    def _output_lines(self, lines: list[str]) -> None:
        for line in lines:
            if not self.full and len(line) > WIDTH:
                line = f"{line[:WIDTH]}… ({len(line) - WIDTH} more characters)"
            self._line(f"    {line}", DIM)

    def _streaming(self, e: dict) -> None:
        """A piece of a running command's output: its first lines are shown as they come (all of
        them with `full`), the last ones when it ends."""
        key = (self.attempt, e.get("id"))
        if key != self.shown and key in self.calls:
            self._call(self.calls[key], whole=False)  # other events came between: say whose output this is
        self.shown = key
        output = self.streamed.setdefault(key, _Output())
        output.add(str(e.get("chunk", "")))
        end = len(output.lines) if self.full else min(HEAD, len(output.lines))
        self._output_lines(output.lines[output.shown:end])
        output.shown = max(output.shown, end)

    def _end_output(self, output: _Output) -> None:
        """The rest of an output: all of it, or what is left of its head, the count omitted, and its tail."""
        lines = output.lines + ([output.partial] if output.partial else [])
        if self.full or len(lines) <= HEAD + TAIL + 1:
            self._output_lines(lines[output.shown:])
        else:
            self._output_lines(lines[output.shown:HEAD])
            self._line(f"    … {len(lines) - HEAD - TAIL} lines omitted (--full shows them) …", DIM)
            self._output_lines(lines[-TAIL:])

    # ---- events, by type -----------------------------------------------------------------------
    def _on_state(self, e: dict) -> None:
        reason = f": {e['reason']}" if e.get("reason") else ""
        self._line(f"{self._stamp(e)} {e.get('state')}{reason}", BOLD, *STATE_STYLE.get(e.get("state"), ()))

    def _on_sandbox(self, e: dict) -> None:
        warm = ", warm" if e.get("warm") else ""
        self._line(f"  sandbox {e.get('sandbox')} ({e.get('backend')}{warm}), base {str(e.get('base'))[:12]}", DIM)

    def _on_setup(self, e: dict) -> None:
        self._line(f"  setup: {e.get('text') or e.get('status')}")

    def _on_note(self, e: dict) -> None:
        self._line(f"  note: {e.get('text')}", DIM)

    def _on_error(self, e: dict) -> None:
        self._line(f"  error: {e.get('error')}", RED)

    def _on_model_reply(self, e: dict) -> None:
        cost = f" · ${e['cost_usd']:.4f}" if isinstance(e.get("cost_usd"), (int, float)) else ""
        self._line("")
        self._line(f"{self._stamp(e)} step {e.get('step')} · {e.get('input_tokens', 0)} in / "
                   f"{e.get('output_tokens', 0)} out tokens · {e.get('duration', 0):.2f} s{cost}", BOLD)
        if str(e.get("reasoning") or "").strip():
            self._line("\n".join(f"  {line}" for line in str(e["reasoning"]).strip("\n").split("\n")), DIM)
        if str(e.get("text") or "").strip():
            self._line("\n".join(f"  {line}" for line in str(e["text"]).strip("\n").split("\n")))

    def _on_model_wait(self, e: dict) -> None:
        self._line(f"  {e.get('text')}", DIM)

    def _on_model_call_failed(self, e: dict) -> None:
        self._line(f"  model call failed (step {e.get('step')}): {e.get('error')}", YELLOW)

    def _on_model_error(self, e: dict) -> None:
        self._line(f"  model error (step {e.get('step')}): {e.get('error')}", RED)

    def _on_context(self, e: dict) -> None:
        hidden = e.get("hidden") or []
        self._line(f"  context: {len(hidden)} older output(s) hidden from the model ({', '.join(map(str, hidden))})", DIM)

    def _on_loop(self, e: dict) -> None:
        self._line(f"  stopped a loop: {e.get('name')} called {e.get('repeats')} times in a row", RED)

    def _on_tool_call(self, e: dict) -> None:
        self.calls[self.attempt, e.get("id")] = e
        self._call(e, whole=True)
        self.shown = (self.attempt, e.get("id"))

    def _call(self, e: dict, whole: bool) -> None:
        """A call's first lines: the command, or the patch (whole when first shown)."""
        by = " (run by Offload)" if e.get("by") == "harness" else ""
        name, args = e.get("name"), _arguments(e)
        command = args.get("command") if isinstance(args, dict) else None
        if name == "shell" and isinstance(command, list) and command[:1] == ["apply_patch"] and len(command) == 2:
            name, args = "apply_patch", {"input": command[1]}
        if name == "shell" and isinstance(command, list):
            workdir = f"  (in {args['workdir']})" if args.get("workdir") else ""
            self._line(f"  $ {_command_text(command)}{workdir}{by}", BOLD)
        elif name == "apply_patch":
            patch = args.get("input") if isinstance(args, dict) else None
            patch = patch if isinstance(patch, str) else str(e.get("arguments", ""))
            self._line("  apply_patch", BOLD)
            lines = [line for line in patch.split("\n") if line not in ("*** Begin Patch", "*** End Patch")]
            for line in lines if whole else lines[:1]:
                self._line(f"    {line}", *diff_styles(line))
        elif name != "update_plan":
            self._line(f"  {name} {e.get('arguments', '')}", BOLD)

    def _on_tool_result(self, e: dict) -> None:
        call_id = (self.attempt, e.get("id"))
        self.exits[self.attempt, e.get("chunk")] = e.get("exit_code")
        if call_id != self.shown and call_id in self.calls:
            self._call(self.calls[call_id], whole=False)  # other events came between: say which call this is
        text = str(e.get("output", ""))
        if text.startswith("Chunk: "):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        if "exit_code" in e:
            output = self.streamed.pop(call_id, None)
            if output is None:  # no output streamed: the one the model got
                output = _Output()
                output.add(text.split("Output:\n", 1)[-1])
            self._end_output(output)
            ended = " · timed out" if e.get("timed_out") else " · killed" if e.get("killed") else ""
            self._line(f"  exit {e['exit_code']} · {e.get('duration', 0):.2f} s{ended} · {e.get('chunk')}",
                       GREEN if e["exit_code"] == 0 else RED)
        elif not (e.get("name") == "update_plan" and "plan" in e):
            self._line(f"  result · {e.get('chunk')}", DIM)
            output = _Output()
            output.add(text)
            self._end_output(output)

    def _on_plan(self, e: dict) -> None:
        self._line("  plan" + (f": {e['explanation']}" if e.get("explanation") else ""), BOLD)
        for item in e.get("plan") or []:
            if isinstance(item, dict):
                self._line(f"    {PLAN_MARK.get(item.get('status'), '[?]')} {item.get('step')}")

    def _on_commit(self, e: dict) -> None:
        self._line(f"  commit {str(e.get('commit'))[:12]}", DIM)

    def _on_citations(self, e: dict) -> None:
        """The final message's citations that do not hold (its checks come with the `checks` event)."""
        for c in e.get("citations") or []:
            if isinstance(c, dict) and c.get("kind") != "check" and not c.get("ok"):
                self._line(f"  citation {c.get('citation')}: {c.get('reason')}", YELLOW)
        self._line(f"  citations: {e.get('checked', 0)} checked, {e.get('flagged', 0)} flagged", DIM)

    def _on_checks(self, e: dict) -> None:
        """Each check with its proof: the runs it cites and how they exited, or why it does not count."""
        passed = bool(e.get("passed"))
        self._line("  checks: " + ("passed" if passed else "not passed"), BOLD, GREEN if passed else RED)
        for c in e.get("checks") or []:
            if not isinstance(c, dict):
                continue
            status, source = str(c.get("status")), f"  ({c['source']})" if c.get("source") else ""
            self._line(f"    {status:<10} {c.get('check')}{source}", *CHECK_STYLE.get(status, ()))
            runs = ", ".join(f"{chunk} exited {self.exits.get((self.attempt, chunk), '?')}"
                             for chunk in c.get("chunks") or [])
            if c.get("reason"):
                self._line(f"               {c['reason']}" + (f" ({runs})" if runs else ""), YELLOW)
            elif runs:
                self._line(f"               proof: {runs}", DIM)

    def _on_checks_offered(self, e: dict) -> None:
        self._line("  checks offered to the model", DIM)
        for c in e.get("candidates") or []:
            if isinstance(c, dict):
                self._line(f"    {c.get('candidate')}. {c.get('command')}  ({c.get('file')}:{c.get('line')})", DIM)

    def _on_agent_end(self, e: dict) -> None:
        cost = f" · ${e['cost_usd']:.4f}" if isinstance(e.get("cost_usd"), (int, float)) else " · cost not known"
        self._line(f"  {e.get('outcome')}: {e.get('reason')} · {e.get('steps')} steps · "
                   f"{e.get('input_tokens', 0)} in / {e.get('output_tokens', 0)} out tokens "
                   f"({e.get('cached_tokens', 0)} cached){cost}", BOLD)

    def _on_followup(self, e: dict) -> None:
        rejected = f" ({len(e['rejected'])} rejected hunk(s) undone)" if e.get("rejected") else ""
        self._line("")
        self._line(f"{self._stamp(e)} follow-up{rejected}: {e.get('prompt')}", BOLD)

    def _on_review(self, e: dict) -> None:
        self._line(f"  review: {e.get('decision')} {len(e.get('hunks') or [])} hunk(s)")

    def _on_applied(self, e: dict) -> None:
        self._line(f"{self._stamp(e)} applied to the checkout: {', '.join(map(str, e.get('files') or []))}", BOLD)

    def _on_discarded(self, e: dict) -> None:
        self._line(f"{self._stamp(e)} discarded", BOLD)

    def _on_attempt_chosen(self, e: dict) -> None:
        self._line(f"{self._stamp(e)} attempt {e.get('chosen')} chosen", BOLD)


def _arguments(event: dict):
    try:
        return json.loads(event.get("arguments") or "")
    except (json.JSONDecodeError, TypeError):
        return None


def _command_text(command: list) -> str:
    """A shell call as the model meant it: the script of `bash -lc SCRIPT`, else the argv quoted."""
    if len(command) == 3 and command[0] in ("bash", "sh") and command[1] in ("-lc", "-c"):
        return str(command[2])
    return shlex.join(map(str, command))


def follow(log: Path, show: Callable[[dict], None], ended: Callable[[dict], bool],
           idle: Callable[[], None], poll: float = 0.25) -> None:
    """Show each event of `log` as it is appended until one for which `ended(event)` holds; `idle()`
    runs whenever nothing new came (to notice a runner that died). A line still being written waits
    for its end."""
    while not log.exists():
        idle()
        time.sleep(poll)
    pending = b""
    with open(log, "rb") as f:
        while True:
            data = f.read()
            if not data:
                idle()
                time.sleep(poll)
                continue
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash mid-write
                show(event)
                if ended(event):
                    return
