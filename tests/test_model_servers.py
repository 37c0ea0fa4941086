"""The fix, end to end, through every server's documented deviations: the real `offload run` on
bubblewrap (two cases on Docker), the stand-in playing each server's quirks (tests.fakemodel.QUIRKS),
streamed and not, Chat and Responses where the server offers both. A server that cannot work
(no tool support, a missing flag) ends the task with the cause and the fix in its words."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import offload_cli, part_missing
from tests.fakemodel import QUIRKS, FakeModel, apply_patch, call, hang, say, scenario, shell
from tests.scenarios import FIX_ADD, UNITTEST, chunk_of, output_text, report

# server: (its quirks, the APIs it offers)
SERVERS = {
    "ollama": ({"ollama-index-0"}, ("chat", "responses")),
    "ollama-qwen2.5-coder": ({"ollama-text-calls"}, ("chat",)),
    "lmstudio": ({"lmstudio-no-index"}, ("chat", "responses")),
    "vllm": ({"vllm-hermes-text", "vllm-reparse", "vllm-responses-custom"}, ("chat", "responses")),
    "llamacpp": ({"llamacpp-reparse"}, ("chat",)),
    "litellm": ({"litellm-object-arguments"}, ("chat",)),
    "gemini": ({"gemini-no-ids"}, ("chat",)),
    "mistral": ({"mistral-ids", "mistral-stream-options"}, ("chat",)),
    "deepseek": ({"deepseek-reasoning"}, ("chat",)),
    "azure": ({"azure-content-filter", "azure-deployment"}, ("chat", "responses")),
    "openrouter": ({"openrouter-stream-error"}, ("chat",)),
    "groq": ({"groq-tool-use-failed"}, ("chat", "responses")),
}
DOCKER = {("ollama", "chat", True), ("azure", "responses", False)}
CASES = [pytest.param(server, api, stream, marks=[pytest.mark.docker] if (server, api, stream) in DOCKER else [],
                      id=f"{server}-{api}-{'stream' if stream else 'json'}")
         for server, (_, apis) in SERVERS.items() for api in apis for stream in (True, False)]



@scenario("fix-through-quirks")
def fix_through_quirks(req):
    """fix-failing-test with what trips clients up: first a call whose arguments are botched (where
    the server passes calls as calls), then two calls at once."""
    if not req.calls_as_text:
        out = yield call("shell", '{"command": ["python3", "-m", "unittest"')
        assert "not valid JSON" in out, out
    tests, grep = yield [shell(UNITTEST), shell(["grep", "-n", "return a - b", "calc.py"])]
    assert "FAILED" in tests, tests
    line = int(re.findall(r"^(\d+):", output_text(grep), re.M)[0])
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    status = "passed" if out.split("\n")[1] == "Exit code: 0" else "failed"
    yield say(report([f"`add` returns `a + b` now (calc.py:L{line - 1}-L{line})."], [(" ".join(UNITTEST), status)])
              + f" [{chunk_of(out)}]")


def run(fm: FakeModel, repo, api: str = "chat", stream: bool = True, base_url: str | None = None,
        backend: str = "bubblewrap"):
    env = {"OPENAI_BASE_URL": base_url or fm.base_url, "OPENAI_API_KEY": "sk-stand-in",
           "OFFLOAD_MODEL_NAME": "fix-through-quirks", "OFFLOAD_MODEL_API": api,
           "OFFLOAD_MODEL_STREAM": str(stream).lower(), "OFFLOAD_SANDBOX_BACKEND": backend}
    return offload_cli("run", "Make the failing test pass", "--repo", str(repo), env=env)


@pytest.mark.parametrize("server,api,stream", CASES)
def test_the_fix_through_each_server(request, bubblewrap, server, api, stream, sample_repo):
    quirks, _ = SERVERS[server]
    docker = (server, api, stream) in DOCKER
    if docker:
        request.getfixturevalue("docker_engine")
    with FakeModel(scenarios=[fix_through_quirks], quirks=quirks) as fm:
        base_url = None
        if server == "azure":
            where = "deployments/fix-through-quirks" if api == "chat" else "v1"
            base_url = f"http://127.0.0.1:{fm.port}/openai/{where}"
        proc = run(fm, sample_repo, api, stream, base_url, "docker" if docker else "bubblewrap")
    assert proc.returncode == 0, proc.stderr
    assert "+    return a + b" in proc.stdout and "## Summary" in proc.stdout
    assert not fm.errors, fm.errors
    if server == "mistral" and stream:
        assert fm.refusals and fm.refusals[0].startswith("422")  # refused once, then never sent again
        assert sum(r.body.get("stream_options") is not None for r in fm.requests) == 1
    if quirks & {"vllm-reparse", "llamacpp-reparse"} and not fm.requests[0].calls_as_text:
        # the botched call went back as an object holding its text
        assert any("unparsed_arguments" in json.dumps(r.body) for r in fm.requests)
    if server == "groq":
        assert len(fm.refusals) == 1 and "tool_use_failed" in fm.refusals[0]  # asked again, and it passed
    if server == "vllm" and api == "responses":  # apply_patch offered freeform, then as a function
        assert any(t["type"] == "custom" for t in fm.requests[0].tools)
        assert not any(t["type"] == "custom" for t in fm.requests[-1].tools)
    if server == "deepseek":
        assert any(m.get("reasoning_content") for m in fm.requests[-1].body["messages"])
    if server == "azure":
        assert all(r.headers.get("api-key") == "sk-stand-in" for r in fm.requests)
        assert all(r.query.get("api-version") for r in fm.requests) == (api == "chat")


# quirk: (the server's words, the fix)
NO_TOOLS = {
    "ollama-no-tools": ("fix-through-quirks:latest does not support tools", "ollama pull qwen2.5-coder:7b"),
    "vllm-no-auto-tool-choice": ('"auto" tool choice requires', "start vLLM with --enable-auto-tool-choice"),
    "llamacpp-no-jinja": ("tools param requires --jinja flag", "start llama-server with --jinja"),
    "llamacpp-no-stream-tools": ("Cannot use tools with stream", "or set model.stream = false"),
    "lmstudio-no-model": ("No models loaded", "load a model in LM Studio (lms load MODEL"),
}


@pytest.mark.parametrize("quirk", NO_TOOLS)
def test_a_server_that_cannot_call_tools_is_named_with_the_fix(bubblewrap, quirk, sample_repo):
    with FakeModel(scenarios=[fix_through_quirks], quirks={quirk}) as fm:
        proc = run(fm, sample_repo)
    said, fix = NO_TOOLS[quirk]
    assert proc.returncode == 1
    assert said in proc.stderr and fix in proc.stderr, proc.stderr
    assert len(fm.requests) == 1  # a refusal that cannot pass is not asked again


@scenario("slow-model")
def slow_model(req):
    """The fix, with one model step that says nothing for a while (a long prompt on a CPU), then a
    server that never answers."""
    yield hang(2.5)
    if "hangs" in req.prompt:
        yield hang(60)
    yield from fix_through_quirks(req)


def test_a_slow_model_is_waited_for_visibly_and_a_hung_one_reported(bubblewrap, sample_repo):
    env = {"OFFLOAD_MODEL_NAME": "slow-model", "OFFLOAD_MODEL_TIMEOUT": "4", "OFFLOAD_SANDBOX_BACKEND": "bubblewrap"}
    with FakeModel(scenarios=[slow_model]) as fm:
        slow = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), env={**fm.env(), **env})
        hung = offload_cli("run", "Make the failing test pass; the server hangs", "--repo", str(sample_repo),
                           env={**fm.env(), **env})
    assert slow.returncode == 0, slow.stderr
    assert re.search(r"waiting for the model: nothing from http://127\.0\.0\.1:\d+/v1 for \d+ s \(it is given 4 s: "
                     r"model\.timeout\)", slow.stderr), slow.stderr
    assert hung.returncode == 1
    assert "sent nothing for 4 seconds; check that the server is up and not stuck" in hung.stderr
    assert "or raise model.timeout" in hung.stderr


def test_every_quirk_the_stand_in_knows_is_played_here_or_in_test_model_setup():
    played = set().union(*(quirks for quirks, _ in SERVERS.values())) | set(NO_TOOLS) | {"ollama-models"}
    assert played == set(QUIRKS)
