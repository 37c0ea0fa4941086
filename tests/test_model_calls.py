"""Tool calls as real servers send them, and what the client sends back: text calls, unkeyed
streamed calls, ids, botched arguments; Azure's URLs; error bodies of every shape."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace as NS

import httpx2
import openai
import pytest

from offload.server.agent.calls import StreamedCalls, new_id, sendable, text_calls, unique_ids
from offload.server.agent.endpoint_errors import detail, refused_parameter
from offload.server.agent.model import ToolCall, endpoint_options

TOOLS = {"shell", "apply_patch", "update_plan"}
SHELL = {"name": "shell", "arguments": {"command": ["ls"]}}


@pytest.mark.parametrize("text", [
    json.dumps(SHELL),  # qwen2.5-coder on Ollama (ollama#12174)
    f"<tool_call>\n{json.dumps(SHELL)}\n</tool_call>",  # hermes (vllm#31871)
    f"I'll list the files.\n```json\n{json.dumps(SHELL)}\n```",  # fenced
    json.dumps({"name": "shell", "parameters": {"command": ["ls"]}}),  # Llama 3.1's spelling
    json.dumps({"type": "function", "function": {"name": "shell", "arguments": json.dumps({"command": ["ls"]})}}),
    f"Let me look around first.\n{json.dumps(SHELL)}",  # prose, then the call on a line of its own
    f"[TOOL_CALLS][{json.dumps(SHELL)}]",  # Mistral's marker, left by a server's parser
    f"<|python_tag|>{json.dumps(SHELL)}<|eom_id|>",  # Llama 3.1's
])
def test_a_call_written_as_text_becomes_a_call(text):
    rest, calls = text_calls(text, TOOLS)
    assert calls == [("shell", '{"command": ["ls"]}')]
    assert "shell" not in rest


def test_several_calls_written_as_text():
    lines = "\n".join([json.dumps(SHELL), json.dumps({"name": "update_plan", "arguments": {"plan": []}})])
    assert [n for n, _ in text_calls(lines, TOOLS)[1]] == ["shell", "update_plan"]
    tagged = "".join(f"<tool_call>{json.dumps(SHELL)}</tool_call>" for _ in range(2))
    assert len(text_calls(tagged, TOOLS)[1]) == 2
    assert len(text_calls(json.dumps([SHELL, SHELL]), TOOLS)[1]) == 2


@pytest.mark.parametrize("text", [
    "## Summary\nDone: `add` returns a + b (calc.py:L4-L5).",
    json.dumps({"name": "rm_rf", "arguments": {}}),  # not a tool offered
    'The config is ```json\n{"name": "demo", "version": 1}\n```',  # JSON that is not a call
])
def test_text_that_is_not_a_call_stays_text(text):
    assert text_calls(text, TOOLS) == (text, [])


def delta(index=None, id=None, name=None, arguments=None):
    return NS(index=index, id=id, function=NS(name=name, arguments=arguments))


def test_streamed_calls_are_joined_by_index():
    calls = StreamedCalls()
    for d in [delta(0, "a", "shell", ""), delta(1, "b", "shell", ""), delta(0, arguments='{"command"'),
              delta(1, arguments='{"command": ["pwd"]}'), delta(0, arguments=': ["ls"]}')]:
        calls.add(d)
    assert calls.done() == [("a", "shell", '{"command": ["ls"]}'), ("b", "shell", '{"command": ["pwd"]}')]


@pytest.mark.parametrize("index", [0, None], ids=["all-at-index-0", "no-index"])
def test_parallel_calls_without_their_own_index_stay_apart(index):
    """Ollama #15457/#15497 send each whole call at index 0; LM Studio #759 sends no index."""
    calls = StreamedCalls()
    calls.add(delta(index, None, "shell", '{"command": ["ls"]}'))
    calls.add(delta(index, None, "shell", '{"command": ["pwd"]}'))
    assert [a for _, _, a in calls.done()] == ['{"command": ["ls"]}', '{"command": ["pwd"]}']
    pieces = StreamedCalls()  # and one call in pieces without an index is still one call
    for d in [delta(None, None, "shell", '{"comm'), delta(None, None, None, 'and": ["ls"]}')]:
        pieces.add(d)
    assert pieces.done() == [("", "shell", '{"command": ["ls"]}')]


def test_object_arguments_are_taken_as_json_text():
    calls = StreamedCalls()
    calls.add(delta(0, "a", "shell", {"command": ["ls"]}))  # litellm#37792
    assert json.loads(calls.done()[0][2]) == {"command": ["ls"]}


def test_ids_are_unique_and_in_a_shape_every_server_takes():
    calls = [ToolCall("", "shell", "{}"), ToolCall("call_0", "shell", "{}"), ToolCall("call_0", "shell", "{}"),
             ToolCall("old", "shell", "{}"), ToolCall("id with spaces", "shell", "{}")]
    unique_ids(calls, {"old"})
    ids = [c.id for c in calls]
    assert len(set(ids)) == 5 and "old" not in ids and ids[1] == "call_0"
    assert all(re.fullmatch(r"[A-Za-z0-9]{9}", i) for i in ids[2:] + ids[:1])  # made ids suit Mistral
    assert re.fullmatch(r"[A-Za-z0-9]{9}", new_id())


@pytest.mark.parametrize("arguments", ['{"command": ["ls"', "[1, 2]", "*** Begin Patch\n*** End Patch", ""])
def test_botched_arguments_go_back_as_an_object_holding_their_text(arguments):
    sent = json.loads(sendable(arguments))
    assert sent == {"unparsed_arguments": arguments}
    assert sendable('{"command": ["ls"]}') == '{"command": ["ls"]}'


def test_azure_urls():
    deployment = endpoint_options("https://acme.openai.azure.com/openai/deployments/gpt-4o?api-version=2025-01-01",
                                  "key")
    assert deployment["base_url"] == "https://acme.openai.azure.com/openai/deployments/gpt-4o"
    assert deployment["default_query"] == {"api-version": "2025-01-01"}
    assert deployment["default_headers"] == {"api-key": "key"}
    bare = endpoint_options("https://acme.openai.azure.com/openai/deployments/gpt-4o", "key", api_version="2024-06-01")
    assert bare["default_query"] == {"api-version": "2024-06-01"}  # model.api_version
    assert endpoint_options("https://acme.openai.azure.com/openai/deployments/gpt-4o", "k")["default_query"]
    v1 = endpoint_options("https://acme.openai.azure.com/openai/v1/", "key")
    assert v1["default_query"] is None and v1["default_headers"] == {"api-key": "key"}
    plain = endpoint_options("http://127.0.0.1:11434/v1", "")
    assert plain == {"base_url": "http://127.0.0.1:11434/v1", "default_query": None, "default_headers": None}


def error(body):
    request = httpx2.Request("POST", "http://127.0.0.1/v1/chat/completions")
    return openai.APIError("An error occurred during streaming", request=request, body=body)


def test_the_servers_own_words_whatever_the_shape_of_its_error():
    assert detail(error({"message": "plain"})) == "plain"
    assert detail(error("Trying to keep the first 10 tokens")) == "Trying to keep the first 10 tokens"
    nested = detail(error({"object": "error", "message": {"detail": [{"loc": ["body", "stream_options"],
                                                                      "msg": "Extra inputs are not permitted"}]}}))
    assert "stream_options" in nested and "Extra inputs are not permitted" in nested  # Mistral's 422
    assert detail(error({"detail": "Not Found"})) == "Not Found"
    assert detail(error(None)) == "An error occurred during streaming"
    page = detail(error("<html>\n<body>\n" + "<h1>502 Bad Gateway</h1>\n" * 100 + "</body></html>"))
    assert page.startswith("<html> <body> <h1>502 Bad Gateway</h1>") and len(page) == 600 and page.endswith("…")


def test_an_optional_parameter_counts_as_refused_only_when_the_error_refuses_it_by_name():
    sent = {"stream_options", "store"}
    assert refused_parameter('{"detail":[{"type":"extra_forbidden","loc":["body","stream_options"]}]}', sent) \
        == "stream_options"  # Mistral's 422
    assert refused_parameter("Unrecognized request argument supplied: store", sent) == "store"
    assert refused_parameter("Unrecognized request argument supplied: store", {"stream_options"}) is None  # not sent
    assert refused_parameter("The model could not store the file you asked for", sent) is None
    assert refused_parameter("Unknown model: storefront-7b", sent) is None
