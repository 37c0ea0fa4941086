"""A misbehaving model or endpoint, through the real loop: retried when it passes, a clear task
error saying what to change when it does not, and every request's tokens counted either way."""

from __future__ import annotations

import time

import pytest

from tests.agent_support import MODES, run, sandbox, shared_sandbox  # noqa: F401 - fixtures
from tests.fakemodel import cut, drop, empty, fail, hang, say, shell
from tests.scenarios import fix_and_cite

pytestmark = pytest.mark.docker


def after(*faults):
    """fix-and-cite with `faults` before its third move (after the model has seen the failing tests)."""

    def scenario(req):
        moves = fix_and_cite(req)
        value = None
        for index in range(99):
            if index == 2:
                for fault in faults:
                    yield fault
            try:
                move = moves.send(value)
            except StopIteration:
                return
            value = yield move

    return scenario


@pytest.mark.parametrize("api,stream", MODES)
def test_a_rate_limit_is_waited_out_as_retry_after_says(sandbox, api, stream):
    seen = []

    def limited(req):
        seen.append(time.monotonic())
        yield fail(429, retry_after=0.3)
        yield from fix_and_cite(req)

    r = run(sandbox, limited, api, stream)
    assert r.result.outcome == "completed" and len(r.model.requests) == 6
    assert seen[1] - seen[0] >= 0.3  # the client waited as long as the endpoint asked


@pytest.mark.parametrize("api,stream", MODES)
def test_a_passing_server_error_is_retried(sandbox, api, stream):
    r = run(sandbox, after(fail(500)), api, stream)
    assert r.result.outcome == "completed" and len(r.model.requests) == 6


@pytest.mark.parametrize("api,stream", MODES)
def test_a_lasting_server_error_fails_the_task_clearly(sandbox, api, stream):
    r = run(sandbox, after(fail(500, times=9)), api, stream)
    assert r.result.outcome == "failed"
    assert "answered HTTP 500: The server had an error" in r.result.reason
    assert "still after 1 retry; try again later" in r.result.reason
    assert r.of("model.error")[0]["error"] == r.result.reason
    assert r.of("model.call.failed")[0]["step"] == 3  # the failed call is on the record, tokens and all


@pytest.mark.parametrize("api,stream", MODES)
def test_a_hanging_endpoint_is_reported_after_the_timeout_without_retries(sandbox, api, stream):
    r = run(sandbox, after(hang(5, times=9)), api, stream, model_options={"timeout": 0.3})
    assert r.result.outcome == "failed"
    assert "sent nothing for 0.3 seconds; check that the server is up" in r.result.reason
    assert "raise model.timeout" in r.result.reason and "retr" not in r.result.reason
    assert len(r.of("model.call.failed")) == 1  # waiting again on a server that said nothing only doubles the wait


@pytest.mark.parametrize("api,stream", MODES)
def test_a_dropped_connection_is_retried(sandbox, api, stream):
    r = run(sandbox, after(drop()), api, stream)
    assert r.result.outcome == "completed" and len(r.model.requests) == 6


@pytest.mark.parametrize("api,stream", MODES)
def test_connections_dropped_every_time_fail_the_task(sandbox, api, stream):
    r = run(sandbox, after(drop(times=9)), api, stream)
    assert r.result.outcome == "failed" and "broke off the connection" in r.result.reason
    assert "still after 1 retry" in r.result.reason


@pytest.mark.parametrize("api,stream", MODES)
def test_an_unreachable_endpoint_says_what_to_check(sandbox, api, stream):
    r = run(sandbox, fix_and_cite, api, stream, model_options={"base_url": "http://127.0.0.1:9/v1"})
    assert r.result.outcome == "failed"
    assert r.result.reason.startswith("cannot reach the model endpoint http://127.0.0.1:9/v1")
    assert "check model.base_url (or OPENAI_BASE_URL)" in r.result.reason


@pytest.mark.parametrize("api,stream", MODES)
def test_a_rejected_key(sandbox, api, stream):
    r = run(sandbox, after(fail(401)), api, stream)
    assert r.result.outcome == "failed"
    assert "the API key was rejected (HTTP 401: Incorrect API key provided" in r.result.reason
    assert "set OPENAI_API_KEY (or the variable model.api_key_env names)" in r.result.reason
    missing = run(sandbox, after(fail(401)), api, stream, model_options={"api_key": ""})
    assert "no API key is set" in missing.result.reason


@pytest.mark.parametrize("api,stream", MODES)
def test_an_unknown_model(sandbox, api, stream):
    r = run(sandbox, after(fail(404)), api, stream, name="gpt-7")
    assert r.result.outcome == "failed"
    assert r.result.reason.startswith("model 'gpt-7' is not known at http://127.0.0.1:")
    assert "set model.name (OFFLOAD_MODEL_NAME) to one it serves, e.g.: default" in r.result.reason


@pytest.mark.parametrize("api,stream", MODES)
def test_an_empty_reply_is_asked_again(sandbox, api, stream):
    r = run(sandbox, after(empty()), api, stream)
    assert r.result.outcome == "completed"
    (failed,) = r.of("model.call.failed")
    assert failed["error"] == "the model sent an empty reply" and failed["input_tokens"] > 0
    assert r.result.model_calls == 6 and r.result.input_tokens == sum(
        e["input_tokens"] for e in r.of("model.reply") + r.of("model.call.failed"))


@pytest.mark.parametrize("api,stream", MODES)
def test_a_model_that_only_sends_empty_replies_fails_the_task(sandbox, api, stream):
    r = run(sandbox, after(empty(times=9)), api, stream)
    assert r.result.outcome == "failed"
    assert r.result.reason == ("the model sent an empty reply, still after 1 retry; set model.name to a model that "
                               "can call tools, or raise model.max_retries")


@pytest.mark.parametrize("api,stream", MODES)
def test_a_reply_cut_mid_stream_is_asked_again(sandbox, api, stream):
    r = run(sandbox, after(cut()), api, stream)
    assert r.result.outcome == "completed" and len(r.model.requests) == 6
    if stream:  # the SDK cannot retry a stream it has started to hand over: the client does
        (failed,) = r.of("model.call.failed")
        assert failed["error"].startswith("the model's reply broke off mid-stream")
        assert failed["estimated"] and failed["input_tokens"] > 0


@pytest.mark.parametrize("api,stream", MODES)
def test_replies_cut_every_time_fail_the_task(sandbox, api, stream):
    r = run(sandbox, after(cut(times=9)), api, stream)
    assert r.result.outcome == "failed"
    expected = "broke off mid-stream" if stream else "broke off the connection"
    assert expected in r.result.reason and "raise model.max_retries" in r.result.reason


@pytest.mark.parametrize("api,stream", MODES)
def test_a_conversation_too_long_for_the_window_hides_old_outputs_and_goes_on(sandbox, api, stream):
    overflow = {"error": {"message": "This model's maximum context length is 8192 tokens.",
                          "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}

    def long_talk(req):
        for n in range(3):
            yield shell(["echo", f"listing {n}"])
        yield fail(400, body=overflow)
        yield say("## Summary\nNothing to change.")

    r = run(sandbox, long_talk, api, stream)
    assert r.result.outcome == "completed"
    (context,) = r.of("context")
    assert context["hidden"] == ["c1", "c2"] and "context window" in context["reason"]
    outputs = [item[2] for item in r.model.requests[-1].items if item[0] == "output"]
    assert outputs[0].startswith("[output hidden") and "listing 2" in outputs[2]
