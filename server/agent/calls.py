"""Tool calls as servers really send them, made into calls every server accepts back.

Servers deviate from the wire format in documented ways: arguments as a JSON object instead of
a string, streamed parallel calls that share `index: 0` or carry none, missing or repeated ids,
ids some servers refuse (Mistral takes only 9 alphanumeric characters), and models that write
their calls as text in `content`. The client gathers calls here, so the loop only ever sees
complete calls with unique ids, and the history it sends back parses on every server.
"""

from __future__ import annotations

import json
import re
import secrets
import string

_ID_CHARS = string.ascii_letters + string.digits
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def new_id() -> str:
    """Nine letters and digits: the one shape Mistral accepts, and fine everywhere else
    (magentic#276, langchain#24668)."""
    return "".join(secrets.choice(_ID_CHARS) for _ in range(9))


def arguments_text(arguments) -> str:
    """Arguments as the JSON text the tools read; some servers send an object (litellm#37792)."""
    if arguments is None:
        return ""
    return arguments if isinstance(arguments, str) else json.dumps(arguments)


def unique_ids(calls: list, taken: set[str]) -> None:
    """Gives every call an id no other call of the conversation has, in a shape every server takes."""
    for call in calls:
        if not call.id or call.id in taken or not _ID.fullmatch(call.id):
            call.id = new_id()
        taken.add(call.id)


def sendable(arguments: str) -> str:
    """Arguments as sent back in the history: a JSON object, always.

    vLLM (before PR 48922, vllm#43995) and llama.cpp (#25510) parse the arguments of every past
    call, so one botched call would make every later request fail. Its text goes back wrapped
    in an object, and the tool's reply has told the model what was wrong with it.
    """
    try:
        if isinstance(json.loads(arguments), dict):
            return arguments
    except (json.JSONDecodeError, TypeError):
        pass
    return json.dumps({"unparsed_arguments": arguments})


class StreamedCalls:
    """Tool-call deltas of a stream, joined into calls.

    A delta belongs to the call with its id; one without an id to the latest call at its index
    (the latest call when it has no index); a delta that names a function while that call
    already has its name and complete arguments starts a new call. So parallel calls that all say `index: 0`
    (Ollama #15457, #15497) or say no index (LM Studio #759) stay apart.
    """

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def add(self, delta) -> int:
        """Takes one delta; returns how many characters of arguments it carried."""
        index, call_id = getattr(delta, "index", None), getattr(delta, "id", None) or ""
        function = getattr(delta, "function", None)
        name = getattr(function, "name", None) or ""
        arguments = arguments_text(getattr(function, "arguments", None))
        if call_id:
            slot = next((c for c in reversed(self.calls) if c["id"] == call_id), None)
        else:
            slot = next((c for c in reversed(self.calls) if index is None or c["index"] == index), None)
        if slot is None or (name and slot["name"] and _complete("".join(slot["arguments"]))):
            slot = {"index": index, "id": call_id, "name": "", "arguments": []}
            self.calls.append(slot)
        slot["name"] = slot["name"] or name
        slot["arguments"].append(arguments)
        return len(arguments)

    def done(self) -> list[tuple[str, str, str]]:
        """(id, name, arguments) of each call, in the order they started."""
        return [(c["id"], c["name"], "".join(c["arguments"])) for c in self.calls if c["name"]]


def _complete(arguments: str) -> bool:
    try:
        json.loads(arguments)
        return True
    except json.JSONDecodeError:
        return False


# Where models put calls they write as text: hermes `<tool_call>` tags, fenced blocks, and the
# markers of Mistral (`[TOOL_CALLS]`) and Llama 3.1 (`<|python_tag|>`) that a server's parser left.
_WRAPPED = [re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S),
            re.compile(r"```(?:json|tool_call)?\s*\n(.*?)\n\s*```", re.S),
            re.compile(r"(?:\[TOOL_CALLS\]|<\|python_tag\|>)\s*(.*?)\s*(?:<\|eom_id\|>|$)", re.S)]


def text_calls(text: str, tools: set[str]) -> tuple[str, list[tuple[str, str]]]:
    """Tool calls a model wrote as text, and the text without them.

    qwen2.5-coder on Ollama (ollama#12174) and vLLM's hermes parser while streaming
    (vllm#31871) leave `{"name": …, "arguments": …}` in `content`: bare (alone, or on lines of
    their own among prose), in tags, or in a fenced block. Only objects naming a tool offered
    count, so prose about JSON stays prose.
    """
    found: list[tuple[str, str]] = []
    rest = text
    for pattern in _WRAPPED:
        for match in pattern.finditer(text):
            calls = _calls_in(match.group(1), tools)
            if calls:
                found += calls
                rest = rest.replace(match.group(0), "")
        if found:
            return rest.strip(), found
    if calls := _calls_in(text.strip(), tools):
        return "", calls
    lines = text.splitlines()
    found = [call for line in lines for call in _calls_in(line.strip(), tools)]
    if not found:
        return text, []
    return "\n".join(line for line in lines if not _calls_in(line.strip(), tools)).strip(), found


def _calls_in(blob: str, tools: set[str]) -> list[tuple[str, str]]:
    """(name, arguments) of the call objects `blob` holds: one object, a list, or one per line."""
    try:
        values = [json.loads(blob)]
    except json.JSONDecodeError:
        try:
            values = [json.loads(line) for line in blob.splitlines() if line.strip()]
        except json.JSONDecodeError:
            return []
    objects = [o for v in values for o in (v if isinstance(v, list) else [v])]
    calls = []
    for obj in objects:
        if isinstance(obj, dict) and isinstance(obj.get("function"), dict):
            obj = obj["function"]
        if not isinstance(obj, dict) or obj.get("name") not in tools:
            return []
        arguments = obj.get("arguments", obj.get("parameters", {}))
        calls.append((obj["name"], arguments_text(arguments)))
    return calls
