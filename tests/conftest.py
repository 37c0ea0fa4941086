"""Shared fixtures: isolated state dirs, a real git repository, the real Docker engine, the model stand-in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "calc"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def make_repo(path: Path, source: Path = EXAMPLE) -> Path:
    """A real git repository with `source`'s files committed."""
    shutil.copytree(source, path)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "initial")
    return path


@pytest.fixture
def sample_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "calc")


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Each test gets its own state, cache and config dirs, and no model settings from the host."""
    dirs = {name: str(tmp_path / "xdg" / name.lower()) for name in ("XDG_STATE_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME")}
    for name, value in dirs.items():
        monkeypatch.setenv(name, value)
    for name in list(os.environ):
        if name.startswith(("OPENAI_", "OFFLOAD_")):
            monkeypatch.delenv(name)
    return dirs


def host_strings(tmp_path: Path) -> list[str]:
    """What names this host's user and files: the test's own directory (the cache lives in it),
    the working directory and the home directory."""
    return [str(tmp_path), os.getcwd(), str(Path.home()) + "/"]


def part_missing(problem: str) -> NoReturn:
    """A real part the tests need is not here: a failure under CI=true, where everything must be
    installed (scripts/install.sh), a skip on a developer's machine."""
    if os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)


@pytest.fixture(scope="session")
def docker_engine():
    """The real Docker engine with the sandbox image; a failure (not a skip) under CI=true."""
    import docker

    from offload.sandbox.image import DEFAULT_IMAGE, image_is_current

    problem = None
    try:
        client = docker.from_env()
        client.ping()
        if not image_is_current(client, DEFAULT_IMAGE):
            problem = f"sandbox image {DEFAULT_IMAGE} is missing: run `offload image build`"
    except Exception as e:  # any way the engine is unreachable
        problem = f"no Docker engine: {e}"
    if problem:
        part_missing(problem)
    return client


@pytest.fixture(scope="session")
def bubblewrap():
    """A host where bubblewrap sandboxes start; a failure (not a skip) under CI=true."""
    from offload.sandbox.errors import SandboxError
    from offload.server.doctor import probe_bubblewrap

    try:
        probe_bubblewrap()
    except SandboxError as e:
        part_missing(str(e))


@pytest.fixture
def fake_model():
    from tests.fakemodel import FakeModel, load_scenarios

    with FakeModel(scenarios=load_scenarios("tests.scenarios")) as model:
        yield model
    assert not model.errors, model.errors


def offload_cli(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 300):
    """The real `offload` command in a subprocess."""
    return subprocess.run([sys.executable, "-m", "offload.server.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=timeout)
