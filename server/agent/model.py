"""The model client: one step of a conversation over Chat Completions or the Responses API.

The conversation is kept in a neutral form (system, user, assistant with tool calls, tool
outputs) and translated per API, so the loop never cares which one a server speaks. The
`openai` package does the HTTP and retries HTTP errors (429, 5xx, timeouts, refused connections,
honouring Retry-After); a stream cut mid-way and an empty reply it cannot see, so `step` retries
those itself, a bounded number of times. Every attempt is accounted for, failed ones included.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field

import openai

from . import pricing

MAX_BACKOFF = 8.0


@dataclass
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    estimated: bool = False  # counted from the text (4 characters a token): the endpoint reported none

    def as_dict(self) -> dict:
        return {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                "cached_tokens": self.cached_tokens, "estimated": self.estimated}


@dataclass
class Attempt:
    """One request that did not give a usable reply, with what it used."""

    error: str
    usage: Usage
    cost_usd: float | None
    duration: float


class ModelError(Exception):
    """The endpoint failed in a way retries did not fix; the message says what to change."""

    def __init__(self, message: str, attempts: list[Attempt] | None = None, context_overflow: bool = False):
        super().__init__(message)
        self.attempts = attempts or []
        self.context_overflow = context_overflow  # the conversation no longer fits the model's window


class _Interrupted(Exception):
    """A reply that broke off or came back empty: worth asking again."""

    def __init__(self, why: str, usage: Usage,
                 hint: str = "check the network between here and the endpoint, or raise model.max_retries"):
        super().__init__(why)
        self.usage, self.hint = usage, hint


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str
    custom: bool = False  # a freeform (Responses "custom") tool: `arguments` is the raw input


@dataclass
class Reply:
    text: str
    calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    duration: float = 0.0  # seconds spent on the endpoint, retries and backoff included
    failed: list[Attempt] = field(default_factory=list)  # attempts before this reply that broke off


def _estimate(chars: int) -> int:
    return -(-chars // 4)


def _chat_messages(history: list[dict]) -> list[dict]:
    messages = []
    for item in history:
        role = item["role"]
        if role == "assistant":
            message = {"role": "assistant", "content": item.get("content") or None}
            if item.get("calls"):
                message["tool_calls"] = [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for c in item["calls"]
                ]
            messages.append(message)
        elif role == "tool":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": item["output"]})
        else:
            messages.append({"role": role, "content": item["content"]})
    return messages


def _responses_input(history: list[dict]) -> tuple[str, list[dict]]:
    instructions, items = [], []
    for item in history:
        role = item["role"]
        if role == "system":
            instructions.append(item["content"])
        elif role == "assistant":
            if item.get("content"):
                items.append({"role": "assistant", "content": item["content"]})
            for c in item.get("calls", []):
                if c.custom:
                    items.append({"type": "custom_tool_call", "call_id": c.id, "name": c.name, "input": c.arguments})
                else:
                    items.append({"type": "function_call", "call_id": c.id, "name": c.name, "arguments": c.arguments})
        elif role == "tool":
            kind = "custom_tool_call_output" if item.get("custom") else "function_call_output"
            items.append({"type": kind, "call_id": item["call_id"], "output": item["output"]})
        else:
            items.append({"role": role, "content": item["content"]})
    return "\n\n".join(instructions), items


class ModelClient:
    """Talks to one OpenAI-compatible endpoint with one model."""

    def __init__(self, base_url: str, api_key: str, name: str, api: str = "chat", stream: bool = True,
                 timeout: float = 600.0, max_retries: int = 4, freeform_patch: bool = True,
                 backoff: float = 0.5) -> None:
        if api not in ("chat", "responses"):
            raise ModelError(f"model.api must be \"chat\" or \"responses\", not {api!r}")
        self.name, self.api, self.stream = name, api, stream
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.freeform_patch = freeform_patch and api == "responses"  # custom tools exist on Responses only
        self.keyless = api_key in ("", "not-needed")
        self.client = openai.AsyncOpenAI(
            base_url=base_url or None, api_key=api_key or "not-needed", timeout=timeout, max_retries=max_retries
        )

    @property
    def endpoint(self) -> str:
        return str(self.client.base_url).rstrip("/")

    async def close(self) -> None:
        await self.client.close()

    def cost(self, usage: Usage) -> float | None:
        return pricing.cost(self.name, usage.input_tokens, usage.output_tokens, usage.cached_tokens)

    async def step(self, history: list[dict], tools: list[dict]) -> Reply:
        """The model's next move given the conversation so far."""
        started, failed = time.monotonic(), []
        for attempt in itertools.count():
            tried = time.monotonic()
            try:
                reply = await (self._chat(history, tools) if self.api == "chat" else self._responses(history, tools))
                if not reply.text.strip() and not reply.calls:
                    raise _Interrupted("the model sent an empty reply", reply.usage,
                                       "set model.name to a model that can call tools, or raise model.max_retries")
            except _Interrupted as e:
                failed.append(Attempt(str(e), e.usage, self.cost(e.usage), round(time.monotonic() - tried, 3)))
                if attempt < self.max_retries:
                    await asyncio.sleep(min(self.backoff * 2 ** attempt, MAX_BACKOFF))
                    continue
                raise ModelError(f"{e}, {attempt + 1} time(s) in a row; {e.hint}", failed) from None
            except ModelError as e:
                e.attempts[:0] = failed
                raise
            except openai.OpenAIError as e:
                took = round(time.monotonic() - tried, 3)
                failed.append(Attempt(f"{type(e).__name__}: {e}"[:300], Usage(), self.cost(Usage()), took))
                raise await self._explain(e, failed) from e
            reply.cost_usd, reply.failed = self.cost(reply.usage), failed
            reply.duration = time.monotonic() - started
            return reply

    async def _explain(self, e: openai.OpenAIError, failed: list[Attempt]) -> ModelError:
        """A ModelError whose message says what to change."""
        where, retried = self.endpoint, f"after {self.max_retries} retries"
        body = getattr(e, "body", None)
        detail = body["message"] if isinstance(body, dict) and isinstance(body.get("message"), str) else str(e)
        code = getattr(e, "code", None)
        if isinstance(e, openai.AuthenticationError):
            key = ("no API key is set" if self.keyless else "the API key was rejected")
            return ModelError(f"the model endpoint {where} refused the request: {key} (HTTP 401: {detail}); "
                              "set OPENAI_API_KEY (or the variable model.api_key_env names) to a valid key", failed)
        if isinstance(e, openai.PermissionDeniedError):
            return ModelError(f"the API key may not use model {self.name!r} at {where} (HTTP 403: {detail}); "
                              "set model.name to a model the key can use", failed)
        if isinstance(e, openai.NotFoundError):
            if code == "model_not_found" or "model" in detail.lower():
                known = await self._known_models()
                return ModelError(f"model {self.name!r} is not known at {where} (HTTP 404: {detail}); set "
                                  f"model.name (OFFLOAD_MODEL_NAME) to one it serves{known}", failed)
            other = "chat" if self.api == "responses" else "responses"
            return ModelError(f"the endpoint {where} has no {self.api} API (HTTP 404: {detail}); check model.base_url "
                              f"(it usually ends in /v1), or set model.api to \"{other}\"", failed)
        if isinstance(e, openai.RateLimitError):
            if code == "insufficient_quota":
                return ModelError(f"the account behind the API key is out of quota (HTTP 429: {detail})", failed)
            return ModelError(f"the model endpoint {where} is still rate limiting {retried} (HTTP 429: {detail}); "
                              "wait, raise model.max_retries, or lower tasks.concurrency", failed)
        if isinstance(e, openai.BadRequestError):
            if code == "context_length_exceeded" or ("context" in detail.lower() and "length" in detail.lower()):
                return ModelError(f"the conversation no longer fits the model's context window ({detail})", failed,
                                  context_overflow=True)
            other = "chat" if self.api == "responses" else "responses"
            return ModelError(f"the model endpoint {where} refused the request (HTTP 400: {detail}); if it does not "
                              f"support the {self.api} API, set model.api to \"{other}\"", failed)
        if isinstance(e, openai.APIStatusError):
            return ModelError(f"the model endpoint {where} answered HTTP {e.status_code} {retried}: {detail}; "
                              "try again later, or check the server's log", failed)
        if isinstance(e, openai.APITimeoutError):
            return ModelError(f"the model endpoint {where} did not answer within {self.timeout:g} seconds "
                              f"({retried}); raise model.timeout, or check that the server is up", failed)
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or detail
            if type(cause).__name__ in ("RemoteProtocolError", "ReadError"):
                return ModelError(f"the model endpoint {where} kept breaking off the connection ({cause}) {retried}; "
                                  "check the network or proxy in between, or raise model.max_retries", failed)
            return ModelError(f"cannot reach the model endpoint {where} ({cause}) {retried}; check model.base_url "
                              "(or OPENAI_BASE_URL) and that the server is running", failed)
        return ModelError(f"the model endpoint {where} sent a reply that cannot be read: {detail}", failed)

    async def _known_models(self) -> str:
        """', e.g.: a, b' from the endpoint's model list, or '' when it has none to give."""
        try:
            page = await self.client.models.list(timeout=min(self.timeout, 5.0))
            names = [m.id for m in page.data][:10]
        except openai.OpenAIError:
            return ""
        return f", e.g.: {', '.join(names)}" if names else ""

    def _usage(self, sent: int, received: int, reported=None) -> Usage:
        """Reported usage; estimated from the characters when the endpoint sent none."""
        if reported is not None:
            details = (getattr(reported, "prompt_tokens_details", None)
                       or getattr(reported, "input_tokens_details", None))
            return Usage(getattr(reported, "prompt_tokens", None) or getattr(reported, "input_tokens", 0) or 0,
                         getattr(reported, "completion_tokens", None) or getattr(reported, "output_tokens", 0) or 0,
                         getattr(details, "cached_tokens", 0) or 0)
        return Usage(_estimate(sent) if received else 0, _estimate(received), estimated=True)

    async def _chat(self, history: list[dict], tools: list[dict]) -> Reply:
        specs = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
                 for t in tools if t.get("type", "function") == "function"]
        kwargs = {"model": self.name, "messages": _chat_messages(history), "tools": specs}
        sent = len(json.dumps(kwargs["messages"])) + len(json.dumps(specs))
        if not self.stream:
            response = await self.client.chat.completions.create(**kwargs)
            message = response.choices[0].message if response.choices else None
            text = (message.content or "") if message else ""
            calls = [ToolCall(c.id or f"call_{i}", c.function.name, c.function.arguments or "")
                     for i, c in enumerate(getattr(message, "tool_calls", None) or []) if getattr(c, "function", None)]
            received = len(text) + sum(len(c.arguments) for c in calls)
            return Reply(text, calls, self._usage(sent, received, response.usage))
        stream = await self.client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        text, partial, usage, finished = [], {}, None, False
        received = 0
        try:
            async for chunk in stream:
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    finished = finished or choice.finish_reason is not None
                    delta = choice.delta
                    if delta.content:
                        text.append(delta.content)
                        received += len(delta.content)
                    for tc in delta.tool_calls or []:
                        slot = partial.setdefault(tc.index, {"id": "", "name": "", "arguments": []})
                        slot["id"] = tc.id or slot["id"]
                        if tc.function and tc.function.name:
                            slot["name"] = tc.function.name
                        if tc.function and tc.function.arguments:
                            slot["arguments"].append(tc.function.arguments)
                            received += len(tc.function.arguments)
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            raise _Interrupted(f"the model's reply broke off mid-stream ({e.__cause__ or e})",
                               self._usage(sent, received)) from e
        if not finished:
            raise _Interrupted("the model's stream ended before its reply was complete", self._usage(sent, received))
        calls = [ToolCall(s["id"] or f"call_{i}", s["name"], "".join(s["arguments"]))
                 for i, s in sorted(partial.items())]
        return Reply("".join(text), calls, self._usage(sent, received, usage))

    async def _responses(self, history: list[dict], tools: list[dict]) -> Reply:
        instructions, items = _responses_input(history)
        kwargs = {"model": self.name, "input": items, "tools": tools, "store": False}
        if instructions:
            kwargs["instructions"] = instructions
        sent = len(json.dumps(items)) + len(instructions) + len(json.dumps(tools))
        if self.stream:
            response, received = None, 0
            events = await self.client.responses.create(**kwargs, stream=True)
            try:
                async for event in events:
                    if event.type in ("response.completed", "response.incomplete"):
                        response = event.response
                    elif event.type.endswith(".delta"):
                        received += len(getattr(event, "delta", "") or "")
                    elif event.type in ("response.failed", "error"):
                        error = getattr(getattr(event, "response", None), "error", None) or event
                        self._failed(error, self._usage(sent, received))
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                raise _Interrupted(f"the model's reply broke off mid-stream ({e.__cause__ or e})",
                                   self._usage(sent, received)) from e
            if response is None:
                raise _Interrupted("the model's stream ended before the response completed",
                                   self._usage(sent, received))
        else:
            response = await self.client.responses.create(**kwargs)
            if response.status == "failed" and response.error:
                self._failed(response.error, self._usage(sent, 0))
        text, calls = [], []
        for item in response.output or []:
            if item.type == "message":
                text += [part.text for part in item.content if getattr(part, "type", "") == "output_text"]
            elif item.type == "function_call":
                calls.append(ToolCall(item.call_id or item.id, item.name, item.arguments or ""))
            elif item.type == "custom_tool_call":
                calls.append(ToolCall(item.call_id or item.id, item.name, item.input or "", custom=True))
        received = sum(map(len, text)) + sum(len(c.arguments) for c in calls)
        return Reply("".join(text), calls, self._usage(sent, received, response.usage))

    def _failed(self, error, usage: Usage) -> None:
        """A response that failed on the server: retried when the server says it is passing."""
        code, message = getattr(error, "code", None), getattr(error, "message", None) or str(error)
        if code in ("server_error", "rate_limit_exceeded", "server_is_overloaded", "slow_down", None):
            raise _Interrupted(f"the model failed while answering ({message})", usage)
        raise ModelError(f"the model failed while answering: {message} ({code})",
                         [Attempt(message, usage, self.cost(usage), 0.0)])
