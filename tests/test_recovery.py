"""Nothing lost: a process killed mid-task leaves every task listed with its whole history."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import offload_cli

pytestmark = pytest.mark.docker


def start_run(fake_model, repo, scenario: str) -> subprocess.Popen:
    env = {**os.environ, "OPENAI_BASE_URL": fake_model.base_url, "OFFLOAD_MODEL_NAME": scenario,
           "OPENAI_API_KEY": "test-key"}
    return subprocess.Popen([sys.executable, "-m", "offload.server.cli", "run", "wait a minute", "--repo", str(repo),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def read_until(proc: subprocess.Popen, predicate) -> list[dict]:
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if predicate(events[-1]):
            return events
    raise AssertionError(f"the run ended before the expected event: {proc.stderr.read()}")


def test_cli_killed_mid_task_keeps_the_task_and_its_history(docker_engine, fake_model, sample_repo):
    proc = start_run(fake_model, sample_repo, "slow-command")
    events = read_until(proc, lambda e: e["type"] == "tool.call")
    task_id = events[-1]["task"]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    listed = [json.loads(line) for line in offload_cli("tasks", "--json", cwd=sample_repo).stdout.splitlines()]
    (task,) = listed
    assert task["id"] == task_id and task["state"] == "failed" and task["interrupted"]
    assert "interrupted" in task["reason"]
    shown = json.loads(offload_cli("show", task_id, "--json").stdout)
    kinds = [e["type"] for e in shown["events"]]
    assert kinds[:3] == ["state", "state", "sandbox"] and "tool.call" in kinds
    assert [e["state"] for e in shown["events"] if e["type"] == "state"][-1] == "failed"


def test_cancel_from_another_process(docker_engine, fake_model, sample_repo):
    proc = start_run(fake_model, sample_repo, "slow-command")
    events = read_until(proc, lambda e: e["type"] == "tool.call")
    task_id = events[-1]["task"]
    cancelled = offload_cli("cancel", task_id, cwd=sample_repo)
    assert cancelled.returncode == 0, cancelled.stderr
    events += read_until(proc, lambda e: e["type"] == "result")
    assert proc.wait(timeout=60) == 1
    assert events[-1]["record"]["state"] == "cancelled"
    result = next(e for e in events if e["type"] == "tool.result")
    assert result["exit_code"] != 0  # the sleep was killed, not waited out
    assert offload_cli("cancel", task_id).returncode == 2  # a finished task cannot be cancelled again


def test_a_sandbox_whose_owner_is_killed_stops_by_itself(docker_engine, fake_model, sample_repo):
    proc = start_run(fake_model, sample_repo, "slow-command")
    events = read_until(proc, lambda e: e["type"] == "tool.call")
    task_id = events[-1]["task"]
    assert docker_engine.containers.list(filters={"label": f"offload.task={task_id}"})
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while docker_engine.containers.list(all=True, filters={"label": f"offload.task={task_id}"}):
        assert time.monotonic() < deadline, "the orphaned sandbox is still there"
        time.sleep(0.2)
