"""The model client: one step of a conversation over Chat Completions or the Responses API.

The conversation is kept in a neutral form (system, user, assistant with tool calls, tool
outputs) and translated per API, so the loop never cares which one a server speaks. The
`openai` package does the HTTP; `step` decides what to ask again, because only the client knows
what a server's error means (`endpoint_errors`): a rate limit, a passing server error, a
connection or stream that broke off, an empty reply or a call the server's parser fumbled are
asked again a bounded number of times; a refusal that cannot pass is reported at once, with the
server's own words and the fix. A server that says nothing for `timeout` seconds is reported
then, not retried. Every attempt is accounted for, failed ones included.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import openai

from . import endpoint_errors as errs
from . import pricing
from .calls import StreamedCalls, arguments_text, sendable, text_calls, unique_ids

MAX_BACKOFF = 8.0
MAX_RETRY_AFTER = 300.0  # a Retry-After longer than this is not waited out
WAIT_NOTICE = 15.0  # seconds without a word from the server before the wait is told (sooner for short timeouts)
AZURE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
AZURE_API_VERSION = "2024-10-21"  # the GA version deployment URLs get when neither they nor model.api_version name one
# Optional parameters each endpoint refused, for every client of this process: a task after the
# first does not meet the refusal again.
_REFUSED: dict[str, set[str]] = {}


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


class _Retry(Exception):
    """A reply that broke off, came back empty or was refused for a passing reason: worth asking again."""

    def __init__(self, why: str, usage: Usage | None = None, hint: str = "", delay: float | None = None):
        super().__init__(why)
        self.usage, self.delay = usage or Usage(), delay
        self.hint = hint or "check the network between here and the endpoint, or raise model.max_retries"


class _Reask(Exception):
    """The server refused something optional that the client has now left out: ask again at once."""


@dataclass
class ToolCall:
    id: str
    name: str
    arguments: str
    custom: bool = False  # a freeform (Responses "custom") tool: `arguments` is the raw input
    written: bool = field(default=False, compare=False)  # written as text by the model, read by the client


@dataclass
class Reply:
    text: str
    calls: list[ToolCall] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    duration: float = 0.0  # seconds spent on the endpoint, retries and backoff included
    failed: list[Attempt] = field(default_factory=list)  # attempts before this reply that broke off
    reasoning: str = ""  # DeepSeek's reasoning_content: sent back with the next request


def _retries(n: int) -> str:
    return f"{n} retry" if n == 1 else f"{n} retries"


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
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": sendable(c.arguments)}}
                    for c in item["calls"]
                ]
            if item.get("reasoning"):  # DeepSeek's thinking mode refuses a tool turn without it
                message["reasoning_content"] = item["reasoning"]
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
                    items.append({"type": "function_call", "call_id": c.id, "name": c.name,
                                  "arguments": sendable(c.arguments)})
        elif role == "tool":
            kind = "custom_tool_call_output" if item.get("custom") else "function_call_output"
            items.append({"type": kind, "call_id": item["call_id"], "output": item["output"]})
        else:
            items.append({"role": role, "content": item["content"]})
    return "\n\n".join(instructions), items


def _as_function(tool: dict) -> dict:
    """A freeform tool offered as a function taking its text as `input` (Codex's JSON form)."""
    return {"type": "function", "name": tool["name"], "description": tool.get("description", ""),
            "parameters": {"type": "object", "properties": {"input": {"type": "string"}}, "required": ["input"]}}


def endpoint_options(base_url: str, api_key: str, api_version: str = "") -> dict:
    """The openai client's base_url, query and headers for an endpoint URL.

    Azure OpenAI (its hosts, or its /openai/ paths behind a proxy): a deployment URL
    (…/openai/deployments/NAME?api-version=…) keeps its api-version as a query on every request
    instead of having paths glued after it, the key goes in the `api-key` header, and the v1 URL
    (…/openai/v1) needs no api-version.
    """
    parts = urlsplit(base_url)
    query = dict(parse_qsl(parts.query))
    azure = (parts.hostname or "").endswith(AZURE_HOSTS) or parts.path.startswith("/openai/")
    if azure and "/deployments/" in parts.path:
        query.setdefault("api-version", api_version or AZURE_API_VERSION)
    headers = {"api-key": api_key} if azure and api_key else {}
    return {"base_url": urlunsplit(parts._replace(query="")) or None, "default_query": query or None,
            "default_headers": headers or None}


class ModelClient:
    """Talks to one OpenAI-compatible endpoint with one model."""

    def __init__(self, base_url: str, api_key: str, name: str, api: str = "chat", stream: bool = True,
                 timeout: float = 120.0, max_retries: int = 4, freeform_patch: bool = True,
                 backoff: float = 0.5, api_version: str = "") -> None:
        if api not in ("chat", "responses"):
            raise ModelError(f"model.api must be \"chat\" or \"responses\", not {api!r}")
        self.name, self.api, self.stream = name, api, stream
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.wait_notice = min(WAIT_NOTICE, timeout / 4)  # told well before the server is given up on
        self.freeform_patch = freeform_patch and api == "responses"  # custom tools exist on Responses only
        self.keyless = api_key in ("", "not-needed")
        self.heard = 0.0  # when the server last sent anything
        options = endpoint_options(base_url, "" if self.keyless else api_key, api_version)
        # the key goes in one header only: Azure's when it is there
        self.headers = {"Authorization": openai.omit} if options["default_headers"] else {}
        self.client = openai.AsyncOpenAI(api_key=api_key or "not-needed", max_retries=0,
                                         timeout=openai.Timeout(timeout, connect=min(timeout, 10.0)), **options)
        self.refused = _REFUSED.setdefault(self.endpoint, set())  # optional parameters never sent here again

    @property
    def endpoint(self) -> str:
        return str(self.client.base_url).rstrip("/")

    async def close(self) -> None:
        await self.client.close()

    def cost(self, usage: Usage) -> float | None:
        return pricing.cost(self.name, usage.input_tokens, usage.output_tokens, usage.cached_tokens)

    async def step(self, history: list[dict], tools: list[dict],
                   on_wait: Callable[[str], None] | None = None) -> Reply:
        """The model's next move given the conversation so far; `on_wait` hears of every wait."""
        started, failed, retries = time.monotonic(), [], 0
        taken = {c.id for item in history for c in item.get("calls", [])}
        while True:
            tried = time.monotonic()
            try:
                try:
                    reply = await self._watched(self._request(history, tools), on_wait)
                except openai.OpenAIError as e:
                    raise await self._judge(e) from e
                if not reply.text.strip() and not reply.calls:
                    raise _Retry("the model sent an empty reply", reply.usage,
                                 "set model.name to a model that can call tools, or raise model.max_retries")
            except _Reask:
                continue
            except _Retry as e:
                failed.append(Attempt(str(e), e.usage, self.cost(e.usage), round(time.monotonic() - tried, 3)))
                if retries >= self.max_retries:
                    again = f", still after {_retries(retries)}" if retries else ""
                    raise ModelError(f"{e}{again}; {e.hint}", failed) from None
                retries += 1
                delay = e.delay if e.delay is not None else min(self.backoff * 2 ** (retries - 1), MAX_BACKOFF)
                if on_wait:
                    on_wait(f"{e}; asking again in {delay:.0f} s (retry {retries} of {self.max_retries})")
                await asyncio.sleep(delay)
                continue
            except ModelError as e:
                failed.append(Attempt(str(e)[:300], Usage(), self.cost(Usage()), round(time.monotonic() - tried, 3)))
                after = f" (after {_retries(retries)})" if retries else ""
                raise ModelError(f"{e}{after}", failed, e.context_overflow) from None
            unique_ids(reply.calls, taken)
            reply.cost_usd, reply.failed = self.cost(reply.usage), failed
            reply.duration = time.monotonic() - started
            return reply

    async def _watched(self, request, on_wait):
        """Awaits `request`, telling `on_wait` each time the server has been silent for a while."""
        task = asyncio.ensure_future(request)
        self.heard = time.monotonic()
        told = 0.0
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.wait_notice)
                if done:
                    return task.result()
                quiet = time.monotonic() - self.heard
                if on_wait and quiet >= self.wait_notice and quiet - told >= self.wait_notice:
                    told = quiet
                    on_wait(f"waiting for the model: nothing from {self.endpoint} for {quiet:.0f} s "
                            f"(it is given {self.timeout:g} s: model.timeout)")
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})

    async def _judge(self, e: openai.OpenAIError) -> Exception:
        """What an error from the endpoint calls for: a _Retry, a _Reask, or a ModelError saying what to change."""
        where, text = self.endpoint, errs.detail(e)
        status = getattr(e, "status_code", None)
        said = f"HTTP {status}: {text}" if status else text
        if errs.overflow(text):
            return ModelError(f"the conversation no longer fits the model's context window ({said}); give the model "
                              "a larger window on the server (Ollama: OLLAMA_CONTEXT_LENGTH; llama.cpp: -c; "
                              "LM Studio: the context length when loading)", context_overflow=True)
        if status in (400, 422) and (param := errs.refused_parameter(text, self._optional())):
            self.refused.add(param)
            return _Reask(param)
        if fix := errs.tool_fix(text):
            return ModelError(f"the model endpoint {where} cannot serve model {self.name!r} with tools as it is set "
                              f"up ({said}); {fix}")
        if isinstance(e, openai.AuthenticationError):
            key = "no API key is set" if self.keyless else "the API key was rejected"
            return ModelError(f"the model endpoint {where} refused the request: {key} ({said}); "
                              "set OPENAI_API_KEY (or the variable model.api_key_env names) to a valid key")
        if isinstance(e, openai.PermissionDeniedError):
            return ModelError(f"the API key may not use model {self.name!r} at {where} ({said}); "
                              "set model.name to a model the key can use")
        if isinstance(e, openai.NotFoundError):
            if getattr(e, "code", None) == "model_not_found" or "model" in text.lower():
                known = [card.get("id", "?") for card in await self.listed()]
                return ModelError(f"model {self.name!r} is not known at {where} ({said}); set model.name "
                                  "(OFFLOAD_MODEL_NAME) to one it serves" + (f", e.g.: {', '.join(known[:10])}"
                                                                             if known else ""))
            other = "chat" if self.api == "responses" else "responses"
            return ModelError(f"the endpoint {where} has no {self.api} API ({said}); check model.base_url "
                              f"(it usually ends in /v1), or set model.api to \"{other}\"")
        if isinstance(e, openai.RateLimitError):
            if getattr(e, "code", None) == "insufficient_quota":
                return ModelError(f"the account behind the API key is out of quota ({said})")
            return _Retry(f"the model endpoint {where} is rate limiting ({said})", delay=self._retry_after(e),
                          hint="wait, raise model.max_retries, or lower tasks.concurrency")
        if errs.transient(e, text):
            return _Retry(f"the model endpoint {where} could not read the model's tool call ({said})",
                          hint="set model.name to a model that calls tools more reliably, or raise model.max_retries")
        if isinstance(e, openai.APIStatusError):
            if status in (408, 409) or status >= 500:
                return _Retry(f"the model endpoint {where} answered {said}", delay=self._retry_after(e),
                              hint="try again later, or check the server's log")
            return ModelError(f"the model endpoint {where} refused the request ({said})")
        if isinstance(e, openai.APITimeoutError):
            return ModelError(f"the model endpoint {where} sent nothing for {self.timeout:g} seconds; check that the "
                              "server is up and not stuck, or raise model.timeout for a model that needs longer "
                              "(a long prompt on a CPU)")
        if isinstance(e, openai.APIConnectionError):
            cause = e.__cause__ or text
            if type(cause).__name__ in ("RemoteProtocolError", "ReadError"):
                return _Retry(f"the model endpoint {where} broke off the connection ({cause})")
            return _Retry(f"cannot reach the model endpoint {where} ({cause})",
                          hint="check model.base_url (or OPENAI_BASE_URL) and that the server is running")
        if isinstance(e, openai.APIError):  # an error the server sent inside a stream (OpenRouter, LM Studio)
            return _Retry(f"the model endpoint {where} reported an error mid-stream ({text})",
                          hint="try again later, or check the server's log")
        return ModelError(f"the model endpoint {where} sent a reply that cannot be read: {text}")

    def _retry_after(self, e: openai.APIStatusError) -> float | None:
        try:
            value = float(e.response.headers.get("retry-after", ""))
        except ValueError:
            return None
        return min(max(value, 0.0), MAX_RETRY_AFTER)

    def _optional(self) -> set[str]:
        """The optional parameters this client sends to this server."""
        if self.api == "responses":
            sent = {"store"}
        else:
            sent = {"stream_options"} if self.stream else set()
        return sent - self.refused

    async def listed(self) -> list[dict]:
        """The endpoint's model cards (with whatever else a server says of each, such as its
        context length), or [] when it has none to give."""
        try:
            page = await self.client.models.list(timeout=min(self.timeout, 5.0), extra_headers=self.headers)
            return [m.to_dict(warnings=False) for m in page.data]
        except openai.OpenAIError:
            return []

    def _usage(self, sent: int, received: int, reported=None) -> Usage:
        """Reported usage; estimated from the characters when the endpoint sent none."""
        if reported is not None:
            details = (getattr(reported, "prompt_tokens_details", None)
                       or getattr(reported, "input_tokens_details", None))
            return Usage(getattr(reported, "prompt_tokens", None) or getattr(reported, "input_tokens", 0) or 0,
                         getattr(reported, "completion_tokens", None) or getattr(reported, "output_tokens", 0) or 0,
                         getattr(details, "cached_tokens", 0) or 0)
        return Usage(_estimate(sent) if received else 0, _estimate(received), estimated=True)

    async def _request(self, history: list[dict], tools: list[dict]) -> Reply:
        return await (self._chat(history, tools) if self.api == "chat" else self._responses(history, tools))

    def _with_text_calls(self, text: str, calls: list[ToolCall], tools: list[dict]) -> tuple[str, list[ToolCall]]:
        if calls:
            return text, calls
        rest, found = text_calls(text, {t["name"] for t in tools})
        return rest, [ToolCall("", name, arguments, written=True) for name, arguments in found]

    async def _chat(self, history: list[dict], tools: list[dict]) -> Reply:
        specs = [{"type": "function", "function": {k: v for k, v in t.items() if k != "type"}}
                 for t in tools if t.get("type", "function") == "function"]
        kwargs = {"model": self.name, "messages": _chat_messages(history), "tools": specs,
                  "extra_headers": self.headers}
        sent = len(json.dumps(kwargs["messages"])) + len(json.dumps(specs))
        if not self.stream:
            response = await self.client.chat.completions.create(**kwargs)
            message = response.choices[0].message if response.choices else None
            text = (getattr(message, "content", None) or "") if message else ""
            reasoning = getattr(message, "reasoning_content", None) or ""
            calls = [ToolCall(c.id or "", c.function.name, arguments_text(c.function.arguments))
                     for c in getattr(message, "tool_calls", None) or [] if getattr(c, "function", None)]
            finish = response.choices[0].finish_reason if response.choices else None
            text, calls = self._finished(text, calls, finish, tools, Usage())
            received = len(text) + sum(len(c.arguments) for c in calls)
            return Reply(text, calls, self._usage(sent, received, response.usage), reasoning=reasoning)
        if "stream_options" not in self.refused:
            kwargs["stream_options"] = {"include_usage": True}
        stream = await self.client.chat.completions.create(**kwargs, stream=True)
        text, reasoning, partial, usage, finish = [], [], StreamedCalls(), None, None
        received = 0
        try:
            async for chunk in stream:
                self.heard = time.monotonic()
                usage = getattr(chunk, "usage", None) or usage
                for choice in (getattr(chunk, "choices", None) or [])[:1]:
                    finish = choice.finish_reason or finish
                    delta = choice.delta  # None in Azure's content-filter chunks (openai-python#1677)
                    if delta is None:
                        continue
                    if delta.content:
                        text.append(delta.content)
                        received += len(delta.content)
                    if thought := getattr(delta, "reasoning_content", None):
                        reasoning.append(thought)
                    for tc in delta.tool_calls or []:
                        received += partial.add(tc)
        except openai.APITimeoutError:
            raise  # silent past model.timeout: reported, not asked again
        except openai.APIConnectionError as e:
            raise _Retry(f"the model's reply broke off mid-stream ({e.__cause__ or e})",
                         self._usage(sent, received)) from e
        if finish is None:
            raise _Retry("the model's stream ended before its reply was complete", self._usage(sent, received))
        calls = [ToolCall(i, n, a) for i, n, a in partial.done()]
        text, calls = self._finished("".join(text), calls, finish, tools, self._usage(sent, received))
        return Reply(text, calls, self._usage(sent, received, usage), reasoning="".join(reasoning))

    def _finished(self, text: str, calls: list[ToolCall], finish: str | None, tools: list[dict],
                  usage: Usage) -> tuple[str, list[ToolCall]]:
        """The reply's text and calls, once its finish reason says it is one."""
        if finish == "error":  # OpenRouter ends a failed generation so
            raise _Retry("the model endpoint reported an error while answering (finish_reason \"error\")", usage,
                         "try again later, or check the server's log")
        if finish == "length" and not text.strip() and not calls:  # no room left to write anything (LM Studio)
            raise ModelError("the conversation no longer fits the model's context window (the reply was cut off "
                             "at once: finish_reason \"length\")", context_overflow=True)
        return self._with_text_calls(text, calls, tools)

    async def _responses(self, history: list[dict], tools: list[dict]) -> Reply:
        instructions, items = _responses_input(history)
        if not self.freeform_patch:
            tools = [_as_function(t) if t.get("type") == "custom" else t for t in tools]
        kwargs = {"model": self.name, "input": items, "tools": tools, "extra_headers": self.headers}
        if "store" not in self.refused:
            kwargs["store"] = False
        if instructions:
            kwargs["instructions"] = instructions
        sent = len(json.dumps(items)) + len(instructions) + len(json.dumps(tools))
        if self.stream:
            response, received = None, 0
            events = await self.client.responses.create(**kwargs, stream=True)
            try:
                async for event in events:
                    self.heard = time.monotonic()
                    if event.type in ("response.completed", "response.incomplete"):
                        response = event.response
                    elif event.type.endswith(".delta"):
                        received += len(getattr(event, "delta", "") or "")
                    elif event.type in ("response.failed", "error"):
                        error = getattr(getattr(event, "response", None), "error", None) or event
                        self._failed(error, self._usage(sent, received))
            except openai.APITimeoutError:
                raise
            except openai.APIConnectionError as e:
                raise _Retry(f"the model's reply broke off mid-stream ({e.__cause__ or e})",
                             self._usage(sent, received)) from e
            if response is None:
                raise _Retry("the model's stream ended before the response completed", self._usage(sent, received))
        else:
            response = await self.client.responses.create(**kwargs)
            if response.status == "failed" and response.error:
                self._failed(response.error, self._usage(sent, 0))
        text, calls = [], []
        custom = {t["name"] for t in tools if t.get("type") == "custom"}
        for item in response.output or []:
            if item.type == "message":
                text += [part.text for part in item.content if getattr(part, "type", "") == "output_text"]
            elif item.type == "function_call":
                calls.append(ToolCall(item.call_id or item.id or "", item.name, arguments_text(item.arguments)))
            elif item.type == "custom_tool_call":
                calls.append(ToolCall(item.call_id or item.id or "", item.name, item.input or "", custom=True))
        if any(c.name in custom and not c.custom and '"input"' not in c.arguments for c in calls):
            # vLLM offers a freeform tool as a function without parameters, so its calls come with
            # `arguments: "{}"` (vllm#49724): offer it as a function taking `input` from now on.
            self.freeform_patch = False
            raise _Reask("freeform tool")
        received = sum(map(len, text)) + sum(len(c.arguments) for c in calls)
        text, calls = self._with_text_calls("".join(text), calls, tools)
        return Reply(text, calls, self._usage(sent, received, response.usage))

    def _failed(self, error, usage: Usage) -> None:
        """A response that failed on the server: retried when the server says it is passing."""
        code, message = getattr(error, "code", None), getattr(error, "message", None) or str(error)
        if errs.overflow(f"{code} {message}"):
            raise ModelError(f"the conversation no longer fits the model's context window ({message})",
                             context_overflow=True)
        if code in ("server_error", "rate_limit_exceeded", "server_is_overloaded", "slow_down", None):
            raise _Retry(f"the model failed while answering ({message})", usage)
        raise ModelError(f"the model failed while answering: {message} ({code})")
