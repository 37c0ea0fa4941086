"""Running the real agent loop against the model stand-in in a real Docker sandbox, for the agent's tests."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from offload.sandbox.manager import SandboxConfig, SandboxManager
from offload.server.agent.loop import AgentResult, Budget, run_agent
from offload.server.agent.model import ModelClient
from tests.conftest import make_repo
from tests.fakemodel import FakeModel

# Both APIs, streamed and not: every conversation test runs in each.
MODES = [pytest.param(api, stream, id=f"{api}-{'stream' if stream else 'json'}")
         for api in ("chat", "responses") for stream in (False, True)]


@pytest.fixture(scope="module")
def shared_sandbox(docker_engine, tmp_path_factory):
    manager = SandboxManager(SandboxConfig(), tmp_path_factory.mktemp("cache"), owner="offload-tests")
    repo = make_repo(tmp_path_factory.mktemp("agent") / "calc")
    (repo / "AGENTS.md").unlink()  # these scenarios test the loop, not the checks AGENTS.md enforces
    box = manager.create(manager.snapshot(repo), {"offload.test": "agent"})
    yield box
    manager.close()


@pytest.fixture
def sandbox(shared_sandbox):
    """A real sandbox over the sample repository (calc.py's `add` subtracts; its test fails).

    One per module, put back to the sample's commit before each test: starting a sandbox takes
    0.4 s, a reset a few milliseconds.
    """
    shared_sandbox.git("reset", "-q", "--hard", shared_sandbox.snapshot.base)
    shared_sandbox.git("clean", "-qfdx")
    return shared_sandbox


@dataclass
class Run:
    result: AgentResult
    events: list[tuple[str, dict]]
    model: FakeModel

    def of(self, kind: str) -> list[dict]:
        return [data for k, data in self.events if k == kind]

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


def client(fm: FakeModel, api: str, stream: bool, name: str = "scenario", api_key: str = "sk-test",
           base_url: str | None = None, **options) -> ModelClient:
    """A client with short timeouts and one quick retry, so that fault tests stay fast."""
    settings = {"timeout": 5.0, "max_retries": 1, "backoff": 0.01, **options}
    return ModelClient(base_url or fm.base_url, api_key, name, api=api, stream=stream, **settings)


def run(sandbox, scenario, api: str, stream: bool, *, name: str = "scenario",
        prompt: str = "Make the failing test pass", budget: Budget | None = None, cancel: threading.Event | None = None, read_only: bool = False,
        on_event: Callable[[str, dict], None] | None = None, model_options: dict | None = None,
        stand_in_errors: bool = False, **agent_options) -> Run:
    """`scenario` played by the stand-in through the real loop; every event must be storable JSON."""
    events: list[tuple[str, dict]] = []

    def emit(kind: str, data: dict) -> None:
        json.dumps(data)  # the task store writes every event as JSON
        events.append((kind, data))
        if on_event is not None:
            on_event(kind, data)

    with FakeModel(default=scenario) as fm:
        model = client(fm, api, stream, name, **(model_options or {}))

        async def go() -> AgentResult:
            try:
                return await run_agent(sandbox, model, prompt, emit, cancel or threading.Event(),
                                       read_only=read_only, budget=budget, **agent_options)
            finally:
                await model.close()

        result = asyncio.run(go())
    if not stand_in_errors:
        assert not fm.errors, fm.errors
    return Run(result, events, fm)
