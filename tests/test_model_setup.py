"""Finding a model and checking it: zero-config discovery picks a chat model that can call tools,
and `offload doctor` sends a real request with Offload's tools and says what works and the fix."""

from __future__ import annotations

import json

import pytest

from offload.server import config as cfg
from tests.conftest import offload_cli
from tests.fakemodel import FakeModel, scenario, shell


@scenario("qwen2.5-coder:7b")
def probe(req):
    """Answers doctor's probe as a model that calls tools does."""
    assert {"shell", "apply_patch", "update_plan"} <= set(req.tool_names), req.tool_names
    yield shell(["true"])


def test_zero_config_passes_over_models_that_cannot_call_tools(tmp_path, monkeypatch):
    """Ollama lists newest first: an embedding model and one without tools come before the coder."""
    with FakeModel(scenarios=[probe], quirks={"ollama-models"}) as fm:
        monkeypatch.setattr(cfg, "LOCAL_PORTS", (1, fm.port))
        found = cfg.resolve_model(cfg.load_config(tmp_path))
    assert fm.model_names()[:2] == ["nomic-embed-text:latest", "gemma:2b"]
    assert found["base_url"] == fm.base_url and found["name"] == "qwen2.5-coder:7b"
    assert found["timeout"] == 120.0 and found["api"] == "chat"  # the client's settings come along


def test_a_server_with_no_model_that_can_call_tools_is_named(tmp_path, monkeypatch):
    with FakeModel(quirks={"ollama-models"}) as fm:  # only the embedding model and gemma:2b
        monkeypatch.setenv("OPENAI_BASE_URL", fm.base_url)
        with pytest.raises(cfg.ConfigError) as e:
            cfg.resolve_model(cfg.load_config(tmp_path))
    assert "lists no model that can chat and call tools (it lists: nomic-embed-text:latest, gemma:2b)" in str(e.value)
    assert "ollama pull qwen2.5-coder:7b" in str(e.value)


def doctor(env: dict) -> dict:
    proc = offload_cli("doctor", "--json", env={"OFFLOAD_MODEL_NAME": "qwen2.5-coder:7b", **env})
    return {r["check"]: r for r in json.loads(proc.stdout)}


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_doctor_sends_a_real_request_with_the_tools(api):
    with FakeModel(scenarios=[probe]) as fm:
        checks = doctor({**fm.env(), "OFFLOAD_MODEL_API": api})
    assert checks["model"]["ok"] and checks["model"]["detail"].startswith(f"qwen2.5-coder:7b at {fm.base_url}")
    assert checks["tools"] == {"check": "tools", "ok": True, "detail": "the model calls tools", "fix": ""}
    assert checks["streaming"]["ok"]
    assert [r.stream for r in fm.requests if r.method == "POST"] == [False, True]


def test_doctor_says_when_calls_come_as_text():
    with FakeModel(scenarios=[probe], quirks={"ollama-text-calls"}) as fm:
        checks = doctor(fm.env())
    assert checks["tools"]["ok"] and "by writing them as text" in checks["tools"]["detail"]


@pytest.mark.parametrize("env,said,fix", [
    ({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "k"}, "cannot reach the model endpoint",
     "check model.base_url"),
    ({"OFFLOAD_MODEL_NAME": "qwen3-coder"}, "the server does not list this model (it lists: qwen2.5-coder:7b)",
     "set model.name"),
])
def test_doctor_names_what_fails_and_the_fix(env, said, fix):
    with FakeModel(scenarios=[probe]) as fm:
        checks = doctor({**fm.env(), **env})
    model = checks["model"]
    assert not model["ok"] and said in model["detail"] and fix in model["detail"] + model["fix"]
    assert "tools" not in checks


def test_doctor_names_a_model_without_tool_support():
    with FakeModel(scenarios=[probe], quirks={"ollama-no-tools"}) as fm:
        checks = doctor(fm.env())
    assert not checks["model"]["ok"] and "does not support tools" in checks["model"]["detail"]
    assert "ollama pull qwen2.5-coder:7b" in checks["model"]["detail"]


@pytest.mark.parametrize("quirk,window", [("vllm-reparse", 32768), ("llamacpp-reparse", 8192)])
def test_doctor_tells_the_context_window_where_the_server_says_it(quirk, window):
    """vLLM in its model list (max_model_len), llama.cpp in its /props."""
    with FakeModel(scenarios=[probe], quirks={quirk}) as fm:
        checks = doctor(fm.env())
    assert checks["model"]["ok"] and checks["model"]["detail"].endswith(f"answers; context window {window} tokens")
