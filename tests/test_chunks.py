"""Chunk ids name one output in a task's whole log: a follow-up numbers on after the earlier runs.

A summary written in a follow-up may cite an output of an earlier run; the check of its
citations must read that output, not one of the follow-up's own that happens to share its id.
"""

from __future__ import annotations

import re

import pytest

from offload.server.tasks.manager import TaskManager
from tests.fakemodel import FakeModel, apply_patch, load_scenarios, say, scenario, shell
from tests.scenarios import FIX_ADD, UNITTEST, chunk_of

pytestmark = pytest.mark.docker

PRINT = ["python3", "-c", "print('still fine')"]


@scenario("cite-across-runs")
def cite_across_runs(req):
    """Run 1 sees the tests fail, fixes them and sees them pass; the follow-up runs one more command
    and reports citing the first run's outputs: one honestly, one claiming the failing run passed."""
    failing = chunk_of((yield shell(UNITTEST)))
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    passing = chunk_of((yield shell(UNITTEST)))
    followup = yield say(f"## Summary\n- Fixed `add` (calc.py:L4-L5).\n\n## Testing\n"
                         f"- `python3 -m unittest -q` passed [{passing}]")
    assert "print" in followup, followup
    extra = chunk_of((yield shell(PRINT)))
    yield say(f"## Summary\n- Checked again (calc.py:L4-L5).\n\n## Testing\n"
              f"- `python3 -m unittest -q` passed [{passing}]\n"
              f"- `{' '.join(PRINT)}` passed [{extra}]\n"
              f"- `python3 -m unittest -q` (before the fix) passed [{failing}]")


@pytest.fixture
def fake_model():
    with FakeModel(scenarios=load_scenarios("tests.scenarios", __name__)) as model:
        yield model
    assert not model.errors, model.errors


async def test_a_follow_up_numbers_chunks_on_and_checks_citations_of_earlier_runs(docker_engine, fake_model,
                                                                                  sample_repo):
    manager = TaskManager(overrides={"model": {"base_url": fake_model.base_url, "name": "cite-across-runs"}})
    task_id = manager.submit("Make the failing test pass", sample_repo)["id"]
    assert (await manager.wait(task_id))["state"] == "finished"
    manager.follow_up(task_id, "Run a print as well")
    record = await manager.wait(task_id)
    assert record["state"] == "finished", record["reason"]

    events = manager.events(task_id)
    results = [e for e in events if e["type"] == "tool.result"]
    assert [e["chunk"] for e in results] == ["c1", "c2", "c3", "c4"]  # distinct across both runs
    assert [e["exit_code"] for e in results if e["name"] == "shell"] == [1, 0, 0]
    assert re.match(r"Chunk: c4\n", results[-1]["output"])  # what the follow-up's model was told

    first, second = [e["citations"] for e in events if e["type"] == "citations"]
    assert all(c["ok"] for c in first)
    checks = {c["citation"]: c for c in second if c["kind"] == "check"}
    assert checks["`python3 -m unittest -q` passed [c3]"]["ok"]  # the first run's passing tests
    assert checks[f"`{' '.join(PRINT)}` passed [c4]"]["ok"]
    false_claim = checks["`python3 -m unittest -q` (before the fix) passed [c1]"]
    assert not false_claim["ok"] and false_claim["reason"] == "claims passed, but c1 exited 1"
    assert {c["citation"]: c["ok"] for c in second if c["kind"] == "chunk"} == {"c3": True, "c4": True, "c1": True}
