"""The model client on its own against the stand-in: usage and cost per call, and the errors that
say what to change. (Conversations through the loop are in test_agent_loop and test_agent_faults.)"""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from offload.server.agent import pricing
from offload.server.agent.model import ModelClient, ModelError
from tests.agent_support import MODES, client
from tests.fakemodel import FakeModel, fail, say, shell

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
    assert "is rate limiting (HTTP 429: Rate limit reached" in str(e.value) and "still after 1 retry;" in str(e.value) and "lower tasks.concurrency" in str(e.value)
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
