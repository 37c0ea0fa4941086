"""The model stand-in, checked through the real openai SDK on both APIs, streamed and not.

Every agent test trusts this server to speak the wire protocol as the SDK parses it and to react
to tool output, so these tests drive it the way the agent will: full conversations whose history
carries the tool outputs back.
"""

import json
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from tests import scenarios
from tests.fakemodel import (QUIRKS, FakeModel, apply_patch, call, cut, drop, empty, fail, hang, load_scenarios, say,
                             scenario, shell, update_plan)

REPO_ROOT = Path(__file__).resolve().parent.parent
MODES = ["chat", "chat-stream", "responses", "responses-stream", "responses-helper"]
STREAMED = ["chat-stream", "responses-stream"]
TOOL_NAMES = ("shell", "apply_patch", "update_plan")
PATCH = "*** Begin Patch\n*** Update File: a.py\n@@\n-old\n+new\n*** End Patch"


def chat_tools():
    return [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in TOOL_NAMES]


def responses_tools(custom_patch=False):
    tools = [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in TOOL_NAMES]
    if custom_patch:
        tools[1] = {"type": "custom", "name": "apply_patch", "description": "Codex patch grammar"}
    return tools


@dataclass
class Turn:
    text: str | None
    calls: list  # (call_id, name, arguments or custom input, output item type)
    history: list  # what the client appends before its tool outputs


def client_for(fm, **options):
    return OpenAI(base_url=fm.base_url, api_key="sk-test", **{"max_retries": 0, "timeout": 5, **options})


def turn(client, mode, history, model="default", tools=None):
    """One model call in ``mode``, parsed the way an agent parses it."""
    if mode.startswith("chat"):
        args = dict(model=model, messages=history, tools=tools or chat_tools())
        if mode == "chat":
            message = client.chat.completions.create(**args).choices[0].message
            text, calls = message.content, [(c.id, c.function.name, c.function.arguments, "function_call")
                                             for c in message.tool_calls or []]
        else:
            text, calls = chat_stream(client.chat.completions.create(
                **args, stream=True, stream_options={"include_usage": True}))
        tool_calls = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}} for i, n, a, _ in calls]
        message = {"role": "assistant", "content": text, **({"tool_calls": tool_calls} if calls else {})}
        return Turn(text, calls, [message])
    args = dict(model=model, input=history, tools=tools or responses_tools())
    if mode == "responses":
        response = client.responses.create(**args)
    elif mode == "responses-stream":
        response = responses_stream(client.responses.create(**args, stream=True))
    else:
        with client.responses.stream(**args) as stream:
            response = stream.get_final_response()
    calls = [(o.call_id, o.name, o.arguments if o.type == "function_call" else o.input, o.type)
             for o in response.output if o.type in ("function_call", "custom_tool_call")]
    text = response.output_text if any(o.type == "message" for o in response.output) else None
    return Turn(text, calls, [o.model_dump(exclude_none=True) for o in response.output])


def chat_stream(stream):
    """Joins chat deltas, checking the chunk grammar: finish_reason, then usage, then the end."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in stream:
        assert finish is None or not chunk.choices, "content after finish_reason"
        if not chunk.choices:
            usage = chunk.usage
            continue
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for d in choice.delta.tool_calls or []:
            c = calls.setdefault(d.index, {"id": d.id, "name": d.function.name, "arguments": ""})
            c["arguments"] += d.function.arguments or ""
        finish = choice.finish_reason or finish
    assert finish == ("tool_calls" if calls else "stop")
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0
    return text or None, [(c["id"], c["name"], c["arguments"], "function_call") for c in calls.values()]


def responses_stream(stream):
    """Joins Responses deltas and checks they add up to the final response's items."""
    deltas, numbers, final = {}, [], None
    for event in stream:
        numbers.append(event.sequence_number)
        if event.type.endswith(".delta"):
            deltas[event.output_index] = deltas.get(event.output_index, "") + event.delta
        if event.type == "response.completed":
            final = event.response
    assert numbers == list(range(len(numbers)))
    assert final.status == "completed" and final.usage.total_tokens > 0
    for i, item in enumerate(final.output):
        if item.type == "message":
            assert deltas[i] == item.content[0].text
        else:
            assert deltas[i] == (item.arguments if item.type == "function_call" else item.input)
    return final


def start(mode, prompt, system="You are Offload."):
    if mode.startswith("chat"):
        return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    return [{"role": "developer", "content": system}, {"role": "user", "content": prompt}]


def tool_results(mode, t, outputs):
    """History entries carrying ``outputs`` back for the turn's calls."""
    if mode.startswith("chat"):
        return [{"role": "tool", "tool_call_id": c[0], "content": out} for c, out in zip(t.calls, outputs)]
    kinds = {"function_call": "function_call_output", "custom_tool_call": "custom_tool_call_output"}
    return [{"type": kinds[c[3]], "call_id": c[0], "output": out} for c, out in zip(t.calls, outputs)]


def converse(client, mode, prompt, tool, model="default", tools=None):
    """A whole conversation: ``tool(name, arguments)`` answers each call. Returns (final text, calls)."""
    history, made = start(mode, prompt), []
    for _ in range(12):
        t = turn(client, mode, history, model, tools)
        if not t.calls:
            return t.text, made
        made += [(name, args) for _, name, args, _ in t.calls]
        history += t.history + tool_results(mode, t, [tool(name, args) for _, name, args, _ in t.calls])
    raise AssertionError("conversation did not end")


# --------------------------------------------------------------------------------------------
# Reactive scenarios over every wire format.


@scenario("branchy")
def branchy(req):
    out = yield shell(["probe"])
    if "yes" in out:
        out = yield apply_patch(PATCH)
        yield say(f"patched: {out}")
    else:
        yield update_plan([("look elsewhere", "in_progress")], explanation="probe said no")
        yield say("planned")


@pytest.mark.parametrize("mode", MODES)
def test_the_next_move_depends_on_the_tool_output(mode):
    with FakeModel(default=branchy) as fm:
        client = client_for(fm)
        text, calls = converse(client, mode, "go", lambda name, args: "yes" if name == "shell" else "Success.")
        assert [n for n, _ in calls] == ["shell", "apply_patch"] and text == "patched: Success."
        assert json.loads(calls[0][1]) == {"command": ["probe"]} and json.loads(calls[1][1]) == {"input": PATCH}
        text, calls = converse(client, mode, "go", lambda name, args: "no")
        assert [n for n, _ in calls] == ["shell", "update_plan"] and text == "planned"
        assert json.loads(calls[1][1]) == {"plan": [{"step": "look elsewhere", "status": "in_progress"}],
                                           "explanation": "probe said no"}
        assert not fm.errors


def real_tools(repo):
    """Just enough of the agent's tools, real processes included, to carry the shared scenarios;
    each output names its chunk, as the agent's do, for the final message to cite."""
    chunks = iter(range(1, 1000))

    def tool(name, arguments):
        args = json.loads(arguments)
        if name == "shell":
            p = subprocess.run(args["command"], cwd=repo, capture_output=True, text=True)
            return (f"Chunk: c{next(chunks)}\nExit code: {p.returncode}\nWall time: 0.1 seconds\nOutput:\n"
                    f"{p.stdout}{p.stderr}")
        path = repo / re.search(r"\*\*\* Update File: (.+)", args["input"]).group(1)
        old = "\n".join(l[1:] for l in args["input"].splitlines() if l.startswith("-"))
        new = "\n".join(l[1:] for l in args["input"].splitlines() if l.startswith("+"))
        path.write_text(path.read_text().replace(old, new))
        return f"Success. Updated the following files:\nM {path.name}"

    return tool


def lines_of_add(repo):
    """Where ``add`` sits in the sample repository, as ``calc.py:Lstart-Lend``."""
    start = (repo / "calc.py").read_text().splitlines().index("def add(a, b):") + 1
    return f"calc.py:L{start}-L{start + 1}"


@pytest.mark.parametrize("mode", ["chat-stream", "responses-helper"])
def test_fix_failing_test_fixes_the_sample_repo(sample_repo, mode):
    cited = lines_of_add(sample_repo)
    with FakeModel(scenarios=load_scenarios(scenarios)) as fm:
        client = client_for(fm)
        fix = real_tools(sample_repo)
        text, calls = converse(client, mode, "Fix the failing test", fix, model="fix-failing-test")
        assert "return a + b" in (sample_repo / "calc.py").read_text()
        assert [n for n, _ in calls] == ["shell", "shell", "apply_patch", "shell"]
        assert re.search(rf"## Summary\n.*{cited}.*\n\n## Testing\n.*unittest -q` passed", text, re.S), text
        text, calls = converse(client, mode, "Fix the failing test", fix, model="fix-failing-test")
        assert text == "Tests already pass; nothing to change." and len(calls) == 1
        assert not fm.errors


def test_ask_explain_cites_the_definition(sample_repo):
    with FakeModel(default=scenarios.ask_explain) as fm:
        text, calls = converse(client_for(fm), "responses", "What does add do?", real_tools(sample_repo))
        assert [json.loads(a)["command"][0] for _, a in calls] == ["grep", "cat"]
        assert text.startswith(f"`add` is defined at {lines_of_add(sample_repo)}:") and "return a - b" in text


@scenario("view")
def view(req):
    yield say(json.dumps({"api": req.api, "prompt": req.prompt, "instructions": req.instructions,
                          "tools": req.tool_names, "auth": req.headers["authorization"], "stream": req.stream}))


@pytest.mark.parametrize("mode", ["chat", "responses-stream"])
def test_scenarios_read_the_request(mode):
    with FakeModel(default=view) as fm:
        seen = json.loads(turn(client_for(fm), mode, start(mode, "hi", "Be brief."), "view").text)
    assert seen == {"api": mode.split("-")[0], "prompt": "hi", "instructions": "Be brief.", "tools": list(TOOL_NAMES),
                    "auth": "Bearer sk-test", "stream": mode.endswith("stream")}


@scenario("parallel")
def parallel(req):
    outs = yield [shell(["echo", "one"]), shell(["echo", "two"])]
    yield say(" | ".join(outs))


@pytest.mark.parametrize("mode", ["chat", "chat-stream", "responses-stream"])
def test_parallel_calls_come_in_one_reply_and_outputs_return_in_order(mode):
    with FakeModel(default=parallel) as fm:
        client = client_for(fm)
        t = turn(client, mode, start(mode, "both"))
        assert [json.loads(c[2])["command"][1] for c in t.calls] == ["one", "two"]
        assert len({c[0] for c in t.calls}) == 2
        # Outputs sent back in the opposite order still reach the scenario matched by call id.
        results = tool_results(mode, t, ["out one", "out two"])[::-1]
        assert turn(client, mode, start(mode, "both") + t.history + results).text == "out one | out two"


@scenario("broken")
def broken(req):
    out = yield call("shell", '{"command": ["ls"')
    yield say(f"got: {out}")


@pytest.mark.parametrize("mode", MODES)
def test_broken_json_arguments_arrive_verbatim(mode):
    with FakeModel(default=broken) as fm:
        text, calls = converse(client_for(fm), mode, "x", lambda name, args: "error: bad JSON")
    assert calls == [("shell", '{"command": ["ls"')] and text == "got: error: bad JSON"


@scenario("patcher")
def patcher(req):
    out = yield apply_patch(PATCH)
    yield say(out)


@pytest.mark.parametrize("mode", ["responses", "responses-stream", "responses-helper"])
def test_apply_patch_is_a_freeform_call_when_the_client_offers_one(mode):
    with FakeModel(default=patcher) as fm:
        client = client_for(fm)
        t = turn(client, mode, start(mode, "p"), tools=responses_tools(custom_patch=True))
        assert [(c[1], c[2], c[3]) for c in t.calls] == [("apply_patch", PATCH, "custom_tool_call")]
        history = start(mode, "p") + t.history + tool_results(mode, t, ["Success. Updated a.py"])
        assert turn(client, mode, history, tools=responses_tools(custom_patch=True)).text == "Success. Updated a.py"


@scenario("follow-up")
def follow_up(req):
    more = yield say("first answer")
    yield say(f"you said: {more}")


def test_a_follow_up_message_is_what_say_evaluates_to():
    with FakeModel(default=follow_up) as fm:
        client = client_for(fm)
        history = start("chat", "q")
        t = turn(client, "chat", history)
        assert t.text == "first answer"
        follow = history + t.history + [{"role": "user", "content": "more"}]
        assert turn(client, "chat", follow).text == "you said: more"


@scenario("echo")
def echo(req):
    out = yield shell(["echo", req.prompt])
    yield say(out)


def test_conversations_run_concurrently_without_server_state():
    def run_echo(name, arguments):
        return json.loads(arguments)["command"][1]

    with FakeModel(default=echo) as fm:
        client = client_for(fm)
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda i: converse(client, MODES[i % 5], f"p{i}", run_echo)[0], range(16)))
    assert answers == [f"p{i}" for i in range(16)]


async def test_the_async_client_parses_both_streams():
    with FakeModel(default=echo) as fm:
        client = openai.AsyncOpenAI(base_url=fm.base_url, api_key="x", max_retries=0, timeout=5)
        chunks = [c async for c in await client.chat.completions.create(
            model="m", messages=start("chat", "a"), stream=True)]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        async with client.responses.stream(model="m", input="a") as stream:
            call_item = (await stream.get_final_response()).output[0]
        history = [{"role": "user", "content": "a"}, call_item.model_dump(exclude_none=True),
                   {"type": "function_call_output", "call_id": call_item.call_id, "output": "A"}]
        async with client.responses.stream(model="m", input=history) as stream:
            assert (await stream.get_final_response()).output_text == "A"


# --------------------------------------------------------------------------------------------
# Faults.


@scenario("rate-limited")
def rate_limited(req):
    yield fail(429, retry_after=0.25)
    yield say("ok")


@pytest.mark.parametrize("mode", ["chat", "responses-stream"])
def test_429_shows_retry_after_then_the_scenario_proceeds(mode):
    with FakeModel(default=rate_limited) as fm:
        client = client_for(fm)
        with pytest.raises(openai.RateLimitError) as e:
            turn(client, mode, start(mode, "q"))
        assert e.value.response.headers["retry-after"] == "0.25" and e.value.code == "rate_limit_exceeded"
        assert turn(client, mode, start(mode, "q")).text == "ok"


def test_the_sdk_waits_retry_after_and_retries():
    with FakeModel(default=rate_limited) as fm:
        began = time.monotonic()
        assert turn(client_for(fm, max_retries=2), "chat", start("chat", "q")).text == "ok"
        assert time.monotonic() - began >= 0.25 and len(fm.requests) == 2


@scenario("errors")
def errors(req):
    yield fail(500, times=2)
    yield fail(401)
    yield fail(404)
    yield fail(400, body={"error": {"message": "custom", "type": "invalid_request_error", "code": "x"}})
    yield say("ok")


def test_http_errors_fire_as_often_as_asked_in_order():
    with FakeModel(default=errors) as fm:
        client = client_for(fm)
        expected = [openai.InternalServerError, openai.InternalServerError, openai.AuthenticationError,
                    openai.NotFoundError, openai.BadRequestError]
        for error in expected:
            with pytest.raises(error) as e:
                turn(client, "chat", start("chat", "q"), model="gpt-x")
        assert e.value.code == "x" and e.value.message.endswith("custom")
        assert turn(client, "chat", start("chat", "q")).text == "ok"
        assert not fm.errors  # scripted faults are not failures


def test_fault_counts_are_per_conversation():
    with FakeModel(default=errors) as fm:
        client = client_for(fm)
        for prompt in ("a", "b"):
            with pytest.raises(openai.InternalServerError):
                turn(client, "chat", start("chat", prompt))


@scenario("slow")
def slow(req):
    yield hang(5)
    yield say("finally")


def test_hang_outlasts_a_short_client_timeout():
    with FakeModel(default=slow) as fm:
        with pytest.raises(openai.APITimeoutError):
            turn(client_for(fm, timeout=0.3), "chat-stream", start("chat", "q"))
        began = time.monotonic()
        assert turn(client_for(fm), "responses", start("responses", "q")).text == "finally"
        assert time.monotonic() - began < 1


@scenario("flaky")
def flaky(req):
    yield drop()
    yield cut(times=2)
    yield say("a long enough final answer to be cut in pieces")


@pytest.mark.parametrize("mode", STREAMED)
def test_drop_then_cut_mid_stream(mode):
    with FakeModel(default=flaky) as fm:
        client = client_for(fm)
        with pytest.raises(openai.APIConnectionError):
            turn(client, mode, start(mode, "q"))
        received = []
        with pytest.raises(openai.APIConnectionError):
            args = dict(model="m", stream=True)
            if mode == "chat-stream":
                received += client.chat.completions.create(messages=start(mode, "q"), **args)
            else:
                received += client.responses.create(input=start(mode, "q"), **args)
        assert received, "a cut stream delivers a first part before breaking"
        if mode == "chat-stream":
            assert not any(r.choices[0].finish_reason for r in received)
        else:
            assert received[-1].type != "response.completed"
        with pytest.raises(openai.APIConnectionError):  # a plain JSON body is cut too
            turn(client, mode.split("-")[0], start(mode, "q"))
        assert turn(client, mode, start(mode, "q")).text == "a long enough final answer to be cut in pieces"


@scenario("blank")
def blank(req):
    yield empty()
    yield say("now with words")


@pytest.mark.parametrize("mode", MODES)
def test_empty_reply_has_no_content_and_no_calls(mode):
    with FakeModel(default=blank) as fm:
        client = client_for(fm)
        t = turn(client, mode, start(mode, "q"))
        assert not t.text and not t.calls
        assert turn(client, mode, start(mode, "q")).text == "now with words"


# --------------------------------------------------------------------------------------------
# Protocol edges and errors that must fail a test loudly.


def test_models_lists_scenarios_and_default():
    with FakeModel(default=echo, scenarios=[branchy, parallel]) as fm:
        client = client_for(fm)
        assert [m.id for m in client.models.list()] == ["branchy", "parallel", "echo", "default"]
        assert client.models.retrieve("branchy").id == "branchy"
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve("gpt-nope")
    with FakeModel(scenarios={"only": echo}) as fm:
        with pytest.raises(openai.NotFoundError) as e:
            turn(client_for(fm), "chat", start("chat", "q"), model="gpt-nope")
        assert e.value.code == "model_not_found"


@pytest.mark.parametrize("mode", ["chat", "responses"])
def test_history_that_does_not_match_the_scenario_is_a_400(mode):
    with FakeModel(default=branchy) as fm:
        client = client_for(fm)
        t = turn(client, mode, start(mode, "go"))
        outputs = tool_results(mode, t, ["yes"])
        wrong = json.loads(json.dumps(t.history + outputs).replace(t.calls[0][0], "call_9_9"))
        with pytest.raises(openai.BadRequestError, match="History does not match scenario 'branchy'.*call_0_0"):
            turn(client_for(fm, max_retries=2), mode, start(mode, "go") + wrong)
        with pytest.raises(openai.BadRequestError, match="No tool output found"):
            turn(client, mode, start(mode, "go") + t.history)
        assert len(fm.requests) == 3 and len(fm.errors) == 2  # a 400 is not retried


def test_previous_response_id_is_refused():
    with FakeModel(default=echo) as fm:
        with pytest.raises(openai.BadRequestError, match="stand-in needs full input"):
            client_for(fm).responses.create(model="m", input="q", previous_response_id="resp_1")


@scenario("strict")
def strict(req):
    out = yield shell(["patch"])
    assert "Success" in out, out
    yield say("done")


def test_a_failing_scenario_assertion_is_a_500_with_its_traceback():
    with FakeModel(default=strict) as fm:
        client = client_for(fm, max_retries=2)
        t = turn(client, "chat", start("chat", "q"))
        with pytest.raises(openai.InternalServerError, match="(?s)AssertionError: Failure.*"):
            turn(client, "chat", start("chat", "q") + t.history + tool_results("chat", t, ["Failure"]))
        assert len(fm.requests) == 2 and "assert \"Success\" in out" in fm.errors[0]


served = FakeModel.fixture(default=echo)


def test_fixture_helper_serves(served):
    assert served.env()["OPENAI_BASE_URL"] == served.base_url
    assert converse(client_for(served), "chat", "hey", lambda n, a: "hey")[0] == "hey"


def test_command_line_serves_a_scenario_module():
    proc = subprocess.Popen([sys.executable, "-m", "tests.fakemodel", "--port", "0", "--scenarios", "tests.scenarios",
                             "--default", "fix-failing-test"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert re.fullmatch(r"READY http://127\.0\.0\.1:\d+/v1\n", line), line
        client = OpenAI(base_url=line.split()[1], api_key="x", max_retries=0, timeout=5)
        assert {"fix-failing-test", "ask-explain", "default"} <= {m.id for m in client.models.list()}
        t = turn(client, "responses", start("responses", "fix it"), model="anything")
        assert json.loads(t.calls[0][2]) == {"command": ["python3", "-m", "unittest", "-q"]}
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0


def test_close_cuts_idle_keep_alive_connections():
    fm = FakeModel(default=echo)
    client = client_for(fm)
    turn(client, "chat", start("chat", "q"))  # leaves a pooled keep-alive connection
    fm.close()
    with pytest.raises(openai.APIConnectionError):
        turn(client, "chat", start("chat", "q"))
    assert not any(t.name == f"fakemodel:{fm.port}" for t in threading.enumerate())


def test_quirks_are_named_after_known_servers_only():
    with pytest.raises(ValueError, match="unknown quirks \\['vllm-everything'\\]; known: ollama-index-0"):
        FakeModel(quirks={"vllm-everything"})
    assert all(name.split("-")[0] in ("ollama", "lmstudio", "vllm", "llamacpp", "litellm", "gemini", "mistral",
                                      "deepseek", "azure", "openrouter", "groq") for name in QUIRKS)
