"""The model client: one step of a conversation over Chat Completions or the Responses API.

The conversation is kept in a neutral form (system, user, assistant with tool calls, tool
outputs) and translated per API, so the loop never cares which one a server speaks. The
`openai` package does the HTTP, retries and backoff (honouring Retry-After).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import openai


class ModelError(Exception):
    """The endpoint failed in a way retries did not fix; the message says what to change."""


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
    input_tokens: int = 0
    output_tokens: int = 0


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
                 timeout: float = 600.0, max_retries: int = 4) -> None:
        if api not in ("chat", "responses"):
            raise ModelError(f"model.api must be \"chat\" or \"responses\", not {api!r}")
        self.name, self.api, self.stream = name, api, stream
        self.client = openai.AsyncOpenAI(
            base_url=base_url or None, api_key=api_key, timeout=timeout, max_retries=max_retries
        )

    async def close(self) -> None:
        await self.client.close()

    async def step(self, history: list[dict], tools: list[dict]) -> Reply:
        """The model's next move given the conversation so far."""
        try:
            if self.api == "chat":
                return await self._chat(history, tools)
            return await self._responses(history, tools)
        except openai.AuthenticationError as e:
            raise ModelError(f"the model endpoint rejected the API key: {e.message}") from e
        except openai.NotFoundError as e:
            raise ModelError(f"model {self.name!r} or the endpoint was not found: {e.message}") from e
        except openai.APIStatusError as e:
            raise ModelError(f"the model endpoint answered HTTP {e.status_code}: {e.message}") from e
        except openai.APITimeoutError as e:
            raise ModelError("the model endpoint timed out (after retries)") from e
        except openai.APIConnectionError as e:
            raise ModelError(f"cannot reach the model endpoint {self.client.base_url}: {e}") from e

    async def _chat(self, history: list[dict], tools: list[dict]) -> Reply:
        specs = [{"type": "function", "function": t} for t in tools if t.get("type", "function") == "function"]
        kwargs = {"model": self.name, "messages": _chat_messages(history), "tools": specs}
        if not self.stream:
            response = await self.client.chat.completions.create(**kwargs)
            message = response.choices[0].message
            calls = [ToolCall(c.id, c.function.name, c.function.arguments or "") for c in message.tool_calls or []]
            usage = response.usage
            return Reply(message.content or "", calls, usage.prompt_tokens if usage else 0,
                         usage.completion_tokens if usage else 0)
        stream = await self.client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
        text, partial, reply = [], {}, Reply("")
        async for chunk in stream:
            if chunk.usage:
                reply.input_tokens, reply.output_tokens = chunk.usage.prompt_tokens, chunk.usage.completion_tokens
            if not chunk.choices:
                continue
            delta = chunk.choices[0].delta
            if delta.content:
                text.append(delta.content)
            for tc in delta.tool_calls or []:
                slot = partial.setdefault(tc.index, {"id": "", "name": "", "arguments": []})
                if tc.id:
                    slot["id"] = tc.id
                if tc.function and tc.function.name:
                    slot["name"] = tc.function.name
                if tc.function and tc.function.arguments:
                    slot["arguments"].append(tc.function.arguments)
        if not text and not partial and not reply.input_tokens:
            raise ModelError("the model's stream ended before any reply arrived")
        reply.text = "".join(text)
        reply.calls = [ToolCall(s["id"], s["name"], "".join(s["arguments"])) for _, s in sorted(partial.items())]
        return reply

    async def _responses(self, history: list[dict], tools: list[dict]) -> Reply:
        instructions, items = _responses_input(history)
        specs = [
            t if t.get("type") == "custom" else {"type": "function", **{k: v for k, v in t.items() if k != "type"}}
            for t in tools
        ]
        kwargs = {"model": self.name, "input": items, "tools": specs, "store": False}
        if instructions:
            kwargs["instructions"] = instructions
        if self.stream:
            response = None
            async for event in await self.client.responses.create(**kwargs, stream=True):
                if event.type == "response.completed":
                    response = event.response
                elif event.type in ("response.failed", "error"):
                    raise ModelError(f"the model failed: {getattr(event, 'message', '') or event}")
            if response is None:
                raise ModelError("the model's stream ended before the response completed")
        else:
            response = await self.client.responses.create(**kwargs)
        text, calls = [], []
        for item in response.output:
            if item.type == "message":
                text += [part.text for part in item.content if getattr(part, "type", "") == "output_text"]
            elif item.type == "function_call":
                calls.append(ToolCall(item.call_id, item.name, item.arguments or ""))
            elif item.type == "custom_tool_call":
                calls.append(ToolCall(item.call_id, item.name, item.input or "", custom=True))
        usage = response.usage
        return Reply("".join(text), calls, usage.input_tokens if usage else 0, usage.output_tokens if usage else 0)
