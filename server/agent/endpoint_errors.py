"""What an endpoint's error means: the server's own words, whether asking again can help, and the fix.

Servers word the same trouble differently (a full context window alone has a dozen wordings)
and shape their error bodies differently (a string, an object, an object whose message is a
list). Recognising them here lets the client retry only what can pass, drop an optional
parameter a server refuses, hide old outputs when the window is full, and give advice that
matches the cause.
"""

from __future__ import annotations

import json
import re

import openai

# Context overflow, as each server words it; each has a test.
OVERFLOW = [
    r"context_length_exceeded",  # OpenAI, Azure, Groq, DeepSeek (code)
    r"maximum context length",  # OpenAI, vLLM, DeepSeek, OpenRouter ("This model's maximum context length is …")
    r"exceed_context_size_error|exceeds the available context size",  # llama.cpp 400 (server#15470)
    r"context size has been exceeded",  # llama.cpp 500, older builds
    r"input length exceeds (?:the )?(?:maximum )?context length|exceeds (?:the )?context length",  # Ollama 500
    r"when context the overflows|context overflows|reached context length",  # LM Studio (bug-tracker #237, #1024)
    r"`inputs` tokens \+ `max_new_tokens` must be <=",  # TGI, Together
    r"too large for model with \d+ maximum context length",  # Mistral
    r"prompt is too long|reduce the length of the messages",  # Anthropic's compat layer, Groq
]
_OVERFLOW = re.compile("|".join(OVERFLOW), re.I)

# Optional parameters Offload sends, which a server may refuse by name (Mistral's 422 for
# stream_options, avante.nvim#2347): dropped once, and not sent again to that server.
OPTIONAL = ("stream_options", "store", "parallel_tool_calls")

# Tool support missing or switched off on the server: (what its error says, the fix).
NO_TOOLS = [
    (r"enable-auto-tool-choice|tool-call-parser",
     "start vLLM with --enable-auto-tool-choice --tool-call-parser NAME (e.g. hermes for Qwen, llama3_json "
     "for Llama 3.1+, mistral for Mistral)"),
    (r"requires --jinja|--jinja",
     "start llama-server with --jinja (and a model whose chat template supports tools)"),
    (r"cannot use tools with stream",
     "update llama.cpp (builds since its PR 12379 stream tool calls), or set model.stream = false"),
    (r"does not support tools",
     "set model.name to a model that can call tools (ollama list; e.g. qwen2.5-coder:7b, llama3.1, "
     "mistral-nemo), or pull one: ollama pull qwen2.5-coder:7b"),
    (r"no models? (?:is )?loaded",
     "load a model in LM Studio (lms load MODEL, or the Developer tab), then try again"),
]


def detail(e: openai.OpenAIError) -> str:
    """The server's own message, whatever shape its error body has."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        message = body.get("message", body.get("detail", body.get("error")))
        if message is None:
            message = body
    else:
        message = body
    if message is None or message == "":
        return str(e)
    text = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))
    text = " ".join(text.split())  # a proxy's HTML page, say, on one line
    return text if len(text) <= 600 else text[:599] + "…"


def overflow(text: str) -> bool:
    """The conversation no longer fits the model's window, in any server's words."""
    return bool(_OVERFLOW.search(text))


_REFUSAL = re.compile(r"extra|unrecognized|unknown|unsupported|not supported|not permitted|not allowed|unexpected",
                      re.I)


def refused_parameter(text: str, sent: set[str]) -> str | None:
    """The optional parameter a 400/422 refuses by name, when it is one that was sent."""
    if not _REFUSAL.search(text):
        return None
    return next((p for p in OPTIONAL if p in sent and re.search(rf"\b{p}\b", text)), None)


def tool_fix(text: str) -> str | None:
    """The fix when the error says the server or model cannot call tools as set up."""
    return next((fix for pattern, fix in NO_TOOLS if re.search(pattern, text, re.I)), None)


def transient(e: openai.OpenAIError, text: str) -> bool:
    """A refusal that another try usually gets past: Groq's 400 `tool_use_failed` (the model wrote
    a call its parser could not read)."""
    return getattr(e, "code", None) == "tool_use_failed" or "tool_use_failed" in text
