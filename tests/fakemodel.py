"""A model stand-in for tests: a local HTTP server speaking the OpenAI wire protocol.

No model can be reached from a test machine, so every test of the agent talks to this server. It
answers Chat Completions and Responses (plain JSON, or server-sent events when asked to stream)
in exactly the shapes the openai SDK parses, and plays *scenarios*: generator functions whose every
``yield`` is the model's next move and evaluates to the tool output the client sent back. A scenario
reacts to real tool output, so a broken tool path fails the test instead of passing on a script.

With ``quirks`` it plays the documented deviations of real servers (``QUIRKS``: text tool calls,
unkeyed parallel calls, refusals of ids or parameters, content-filter chunks, errors mid-stream…),
each named after the server that has them, so that the client is tested against each.

The server keeps no conversation state: each request re-runs its scenario from the start and feeds
it the tool outputs found in the request's own history. Concurrent conversations and client
retries therefore just work; only the count of faults already fired lives on the server.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import itertools
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import traceback
import urllib.parse
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any, TextIO

# --------------------------------------------------------------------------------------------
# Moves: what a scenario yields.


@dataclass(frozen=True)
class ToolCall:
    """A tool call; ``arguments`` is the raw JSON text the client receives (possibly broken)."""

    name: str
    arguments: str
    patch: str | None = None  # set by apply_patch(): lets Responses send it as a freeform call


@dataclass(frozen=True)
class Say:
    """A final assistant message: it ends the turn. Its yield evaluates to the user's follow-up."""

    text: str


@dataclass(frozen=True)
class Fault:
    """A misbehaving endpoint; fires ``times`` times per conversation, then the scenario moves on."""

    kind: str  # fail | hang | drop | cut | empty | stream_error
    times: int = 1
    status: int = 0
    body: dict | str | None = None
    retry_after: float | None = None
    seconds: float = 0.0
    finish: str = "stop"  # the empty reply's finish reason


Move = ToolCall | Say | Fault | list[ToolCall]
Scenario = Callable[["Request"], Generator[Any, Any, Any]]


def call(name: str, arguments: dict | str) -> ToolCall:
    """Any tool call; a string is sent verbatim so a test can send broken JSON on purpose."""
    return ToolCall(name, arguments if isinstance(arguments, str) else json.dumps(arguments))


def shell(command: list[str] | str, workdir: str | None = None, timeout_ms: int | None = None) -> ToolCall:
    """Codex's shell tool; a string becomes ``["bash", "-lc", command]`` as Codex models send it."""
    argv = ["bash", "-lc", command] if isinstance(command, str) else list(command)
    args: dict[str, Any] = {"command": argv}
    if workdir is not None:
        args["workdir"] = workdir
    if timeout_ms is not None:
        args["timeout_ms"] = timeout_ms
    return call("shell", args)


def apply_patch(patch: str) -> ToolCall:
    """Codex's apply_patch: a function call, or a freeform custom call where the client offers one."""
    return ToolCall("apply_patch", json.dumps({"input": patch}), patch=patch)


def update_plan(plan: Iterable[dict | tuple[str, str]], explanation: str | None = None) -> ToolCall:
    """Codex's update_plan; steps are ``{"step", "status"}`` dicts or ``(step, status)`` pairs."""
    steps = [s if isinstance(s, dict) else {"step": s[0], "status": s[1]} for s in plan]
    args: dict[str, Any] = {"plan": steps}
    if explanation is not None:
        args["explanation"] = explanation
    return call("update_plan", args)


def say(text: str) -> Say:
    return Say(text)


def fail(status: int, body: dict | str | None = None, retry_after: float | None = None, times: int = 1) -> Fault:
    """Answer with an HTTP error; ``body`` is a full JSON body (dict) or the error message (str)."""
    return Fault("fail", times, status=status, body=body, retry_after=retry_after)


def hang(seconds: float, times: int = 1) -> Fault:
    """Wait before answering with the next move (a client with a shorter timeout gives up)."""
    return Fault("hang", times, seconds=seconds)


def drop(times: int = 1) -> Fault:
    """Close the connection without any response."""
    return Fault("drop", times)


def cut(times: int = 1) -> Fault:
    """Send the first half of the next move's reply, then close the connection mid-body."""
    return Fault("cut", times)


def empty(times: int = 1, finish: str = "stop") -> Fault:
    """A well-formed reply with no content and no tool calls; ``finish="length"`` is LM Studio's
    answer to a prompt longer than its window."""
    return Fault("empty", times, finish=finish)


def stream_error(body: dict | str, times: int = 1) -> Fault:
    """A 200 whose stream carries only ``{"error": body}``, as LM Studio reports an overflow
    (a string) and OpenRouter a provider's failure (an object); a plain 400 when not streaming."""
    return Fault("stream_error", times, body=body)


def scenario(name: str, variants: bool = False) -> Callable[[Scenario], Scenario]:
    """Names a scenario; clients select it by sending that name as the model.

    With ``variants``, each new conversation with the same prompt gets the next number in
    ``Request.variant`` (0, 1, 2, …) and keeps it through the ids of its tool calls, so parallel
    attempts at one task can be played differently: one fails, another passes.
    """

    def register(fn: Scenario) -> Scenario:
        fn.scenario_name = name  # type: ignore[attr-defined]
        fn.variants = variants  # type: ignore[attr-defined]
        return fn

    return register


def load_scenarios(*modules: ModuleType | str) -> dict[str, Scenario]:
    """All ``@scenario`` functions of the given modules (objects or dotted names), by name."""
    found: dict[str, Scenario] = {}
    for module in modules:
        mod = importlib.import_module(module) if isinstance(module, str) else module
        for value in vars(mod).values():
            if callable(value) and hasattr(value, "scenario_name"):
                found[value.scenario_name] = value
    return found


# --------------------------------------------------------------------------------------------
# Quirks: the documented ways real servers deviate from the wire format, each named after the
# server that has it, with where it is documented. ``FakeModel(quirks=…)`` plays them.

QUIRKS = {
    # Ollama
    "ollama-index-0": "streamed parallel calls all say index 0, each whole in one chunk (ollama#15457, #15497)",
    "ollama-text-calls": "qwen2.5-coder writes its calls as bare JSON in content, tool_calls null (ollama#12174)",
    "ollama-no-tools": "a model without tool support: 400 '… does not support tools' (Ollama's errCapabilityTools)",
    "ollama-models": "lists models newest first, an embedding model first; /api/show says what each can do",
    # LM Studio
    "lmstudio-no-index": "streamed parallel calls carry no index (lmstudio-bug-tracker#759)",
    "lmstudio-no-model": "'No models loaded' until one is loaded (LM Studio's server)",
    # vLLM
    "vllm-hermes-text": "the hermes parser leaves <tool_call> tags in content while streaming (vllm#31871)",
    "vllm-reparse": "past calls' arguments are parsed again: 400 for one that is not JSON (vllm#43995, PR 48922)",
    "vllm-responses-custom": "Responses: a custom tool becomes a function without parameters, calls with "
                             "arguments '{}' (vllm#49724)",
    "vllm-no-auto-tool-choice": "started without --enable-auto-tool-choice: 400 for every request with tools",
    # llama.cpp server
    "llamacpp-reparse": "past calls' arguments are parsed again: 500 for one that is not JSON (llama.cpp#25510)",
    "llamacpp-no-jinja": "started without --jinja: 500 'tools param requires --jinja flag'",
    "llamacpp-no-stream-tools": "older builds: 500 'Cannot use tools with stream' (llama.cpp before PR 12379)",
    # LiteLLM
    "litellm-object-arguments": "arguments as a JSON object on its ollama_chat path (litellm#37792)",
    # Gemini's OpenAI compatibility layer
    "gemini-no-ids": "tool calls without ids",
    # Mistral
    "mistral-ids": "tool-call ids must be 9 letters or digits, 400 otherwise (magentic#276, langchain#24668)",
    "mistral-stream-options": "stream_options refused with a 422 whose message is an object (avante.nvim#2347)",
    # DeepSeek
    "deepseek-reasoning": "thinking mode: replies carry reasoning_content; a tool turn sent back without it is "
                          "refused with 400 (api-docs.deepseek.com/guides/thinking_mode)",
    # Azure OpenAI
    "azure-content-filter": "streams open with a chunk whose choices are [] and carry chunks whose delta is null "
                            "(openai-python#1677, #2313)",
    "azure-deployment": "deployment URLs need ?api-version=, every request the key in an api-key header",
    # OpenRouter
    "openrouter-stream-error": "a provider's failure as an error chunk mid-stream with finish_reason 'error' "
                               "(openrouter.ai/docs/api-reference/errors), once a conversation",
    # Groq
    "groq-tool-use-failed": "an intermittent 400 tool_use_failed (console.groq.com/docs/tool-use), once a "
                            "conversation",
}
# Quirks after which the client makes the ids of the calls itself: the stand-in then pairs its
# calls with the client's by order rather than by id.
_CLIENT_IDS = {"ollama-text-calls", "vllm-hermes-text", "gemini-no-ids"}


# --------------------------------------------------------------------------------------------
# Requests as scenarios and tests see them.


def _text(content: Any) -> str:
    """The text of a message content or tool output: a string, or a list of parts with text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


@dataclass
class Request:
    """One received request; scenarios get the current one, tests get all of them."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # the parsed JSON body, None for GET
    variant: int = 0  # which play of a ``variants`` scenario this conversation gets
    query: dict[str, str] = field(default_factory=dict)
    quirks: frozenset[str] = frozenset()  # the server's deviations (QUIRKS) this request meets

    @property
    def api(self) -> str | None:
        if self.path.endswith("/chat/completions"):
            return "chat"
        return "responses" if self.path.endswith("/responses") else None

    @property
    def calls_as_text(self) -> bool:
        """Whether the server, as its quirks have it, answers with the model's calls written as text."""
        return self.api == "chat" and ("ollama-text-calls" in self.quirks or
                                       ("vllm-hermes-text" in self.quirks and self.stream))

    @property
    def model(self) -> str:
        return str(self._get("model", ""))

    @property
    def stream(self) -> bool:
        return bool(self._get("stream", False))

    @property
    def tools(self) -> list[dict]:
        return list(self._get("tools") or [])

    @property
    def tool_names(self) -> list[str]:
        """Names of the tools offered, in both APIs' shapes; built-in tools go by their type."""
        names = []
        for t in self.tools:
            inner = t.get(t.get("type", ""), {})
            names.append(t.get("name") or (inner.get("name") if isinstance(inner, dict) else None) or t.get("type"))
        return names

    @property
    def instructions(self) -> str:
        """System and developer text (and the Responses ``instructions`` field), joined."""
        return "\n\n".join(item[1] for item in self.items if item[0] == "system")

    @property
    def user_messages(self) -> list[str]:
        return [item[1] for item in self.items if item[0] == "user"]

    @property
    def prompt(self) -> str:
        """The first user message: what the conversation is about."""
        users = self.user_messages
        return users[0] if users else ""

    @cached_property
    def items(self) -> list[tuple]:
        """The history in one shape for both APIs: ``("system"|"user", text)``,
        ``("assistant", text, [(call_id, name), ...])``, ``("output", call_id, text)``."""
        items: list[tuple] = []
        if self.api == "chat":
            for m in self._get("messages") or []:
                role = m.get("role")
                if role in ("system", "developer", "user"):
                    items.append(("user" if role == "user" else "system", _text(m.get("content"))))
                elif role == "assistant":
                    calls = [(c.get("id"), (c.get("function") or c.get("custom") or {}).get("name"))
                             for c in m.get("tool_calls") or []]
                    items.append(("assistant", _text(m.get("content")), calls))
                elif role == "tool":
                    items.append(("output", m.get("tool_call_id"), _text(m.get("content"))))
        elif self.api == "responses":
            if self._get("instructions"):
                items.append(("system", _text(self._get("instructions"))))
            given = self._get("input")
            for it in [{"role": "user", "content": given}] if isinstance(given, str) else given or []:
                kind = it.get("type", "message")
                if kind == "message":
                    role = it.get("role")
                    if role == "assistant":
                        items.append(("assistant", _text(it.get("content")), []))
                    else:
                        items.append(("user" if role == "user" else "system", _text(it.get("content"))))
                elif kind in ("function_call", "custom_tool_call"):
                    items.append(("assistant", "", [(it.get("call_id"), it.get("name"))]))
                elif kind in ("function_call_output", "custom_tool_call_output"):
                    items.append(("output", it.get("call_id"), _text(it.get("output"))))
        return items

    def _get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default) if isinstance(self.body, dict) else default


# --------------------------------------------------------------------------------------------
# Replay: from a request's history to the scenario's next move.


class _Answer(Exception):
    """An HTTP error answer raised from anywhere in request handling."""

    def __init__(self, status: int, message: str, code: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.kind = status, message, code, kind


@dataclass
class _History:
    outputs: dict[str, str] = field(default_factory=dict)  # call_id -> output text
    names: dict[str, str] = field(default_factory=dict)  # call_id -> tool name the client recorded
    followups: list[tuple[str, set[str]]] = field(default_factory=list)  # text, outputs before it


def _history(req: Request) -> _History:
    """Reads the tool outputs and follow-ups, refusing histories the real API refuses too."""
    h = _History()
    pending: list[str] = []  # chat: calls of the last assistant message still awaiting outputs
    after_final = prev_user = False
    for item in req.items:
        kind = item[0]
        if kind == "output":
            cid = item[1]
            if cid not in h.names:
                raise _Answer(400, f"No tool call found for tool output with call_id {cid!r}.")
            h.outputs[cid] = item[2]
            pending = [p for p in pending if p != cid]
            after_final = prev_user = False
            continue
        if req.api == "chat" and pending:
            raise _Answer(400, "An assistant message with 'tool_calls' must be followed by tool messages "
                               f"responding to each 'tool_call_id'. Missing: {', '.join(pending)}.")
        if kind == "assistant":
            for cid, name in item[2]:
                h.names[cid] = name
            pending = [cid for cid, _ in item[2]]
            after_final = bool(item[1].strip()) and not item[2]
        elif kind == "user" and after_final:
            if prev_user:
                text, before = h.followups[-1]
                h.followups[-1] = (f"{text}\n\n{item[1]}", before)
            else:
                h.followups.append((item[1], set(h.outputs)))
        prev_user = kind == "user" and after_final
    missing = [cid for cid in h.names if cid not in h.outputs]
    if missing:
        raise _Answer(400, f"No tool output found for tool call(s) {', '.join(missing)}.")
    return h


@dataclass
class _Plan:
    """What to answer: a move to render (possibly cut short, possibly late) or a fault."""

    index: int
    move: Say | list[ToolCall] | Fault
    delay: float = 0.0
    cut: bool = False


def _call_id(variant: int, index: int, k: int, quirks: frozenset[str] = frozenset()) -> str:
    if "mistral-ids" in quirks:  # nine letters and digits, and still the same for the same call
        return "c" + hashlib.sha1(f"{variant}_{index}_{k}".encode()).hexdigest()[:8]
    return f"call_{index}_{k}" if variant == 0 else f"call_v{variant}_{index}_{k}"


def _describe(move: Any) -> str:
    if isinstance(move, list):
        return "parallel calls " + ", ".join(c.name for c in move)
    if isinstance(move, ToolCall):
        return f"a call to {move.name}"
    return "a final message" if isinstance(move, Say) else repr(move)


class _Replay:
    """One request's pass through its scenario; faults count on the owning server."""

    def __init__(self, server: FakeModel, name: str, fn: Scenario, req: Request):
        self.server, self.name, self.fn, self.req = server, name, fn, req

    def plan(self) -> _Plan:
        h = _history(self.req)
        self.req.variant = self._variant(h)
        gen = self.fn(self.req)
        consumed: set[str] = set()
        followups, index, delay, cut_pending = 0, 0, 0.0, False
        # the client's own ids, in order, where it had to make them
        made = [cid for item in self.req.items if item[0] == "assistant" for cid, _ in item[2]] \
            if self.req.quirks & _CLIENT_IDS else None
        try:
            move = self._step(gen, None, 0, first=True)
            while True:
                leftover = sorted(h.outputs.keys() - consumed)
                at_end = not leftover and followups == len(h.followups)
                value: Any = None
                if isinstance(move, Fault):
                    key = (self.name, self.req.prompt, index)
                    # Faults fire in order: once a cut fires, later faults wait for later requests.
                    if at_end and not cut_pending and self.server._take(key, move.times):
                        if move.kind == "hang":
                            delay += move.seconds
                        elif move.kind == "cut":
                            cut_pending = True
                        else:
                            return _Plan(index, move, delay)
                elif isinstance(move, Say):
                    if followups == len(h.followups):
                        if leftover:
                            raise self._mismatch(index, move, f"the request carries outputs for {leftover}, "
                                                              "calls the scenario never made")
                        return _Plan(index, move, delay, cut_pending)
                    value, before = h.followups[followups]
                    if not before <= consumed:
                        raise self._mismatch(index, move, f"the follow-up {value[:60]!r} comes after outputs "
                                                          f"for {sorted(before - consumed)}, calls not made yet")
                    followups += 1
                else:
                    calls = move if isinstance(move, list) else [move]
                    ids = [_call_id(self.req.variant, index, k, self.req.quirks) for k in range(len(calls))]
                    if made:
                        ids, made = made[:len(calls)], made[len(calls):]
                    missing = [cid for cid in ids if cid not in h.outputs]
                    if len(missing) == len(ids) and at_end:
                        return _Plan(index, calls, delay, cut_pending)
                    if missing:
                        raise self._mismatch(index, move, f"the request has no output for {missing} "
                                                          f"(it has outputs for {leftover})")
                    for cid, c in zip(ids, calls):
                        if h.names[cid] != c.name:
                            raise self._mismatch(index, move, f"the client recorded {cid} as a call to "
                                                              f"{h.names[cid]!r}")
                    if followups < len(h.followups) and not set(ids) <= h.followups[followups][1]:
                        raise self._mismatch(index, move, "its outputs come after a follow-up message that "
                                                          "the scenario has not answered yet")
                    consumed.update(ids)
                    outputs = [h.outputs[cid] for cid in ids]
                    value = outputs if isinstance(move, list) else outputs[0]
                index += 1
                move = self._step(gen, value, index)
        finally:
            gen.close()

    def _variant(self, h: _History) -> int:
        """The conversation's variant: read back from its first call id, or a new one for a new
        conversation of a ``variants`` scenario."""
        if not getattr(self.fn, "variants", False):
            return 0
        for cid in h.names:
            return int(cid.split("_")[1][1:]) if cid.startswith("call_v") else 0
        return self.server._next_variant((self.name, self.req.prompt))

    def _mismatch(self, index: int, move: Any, why: str) -> _Answer:
        return _Answer(400, f"History does not match scenario {self.name!r}: its move {index} is {_describe(move)}, "
                            f"but {why}.", "history_mismatch")

    def _step(self, gen: Generator, value: Any, index: int, first: bool = False) -> Move:
        try:
            move = next(gen) if first else gen.send(value)
        except StopIteration:
            raise _Answer(500, f"Scenario {self.name!r} has no move {index}: it ended, yet the client asked "
                               "for another reply.", "scenario_ended", "scenario_error") from None
        except Exception:
            raise _Answer(500, f"Scenario {self.name!r} failed at move {index}:\n{traceback.format_exc()}",
                          "scenario_error", "scenario_error") from None
        if isinstance(move, tuple):
            move = list(move)
        ok = isinstance(move, (ToolCall, Say, Fault)) or (
            isinstance(move, list) and move and all(isinstance(m, ToolCall) for m in move))
        if not ok:
            raise _Answer(500, f"Scenario {self.name!r} yielded {move!r} at move {index}, which is not a move.",
                          "scenario_error", "scenario_error")
        return move


# --------------------------------------------------------------------------------------------
# Rendering replies in both APIs' shapes.


def _pieces(text: str) -> list[str]:
    """Splits text into up to four deltas, so that clients must join pieces correctly."""
    size = max(1, -(-len(text) // 4))
    return [text[i:i + size] for i in range(0, len(text), size)]


def _sse(obj: dict, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(obj)}\n\n"


@dataclass
class _Reply:
    text: str | None
    calls: list[tuple[str, ToolCall]]
    tag: str  # deterministic id material
    input_tokens: int
    finish: str | None = None  # set: this finish reason whatever the reply holds
    reasoning: str = ""  # DeepSeek's reasoning_content

    @property
    def output_tokens(self) -> int:
        return (len(self.text or "") + sum(len(c.arguments) for _, c in self.calls)) // 4


def _chat_usage(r: _Reply) -> dict:
    return {"prompt_tokens": r.input_tokens, "completion_tokens": r.output_tokens,
            "total_tokens": r.input_tokens + r.output_tokens,
            "prompt_tokens_details": {"cached_tokens": 0}, "completion_tokens_details": {"reasoning_tokens": 0}}


def _as_text(req: Request, r: _Reply) -> _Reply:
    """The calls written into the text, as models whose server leaves them unparsed do."""
    if not r.calls:
        return r
    objects = [json.dumps({"name": c.name, "arguments": json.loads(c.arguments)}) for _, c in r.calls]
    if "ollama-text-calls" in req.quirks:
        text = "\n".join(objects)
    else:
        text = "".join(f"<tool_call>\n{o}\n</tool_call>\n" for o in objects)
    return _Reply((r.text or "") + text, [], r.tag, r.input_tokens, "stop", r.reasoning)


def _wire_call(req: Request, cid: str, c: ToolCall) -> dict:
    arguments: Any = c.arguments
    if "litellm-object-arguments" in req.quirks:
        try:
            arguments = json.loads(c.arguments)
        except ValueError:
            pass
    call = {"id": cid, "type": "function", "function": {"name": c.name, "arguments": arguments}}
    if "gemini-no-ids" in req.quirks:
        del call["id"]
    return call


def _chat_json(req: Request, r: _Reply) -> dict:
    if req.calls_as_text:
        r = _as_text(req, r)
    message: dict[str, Any] = {"role": "assistant", "content": r.text, "refusal": None}
    if r.calls:
        message["tool_calls"] = [_wire_call(req, cid, c) for cid, c in r.calls]
    if r.reasoning:
        message["reasoning_content"] = r.reasoning
    return {"id": f"chatcmpl-{r.tag}", "object": "chat.completion", "created": int(time.time()), "model": req.model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": r.finish or ("tool_calls" if r.calls else "stop")}],
            "usage": _chat_usage(r)}


def _chat_events(req: Request, r: _Reply) -> list[str]:
    with_usage = bool((req._get("stream_options") or {}).get("include_usage"))
    created = int(time.time())
    if req.calls_as_text:
        r = _as_text(req, r)

    def chunk(delta: dict | None, finish: str | None = None) -> dict:
        c = {"id": f"chatcmpl-{r.tag}", "object": "chat.completion.chunk", "created": created, "model": req.model,
             "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        return {**c, "usage": None} if with_usage else c

    chunks = []
    if "azure-content-filter" in req.quirks:
        chunks.append({**chunk({}), "choices": [], "prompt_filter_results": [{"prompt_index": 0,
                                                                              "content_filter_results": {}}]})
    chunks.append(chunk({"role": "assistant", "content": ""}))
    chunks += [chunk({"reasoning_content": piece}) for piece in _pieces(r.reasoning)] if r.reasoning else []
    chunks += [chunk({"content": piece}) for piece in _pieces(r.text or "")]
    for k, (cid, c) in enumerate(r.calls):
        call = _wire_call(req, cid, c)
        if "ollama-index-0" in req.quirks or "litellm-object-arguments" in req.quirks:
            chunks.append(chunk({"tool_calls": [{"index": 0, **call}]}))  # each call whole, all at index 0
            continue
        place = {} if "lmstudio-no-index" in req.quirks else {"index": k}
        chunks.append(chunk({"tool_calls": [{**place, **call, "function": {"name": c.name, "arguments": ""}}]}))
        chunks += [chunk({"tool_calls": [{**place, "function": {"arguments": p}}]}) for p in _pieces(c.arguments)]
    if "azure-content-filter" in req.quirks:
        chunks.append({**chunk(None), "choices": [{"index": 0, "delta": None, "finish_reason": None,
                                                   "content_filter_offsets": {"check_offset": 0, "start_offset": 0,
                                                                              "end_offset": 10},
                                                   "content_filter_results": {}}]})
    chunks.append(chunk({}, r.finish or ("tool_calls" if r.calls else "stop")))
    if with_usage:
        chunks.append({**chunk({}), "choices": [], "usage": _chat_usage(r)})
    return [_sse(c) for c in chunks] + ["data: [DONE]\n\n"]


def _custom_patch(req: Request) -> bool:
    return any(t.get("type") == "custom" and t.get("name") == "apply_patch" for t in req.tools)


def _response_output(req: Request, r: _Reply) -> list[dict]:
    output: list[dict] = []
    if r.text is not None:
        output.append({"id": f"msg_{r.tag}", "type": "message", "role": "assistant", "status": "completed",
                       "content": [{"type": "output_text", "text": r.text, "annotations": [], "logprobs": []}]})
    for cid, c in r.calls:
        if c.patch is not None and _custom_patch(req) and "vllm-responses-custom" in req.quirks:
            output.append({"id": f"fc_{cid}", "type": "function_call", "call_id": cid, "name": c.name,
                           "arguments": "{}", "status": "completed"})
        elif c.patch is not None and _custom_patch(req):
            output.append({"id": f"ctc_{cid}", "type": "custom_tool_call", "call_id": cid, "name": c.name,
                           "input": c.patch})
        else:
            output.append({"id": f"fc_{cid}", "type": "function_call", "call_id": cid, "name": c.name,
                           "arguments": c.arguments, "status": "completed"})
    return output


def _response_json(req: Request, r: _Reply, status: str = "completed", output: list | None = None) -> dict:
    done = status == "completed"
    usage = {"input_tokens": r.input_tokens, "input_tokens_details": {"cached_tokens": 0},
             "output_tokens": r.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
             "total_tokens": r.input_tokens + r.output_tokens}
    return {"id": f"resp_{r.tag}", "object": "response", "created_at": int(time.time()), "status": status,
            "model": req.model, "output": _response_output(req, r) if output is None else output,
            "instructions": req._get("instructions"), "tools": req.tools,
            "tool_choice": req._get("tool_choice", "auto"),
            "parallel_tool_calls": req._get("parallel_tool_calls", True),
            "temperature": 1.0, "top_p": 1.0, "error": None, "incomplete_details": None, "metadata": {},
            "previous_response_id": None, "store": req._get("store", False), "text": {"format": {"type": "text"}},
            "truncation": "disabled", "usage": usage if done else None}


def _response_events(req: Request, r: _Reply) -> list[str]:
    seq = itertools.count()
    events: list[dict] = []

    def ev(kind: str, **fields: Any) -> None:
        events.append({"type": kind, "sequence_number": next(seq), **fields})

    started = _response_json(req, r, "in_progress", [])
    ev("response.created", response=started)
    ev("response.in_progress", response=started)
    output = _response_output(req, r)
    for i, item in enumerate(output):
        iid = item["id"]
        if item["type"] == "message":
            ev("response.output_item.added", output_index=i, item={**item, "status": "in_progress", "content": []})
            part = item["content"][0]
            ev("response.content_part.added", item_id=iid, output_index=i, content_index=0, part={**part, "text": ""})
            for p in _pieces(part["text"]):
                ev("response.output_text.delta", item_id=iid, output_index=i, content_index=0, delta=p, logprobs=[])
            ev("response.output_text.done", item_id=iid, output_index=i, content_index=0, text=part["text"],
               logprobs=[])
            ev("response.content_part.done", item_id=iid, output_index=i, content_index=0, part=part)
        else:
            payload = "input" if item["type"] == "custom_tool_call" else "arguments"
            prefix = "response.custom_tool_call_input" if payload == "input" else "response.function_call_arguments"
            ev("response.output_item.added", output_index=i, item={**item, payload: "", "status": "in_progress"})
            for p in _pieces(item[payload]):
                ev(f"{prefix}.delta", item_id=iid, output_index=i, delta=p)
            ev(f"{prefix}.done", item_id=iid, output_index=i, name=item["name"], **{payload: item[payload]})
        ev("response.output_item.done", output_index=i, item=item)
    ev("response.completed", response=_response_json(req, r, "completed", output))
    return [_sse(e, e["type"]) for e in events]


_ERRORS = {
    400: ("Bad request (stand-in).", "invalid_request_error", None),
    401: ("Incorrect API key provided (stand-in).", "invalid_request_error", "invalid_api_key"),
    403: ("You are not allowed to sample from this model (stand-in).", "invalid_request_error", None),
    404: ("The model `{model}` does not exist or you do not have access to it.", "invalid_request_error",
          "model_not_found"),
    429: ("Rate limit reached for requests (stand-in).", "requests", "rate_limit_exceeded"),
}


class _Refusal(Exception):
    """A real server's refusal, body and all, played for one of its quirks."""

    def __init__(self, status: int, body: dict):
        super().__init__(status)
        self.status, self.body = status, body


def _ollama_capabilities(model: str) -> list[str]:
    """What Ollama's /api/show says a model can do, by the stand-in's names."""
    if "embed" in model:
        return ["embedding"]
    return ["completion"] if model.startswith("gemma") else ["completion", "tools"]


def _refuse(req: Request) -> None:
    """Refuses a request as the servers whose quirks are played would."""
    q, messages = req.quirks, req._get("messages") or []
    if req.tools and "ollama-no-tools" in q:
        raise _Refusal(400, {"error": {"message": f"registry.ollama.ai/library/{req.model}:latest does not support "
                                                  "tools", "type": "api_error", "param": None, "code": None}})
    if req.tools and "vllm-no-auto-tool-choice" in q:
        raise _Refusal(400, {"object": "error", "message": '"auto" tool choice requires --enable-auto-tool-choice '
                                                            "and --tool-call-parser to be set",
                             "type": "BadRequestError", "param": None, "code": 400})
    if req.tools and "llamacpp-no-jinja" in q:
        raise _Refusal(500, {"error": {"code": 500, "message": "tools param requires --jinja flag",
                                       "type": "server_error"}})
    if req.tools and req.stream and "llamacpp-no-stream-tools" in q:
        raise _Refusal(500, {"error": {"code": 500, "message": "Cannot use tools with stream", "type": "server_error"}})
    if "lmstudio-no-model" in q:
        raise _Refusal(404, {"error": {"message": "No models loaded. Please load a model in the developer page or "
                                                  "use the `lms load` command.", "type": "invalid_request_error",
                                       "param": "model", "code": "model_not_found"}})
    if "azure-deployment" in q:
        if "/deployments/" in req.path and not req.query.get("api-version"):
            raise _Refusal(404, {"error": {"code": "404", "message": "Resource not found"}})
        if not req.headers.get("api-key") or "authorization" in req.headers:
            raise _Refusal(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription "
                                           "key or wrong API endpoint. Make sure to provide a valid key for an "
                                           "active subscription and use a correct regional API endpoint for your "
                                           "resource."}})
    if "mistral-stream-options" in q and req._get("stream_options") is not None:
        raise _Refusal(422, {"object": "error", "message": {"detail": [
            {"type": "extra_forbidden", "loc": ["body", "stream_options"], "msg": "Extra inputs are not permitted",
             "input": req._get("stream_options")}]}, "type": "invalid_request_error", "param": None, "code": None})
    calls = [c for m in messages if m.get("role") == "assistant" for c in m.get("tool_calls") or []]
    calls += [{"id": i.get("call_id"), "function": i} for i in req._get("input") or []
              if isinstance(i, dict) and i.get("type") == "function_call"]
    for c in calls:
        if "mistral-ids" in q and not re.fullmatch(r"[A-Za-z0-9]{9}", str(c.get("id"))):
            raise _Refusal(400, {"object": "error", "message": f"Tool call id was {c.get('id')} but must be a-z, A-Z, "
                                                                "0-9, with a length of 9.",
                                 "type": "invalid_request_message_error", "param": None, "code": None})
        if q & {"vllm-reparse", "llamacpp-reparse"}:
            try:
                parsed = json.loads(c["function"].get("arguments") or "")
            except (TypeError, ValueError) as e:
                parsed = e
            if not isinstance(parsed, dict):
                if "vllm-reparse" in q:
                    raise _Refusal(400, {"object": "error", "message": f"Invalid tool call arguments: {parsed}",
                                         "type": "BadRequestError", "param": None, "code": 400})
                raise _Refusal(500, {"error": {"code": 500, "type": "server_error", "message":
                                               "[json.exception.parse_error.101] parse error: syntax error while "
                                               "parsing value"}})
    if "deepseek-reasoning" in q:
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
        for i, m in enumerate(messages):
            tool_turn = i > last_user and m.get("role") == "assistant" and m.get("tool_calls")
            if tool_turn and not m.get("reasoning_content"):
                raise _Refusal(400, {"error": {"message": "Missing `reasoning_content` field in the assistant "
                                                          f"message at message index {i}.",
                                               "type": "invalid_request_error", "param": None,
                                               "code": "invalid_request_error"}})


def _error_body(message: str, kind: str, code: str | None) -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# --------------------------------------------------------------------------------------------
# The HTTP server.


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as real endpoints do
    disable_nagle_algorithm = True  # headers and body go out in separate writes: don't wait 40 ms for an ACK
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        """Quiet: tests read ``FakeModel.requests`` instead."""

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_POST(self) -> None:
        self._serve(self._post)

    def _serve(self, handle: Callable[[Request], None]) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        path, _, query = self.path.partition("?")
        model = self.server.model
        req = Request(self.command, path.rstrip("/"), headers, None,
                      query=dict(urllib.parse.parse_qsl(query)), quirks=model.quirks)
        model.requests.append(req)
        try:
            if raw:
                try:
                    req.body = json.loads(raw)
                except ValueError:
                    raise _Answer(400, "We could not parse the JSON body of your request.") from None
            model._record(req)
            try:
                handle(req)
            except (_Answer, _Refusal, OSError):
                raise
            except Exception:  # a request shape nobody foresaw: still a clear answer, never a hang-up
                raise _Answer(500, f"The stand-in failed on this request:\n{traceback.format_exc()}",
                              "stand_in_error", "server_error") from None
        except _Refusal as r:  # a quirk of the server played: expected, so not among the errors
            model.refusals.append(f"{r.status}: {json.dumps(r.body)}")
            self._json(r.status, r.body, {"x-should-retry": "false"})
        except _Answer as a:
            model._note(f"{a.status} {req.method} {req.path}: {a.message}")
            # Don't let the SDK retry what will fail again: the test should fail at once, loudly.
            self._json(a.status, _error_body(a.message, a.kind, a.code), {"x-should-retry": "false"})
        except OSError:
            self.close_connection = True  # the client left (e.g. it timed out during a hang)

    def _get(self, req: Request) -> None:
        model = self.server.model
        names = model.model_names()
        if req.path == "/v1/models":
            # vLLM says how long a context each model takes
            extra = {"max_model_len": 32768} if any(q.startswith("vllm-") for q in model.quirks) else {}
            self._json(200, {"object": "list", "data": [{**_model_card(n), **extra} for n in names]})
        elif req.path == "/props" and any(q.startswith("llamacpp-") for q in model.quirks):
            self._json(200, {"default_generation_settings": {"n_ctx": 8192}})  # llama.cpp's window
        elif req.path.startswith("/v1/models/"):
            name = req.path.removeprefix("/v1/models/")
            if name not in names:
                raise _Answer(404, f"The model `{name}` does not exist or you do not have access to it.",
                              "model_not_found")
            self._json(200, _model_card(name))
        else:
            raise _Answer(404, f"Unknown path {req.path}.", "not_found")

    def _post(self, req: Request) -> None:
        if req.path == "/api/show" and "ollama-models" in req.quirks:
            return self._json(200, {"capabilities": _ollama_capabilities(req._get("model", ""))})
        if req.api is None:
            raise _Answer(404, f"Unknown path {req.path}.", "not_found")
        if not isinstance(req.body, dict):
            raise _Answer(400, "The request body must be a JSON object.")
        if req.api == "responses" and req._get("previous_response_id"):
            raise _Answer(400, "stand-in needs full input (store=false): it keeps no responses, "
                               "so previous_response_id cannot be resolved.")
        model = self.server.model
        _refuse(req)
        name, fn = model.resolve(req.model)
        plan = _Replay(model, name, fn, req).plan()
        once = (name, req.prompt)  # a conversation meets each of these once
        if "groq-tool-use-failed" in req.quirks and isinstance(plan.move, list) and model._take(("groq", *once), 1):
            raise _Refusal(400, {"error": {"message": "Failed to call a function. Please adjust your prompt. See "
                                           "'failed_generation' for more details.", "type": "invalid_request_error",
                                           "code": "tool_use_failed", "failed_generation": "<function=shell>{"}})
        if "openrouter-stream-error" in req.quirks and model._take(("openrouter", *once), 1):
            return self._openrouter_error(req)
        if plan.delay:
            model._closing.wait(plan.delay)
        move = plan.move
        if isinstance(move, Fault) and move.kind == "drop":
            self.close_connection = True
            return
        if isinstance(move, Fault) and move.kind == "stream_error":
            if not req.stream:
                return self._json(400, {"error": move.body})
            return self._stream([_sse({"error": move.body})], cut=False)
        if isinstance(move, Fault) and move.kind == "fail":
            message, kind, code = _ERRORS.get(move.status, ("The server had an error while processing your "
                                                            "request (stand-in).", "server_error", None))
            body = move.body if isinstance(move.body, dict) else _error_body(
                move.body or message.format(model=req.model), kind, code)
            extra = {} if move.retry_after is None else {"retry-after": f"{move.retry_after:g}"}
            self._json(move.status, body, extra)
            return
        tag = hashlib.sha1(f"{name}\0{req.prompt}\0{plan.index}".encode()).hexdigest()[:16]
        reply = _Reply(move.text if isinstance(move, Say) else None,  # the empty fault has neither
                       [(_call_id(req.variant, plan.index, k, req.quirks), c) for k, c in enumerate(move)]
                       if isinstance(move, list) else [],
                       tag, len(json.dumps(req.body)) // 4,
                       move.finish if isinstance(move, Fault) and move.finish != "stop" else None,
                       "Let me look at this step by step." if "deepseek-reasoning" in req.quirks else "")
        if req.stream:
            events = (_chat_events if req.api == "chat" else _response_events)(req, reply)
            self._stream(events, plan.cut)
        else:
            self._json(200, (_chat_json if req.api == "chat" else _response_json)(req, reply), cut=plan.cut)

    def _openrouter_error(self, req: Request) -> None:
        """A provider's failure as OpenRouter reports it: in a chunk mid-stream, or as the finish reason."""
        error = {"code": 502, "message": "Provider returned error", "metadata": {"provider_name": "stand-in"}}
        base = {"id": "gen-stand-in", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": req.model}
        if not req.stream:
            return self._json(200, {**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": ""}, "finish_reason": "error",
                 "error": error}]})
        self._stream([_sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None}]}),
                      _sse({**base, "error": error, "choices": [{"index": 0, "delta": {"content": ""},
                                                                  "finish_reason": "error"}]}),
                      "data: [DONE]\n\n"], cut=False)

    def _json(self, status: int, obj: dict, headers: Mapping[str, str] | None = None, cut: bool = False) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self._common_headers(headers or {})
        self.wfile.write(data[: len(data) // 2] if cut else data)
        self.close_connection = self.close_connection or cut

    def _stream(self, events: list[str], cut: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self._common_headers({})
        for event in events[: max(1, len(events) // 2)] if cut else events:
            data = event.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        if cut:
            self.close_connection = True  # no terminating chunk: the client sees a broken body
        else:
            self.wfile.write(b"0\r\n\r\n")

    def _common_headers(self, headers: Mapping[str, str]) -> None:
        self.send_header("x-request-id", f"req_{len(self.server.model.requests)}")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()


def _model_card(name: str) -> dict:
    return {"id": name, "object": "model", "created": 0, "owned_by": "offload-tests"}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, model: FakeModel, port: int):
        self.model = model
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients that leave are part of the tests
            super().handle_error(request, client_address)


class FakeModel:
    """The stand-in server: starts on 127.0.0.1 (port 0 picks a free one) in a daemon thread.

    ``default`` answers every model name not registered in ``scenarios`` (a mapping of names to
    scenario functions, or an iterable of ``@scenario`` functions). ``log`` receives every error
    answer as it happens (the command line passes stderr). ``quirks`` names the deviations of real
    servers (keys of ``QUIRKS``) it plays.
    """

    def __init__(self, default: Scenario | None = None, scenarios: Mapping[str, Scenario] | Iterable[Scenario] = (),
                 *, port: int = 0, log: TextIO | None = None, quirks: Iterable[str] = ()):
        self.quirks = frozenset(quirks)
        if unknown := self.quirks - QUIRKS.keys():
            raise ValueError(f"unknown quirks {sorted(unknown)}; known: {', '.join(QUIRKS)}")
        self.refusals: list[str] = []  # the quirks' refusals sent, e.g. "422: {…}"
        self.default = default
        self.scenarios = dict(scenarios) if isinstance(scenarios, Mapping) else {
            fn.scenario_name: fn for fn in scenarios}  # type: ignore[attr-defined]
        if default is not None and hasattr(default, "scenario_name"):
            self.scenarios.setdefault(default.scenario_name, default)
        self.requests: list[Request] = []
        # Every error answer no fault scripted: scenario failures, history mismatches, unknown models.
        self.errors: list[str] = []
        # Where each request's method, path, model and headers go as a JSON line (``--requests``).
        self.request_log: TextIO | None = None
        self._log = log
        self._fired: dict[tuple, int] = {}
        self._variants: dict[tuple, int] = {}
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._http = _HTTPServer(self, port)
        self.port = self._http.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.02,),  # quick close()
                                        name=f"fakemodel:{self.port}", daemon=True)
        self._thread.start()

    def env(self) -> dict[str, str]:
        """Environment for a child process (the offload CLI, an editor) to reach this server."""
        return {"OPENAI_BASE_URL": self.base_url, "OPENAI_API_KEY": "sk-stand-in"}

    def model_names(self) -> list[str]:
        names = list(self.scenarios) + (["default"] if self.default is not None else [])
        if "ollama-models" in self.quirks:  # newest first: an embedding model and one without tools, just pulled
            names = ["nomic-embed-text:latest", "gemma:2b", *names]
        return names

    def resolve(self, model: str) -> tuple[str, Scenario]:
        if model in self.scenarios:
            return model, self.scenarios[model]
        if self.default is None:
            raise _Answer(404, f"The model `{model}` does not exist or you do not have access to it.",
                          "model_not_found")
        return getattr(self.default, "scenario_name", "default"), self.default

    def close(self) -> None:
        """Stops serving and cuts open keep-alive connections, so no client hangs on to it."""
        self._closing.set()
        self._http.shutdown()
        self._http.server_close()
        for conn in list(self._http.connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @classmethod
    def fixture(cls, default: Scenario | None = None, scenarios: Mapping[str, Scenario] | Iterable[Scenario] = ()):
        """A pytest fixture serving these scenarios: ``model = FakeModel.fixture(default=fix)``."""
        import pytest

        @pytest.fixture
        def fake_model():
            with cls(default=default, scenarios=scenarios) as fm:
                yield fm

        return fake_model

    def _next_variant(self, key: tuple) -> int:
        with self._lock:
            self._variants[key] = self._variants.get(key, -1) + 1
            return self._variants[key]

    def _take(self, key: tuple, times: int) -> bool:
        """Counts one firing of the fault at ``key`` if it has any left (atomic: retries race)."""
        with self._lock:
            fired = self._fired.get(key, 0)
            if fired >= times:
                return False
            self._fired[key] = fired + 1
            return True

    def _record(self, req: Request) -> None:
        """One JSON line per request for a test in another process (an editor's: which key it sent)."""
        if self.request_log is not None:
            line = json.dumps({"method": req.method, "path": req.path, "model": req.model, "headers": req.headers})
            with self._lock:
                print(line, file=self.request_log, flush=True)

    def _note(self, error: str) -> None:
        self.errors.append(error)
        if self._log is not None:
            print(error, file=self._log, flush=True)


# --------------------------------------------------------------------------------------------
# Command line: a standalone stand-in for editor end-to-end tests.


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakemodel", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--scenarios", action="append", default=[], metavar="MODULE",
                        help="module whose @scenario functions to serve (repeatable)")
    parser.add_argument("--default", metavar="NAME", help="scenario answering unregistered model names")
    parser.add_argument("--requests", metavar="FILE",
                        help="append each request's method, path, model and headers to FILE, one JSON line each")
    args = parser.parse_args(argv)
    scenarios = load_scenarios(*args.scenarios)
    if args.default is not None and args.default not in scenarios:
        parser.error(f"no scenario named {args.default!r}; known: {', '.join(sorted(scenarios)) or 'none'}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with FakeModel(default=scenarios.get(args.default or ""), scenarios=scenarios, port=args.port,
                   log=sys.stderr) as fm, open(args.requests or os.devnull, "a", encoding="utf-8") as requests:
        fm.request_log = requests if args.requests else None
        print(f"READY {fm.base_url}", flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    # Run the importable copy, so that scenario modules and the server share one set of move classes.
    from tests import fakemodel

    raise SystemExit(fakemodel.main())
