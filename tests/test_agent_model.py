"""The model client on its own against the stand-in: usage and cost per call, and the errors that
say what to change. (Conversations through the loop are in test_agent_loop and test_agent_faults.)"""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from offload.server.agent import model as model_module
from offload.server.agent import pricing
from offload.server.agent.model import ModelClient, ModelError
from tests.agent_support import MODES, client
from tests.fakemodel import FakeModel, empty, fail, hang, say, shell, stream_error

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Run the tests."}]
TOOLS = [{"type": "function", "name": "shell", "description": "Runs a command.",
          "parameters": {"type": "object", "properties": {"command": {"type": "array", "items": {"type": "string"}}}}}]


def step(model: ModelClient):
    async def go():
        try:
            return await model.step(CONVERSATION, TOOLS)
        finally:
            await model.close()

    return asyncio.run(go())


def test_prices_of_known_models_and_none_for_others():
    assert pricing.price("gpt-5") == (1.25, 0.125, 10.0)
    assert pricing.price("gpt-4o-2024-08-06") == pricing.price("gpt-4o")  # a dated snapshot
    assert pricing.price("openai/gpt-4.1-mini") == pricing.price("gpt-4.1-mini")
    assert pricing.price("qwen2.5-coder") is None and pricing.cost("qwen2.5-coder", 1000, 1000) is None
    assert pricing.cost("gpt-5", 1_000_000, 100_000) == pytest.approx(1.25 + 1.0)
    assert pricing.cost("gpt-5", 1_000_000, 0, cached_tokens=800_000) == pytest.approx(0.25 + 0.1)


@pytest.mark.parametrize("api,stream", MODES)
def test_a_reply_carries_its_tokens_and_cost(api, stream):
    def tests(req):
        yield shell(["make", "test"])

    with FakeModel(default=tests) as fm:
        reply = step(client(fm, api, stream, name="gpt-4.1-mini"))
    assert [(c.name, c.arguments) for c in reply.calls] == [("shell", '{"command": ["make", "test"]}')]
    assert reply.usage.input_tokens > 0 and reply.usage.output_tokens > 0 and not reply.usage.estimated
    assert reply.cost_usd == pytest.approx(pricing.cost("gpt-4.1-mini", reply.usage.input_tokens,
                                                        reply.usage.output_tokens))
    assert reply.failed == [] and reply.duration > 0


@pytest.mark.parametrize("api,stream", MODES)
def test_an_unknown_model_is_counted_without_a_cost(api, stream):
    with FakeModel(default=lambda req: (yield say("Hello."))) as fm:
        reply = step(client(fm, api, stream, name="llama-3-70b"))
    assert reply.text == "Hello." and reply.usage.input_tokens > 0 and reply.cost_usd is None


@pytest.mark.parametrize("api,stream", MODES)
def test_a_lasting_rate_limit_says_what_to_do(api, stream):
    with FakeModel(default=lambda req: (yield fail(429, retry_after=0.05, times=9))) as fm:
        with pytest.raises(ModelError) as e:
            step(client(fm, api, stream))
    assert "is rate limiting (HTTP 429: Rate limit reached" in str(e.value)
    assert "still after 1 retry; wait, raise model.max_retries, or lower tasks.concurrency" in str(e.value)
    assert len(e.value.attempts) == 2 and e.value.attempts[0].usage.input_tokens == 0  # each request, on the record


@pytest.mark.parametrize("api,stream", MODES)
def test_an_exhausted_quota_is_not_retried(api, stream):
    body = {"error": {"message": "You exceeded your current quota.", "type": "insufficient_quota", "param": None,
                      "code": "insufficient_quota"}}
    with FakeModel(default=lambda req: (yield fail(429, body=body, times=9))) as fm:
        with pytest.raises(ModelError, match="out of quota"):
            step(client(fm, api, stream, max_retries=0))


@pytest.mark.parametrize("api,stream", MODES)
def test_a_forbidden_model(api, stream):
    with FakeModel(default=lambda req: (yield fail(403))) as fm:
        with pytest.raises(ModelError, match="may not use model 'o3-pro'.*set model.name"):
            step(client(fm, api, stream, name="o3-pro"))


class _NotAnApi(BaseHTTPRequestHandler):
    """A web server that is not an OpenAI endpoint: 404 for every path."""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html><body>Not Found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("api,stream", MODES)
def test_an_endpoint_without_the_api(api, stream):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotAnApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ModelError) as e:
            step(ModelClient(f"http://127.0.0.1:{server.server_address[1]}", "sk-test", "gpt-5", api=api,
                             stream=stream, max_retries=0))
    finally:
        server.shutdown()
        server.server_close()
    other = "chat" if api == "responses" else "responses"
    assert f"has no {api} API (HTTP 404" in str(e.value)
    assert f"check model.base_url (it usually ends in /v1), or set model.api to \"{other}\"" in str(e.value)


def test_an_unknown_api_is_refused_at_once():
    with pytest.raises(ModelError, match='model.api must be "chat" or "responses"'):
        ModelClient("http://127.0.0.1:9/v1", "sk-test", "gpt-5", api="completions")


LMSTUDIO_OVERFLOW = ("Trying to keep the first 6514 tokens when context the overflows. However, the model is loaded "
                     "with context length of only 4096 tokens, which is not enough. Try to load the model with a "
                     "larger context length, or provide a shorter input")
# Each server's way of saying the conversation no longer fits: (the fault, words of it the error keeps).
OVERFLOWS = {
    "openai": (fail(400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, your "
                                               "messages resulted in 9000 tokens.", "type": "invalid_request_error",
                                    "param": "messages", "code": "context_length_exceeded"}}), "8192 tokens"),
    "vllm": (fail(400, {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, "
                                                      "you requested 5000 tokens", "type": "BadRequestError",
                        "param": None, "code": 400}), "4096 tokens"),
    "llamacpp-400": (fail(400, {"error": {"code": 400, "type": "exceed_context_size_error",
                                          "message": "the request exceeds the available context size, try "
                                                     "increasing it",
                                          "n_prompt_tokens": 9000, "n_ctx": 8192}}), "available context size"),
    "llamacpp-500": (fail(500, {"error": {"code": 500, "message": "Context size has been exceeded.",
                                          "type": "server_error"}}), "Context size has been exceeded"),
    "ollama-500": (fail(500, {"error": "the input length exceeds the context length"}), "input length exceeds"),
    "lmstudio-string": (fail(400, {"error": LMSTUDIO_OVERFLOW}), "Trying to keep the first 6514 tokens"),
    "lmstudio-in-stream": (stream_error(LMSTUDIO_OVERFLOW), "Trying to keep the first 6514 tokens"),
    "lmstudio-empty-200": (empty(finish="length"), 'finish_reason "length"'),
    "tgi": (fail(422, {"error": "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: "
                                "4000 `inputs` tokens and 1000 `max_new_tokens`", "error_type": "validation"}),
            "must be <= 4096"),
    "together": (fail(400, {"error": {"message": "Input validation error: `inputs` tokens + `max_new_tokens` must be "
                                                 "<= 8193. Given: 8000 `inputs` tokens and 200 `max_new_tokens`",
                                      "type": "invalid_request_error", "param": "max_tokens", "code": None}}),
                 "must be <= 8193"),
    "mistral": (fail(400, {"object": "error", "message": "Prompt contains 40000 tokens and 0 draft tokens, too large "
                                                         "for model with 32768 maximum context length",
                           "type": "invalid_request_error", "param": None, "code": None}), "32768 maximum"),
    "groq": (fail(400, {"error": {"message": "Please reduce the length of the messages or completion.",
                                  "type": "invalid_request_error", "param": "messages",
                                  "code": "context_length_exceeded"}}), "reduce the length"),
}


@pytest.mark.parametrize("server,api,stream", [
    pytest.param(server, *mode.values, id=f"{server}-{mode.id}") for server in OVERFLOWS for mode in MODES
    if not (server == "lmstudio-empty-200" and mode.values[0] == "responses")])  # a Chat Completions reply
def test_a_full_context_window_is_recognised_in_each_servers_words(server, api, stream):
    fault, words = OVERFLOWS[server]
    with FakeModel(default=lambda req: (yield fault)) as fm:
        with pytest.raises(ModelError) as e:
            step(client(fm, api, stream))
    assert e.value.context_overflow and "no longer fits the model's context window" in str(e.value)
    assert words in str(e.value) and len(fm.requests) == 1  # the loop hides old outputs; asking again cannot help


def steps(model: ModelClient, count: int, on_wait=None):
    """`count` steps of one conversation on one client, as the loop takes them."""
    async def go():
        history, replies = list(CONVERSATION), []
        try:
            for _ in range(count):
                reply = await model.step(history, TOOLS, on_wait)
                history.append({"role": "assistant", "content": reply.text, "calls": reply.calls})
                history += [{"role": "tool", "call_id": c.id, "output": "Exit code: 0"} for c in reply.calls]
                replies.append(reply)
        finally:
            await model.close()
        return replies

    return asyncio.run(go())


def two_calls(req):
    yield shell(["ls"])
    yield shell(["pwd"])
    yield say("Done.")


def test_an_optional_parameter_refused_is_dropped_once_and_for_good(monkeypatch):
    """Mistral answers stream_options with a 422 (avante.nvim#2347): left out from then on."""
    monkeypatch.setattr(model_module, "_REFUSED", {})  # this test's endpoints only
    with FakeModel(default=two_calls, quirks={"mistral-stream-options"}) as fm:
        replies = steps(client(fm, "chat", True, max_retries=0), 3)
    assert replies[-1].text == "Done." and len(fm.refusals) == 1 and fm.refusals[0].startswith("422")
    assert [r.body.get("stream_options") is not None for r in fm.requests] == [True, False, False, False]
    with FakeModel(default=two_calls, quirks={"mistral-stream-options"}, port=fm.port) as again:
        steps(client(again, "chat", True, max_retries=0), 1)  # the next task's client knows the endpoint
    assert again.refusals == [] and again.requests[0].body.get("stream_options") is None


@pytest.mark.parametrize("api,stream", MODES)
def test_a_refusal_that_cannot_pass_is_not_asked_again_and_keeps_the_servers_words(api, stream):
    body = {"error": {"message": "Invalid value for 'temperature'.", "type": "invalid_request_error"}}
    with FakeModel(default=lambda req: (yield fail(400, body=body, times=9))) as fm:
        with pytest.raises(ModelError) as e:
            step(client(fm, api, stream, max_retries=4))
    assert len(fm.requests) == 1 and "HTTP 400: Invalid value for 'temperature'." in str(e.value)
    assert "retr" not in str(e.value) and "model.api" not in str(e.value)  # nothing was retried; not an API question


@pytest.mark.parametrize("api,stream", MODES)
def test_a_fumbled_tool_call_is_asked_again(api, stream):
    """Groq's intermittent 400 tool_use_failed passes on another try."""
    with FakeModel(default=two_calls, quirks={"groq-tool-use-failed"}) as fm:
        (reply,) = steps(client(fm, api, stream), 1)
    assert reply.calls[0].name == "shell" and len(fm.refusals) == 1
    assert "could not read the model's tool call (HTTP 400: Failed to call a function" in reply.failed[0].error


@pytest.mark.parametrize("api,stream", MODES)
def test_waits_are_told_as_they_happen(api, stream):
    def slow(req):
        yield fail(503, retry_after=0.1)
        yield hang(1.2)
        yield shell(["ls"])

    told = []
    with FakeModel(default=slow) as fm:
        (reply,) = steps(client(fm, api, stream, timeout=2.0), 1, told.append)
    assert reply.calls[0].name == "shell"
    assert "answered HTTP 503" in told[0] and "asking again in 0 s (retry 1 of 1)" in told[0]
    assert any(t.startswith("waiting for the model: nothing from") and "(it is given 2 s: model.timeout)" in t
               for t in told[1:])
