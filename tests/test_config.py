"""Configuration layers and model discovery."""

from __future__ import annotations

import pytest

from offload.server import config as cfg
from tests.fakemodel import FakeModel, load_scenarios


def test_layers_later_wins(tmp_path, monkeypatch):
    user = tmp_path / "xdg" / "xdg_config_home" / "offload"
    user.mkdir(parents=True)
    (user / "config.toml").write_text('[model]\nname = "from-user"\n[tasks]\nconcurrency = 2\n')
    repo = tmp_path / "repo"
    (repo / ".offload").mkdir(parents=True)
    (repo / ".offload" / "config.toml").write_text('[model]\nname = "from-repo"\napi = "responses"\n')
    monkeypatch.setenv("OFFLOAD_TASKS_CONCURRENCY", "7")
    config = cfg.load_config(repo, overrides={"model": {"api": "chat"}})
    assert config.get("model.name") == "from-repo"
    assert config.get("tasks.concurrency") == 7
    assert config.get("model.api") == "chat"


def test_pyproject_table_and_bad_values(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "pyproject.toml").write_text('[tool.offload.sandbox]\nmemory = "4g"\n')
    assert cfg.load_config(repo).get("sandbox.memory") == "4g"
    monkeypatch.setenv("OFFLOAD_TASKS_CONCURRENCY", "many")
    with pytest.raises(cfg.ConfigError, match="tasks.concurrency must be a int"):
        cfg.load_config(repo)
    monkeypatch.delenv("OFFLOAD_TASKS_CONCURRENCY")
    with pytest.raises(cfg.ConfigError, match="unknown setting 'model.nmae'"):
        cfg.load_config(repo, overrides={"model": {"nmae": "x"}})
    (repo / "pyproject.toml").write_text("[tool.offload\n")
    with pytest.raises(cfg.ConfigError, match="pyproject.toml"):
        cfg.load_config(repo)


def test_no_model_says_exactly_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setattr(cfg, "LOCAL_PORTS", ())
    with pytest.raises(cfg.ConfigError) as error:
        cfg.resolve_model(cfg.load_config(tmp_path))
    assert "OPENAI_API_KEY" in str(error.value) and "OPENAI_BASE_URL" in str(error.value)


def test_a_local_server_on_a_well_known_port_is_found(tmp_path, monkeypatch):
    with FakeModel(scenarios=load_scenarios("tests.scenarios")) as model:
        port = int(model.base_url.split(":")[2].split("/")[0])
        monkeypatch.setattr(cfg, "LOCAL_PORTS", (1, port))  # nothing on the first, the stand-in on the second
        found = cfg.resolve_model(cfg.load_config(tmp_path))
    assert found["base_url"] == model.base_url
    assert found["name"] in load_scenarios("tests.scenarios")
