"""Best-of-N: attempts run in parallel sandboxes, the best is chosen, every attempt stays usable.

The `best-of-three` scenario plays each attempt differently: a wrong fix whose tests fail, a
right fix with a larger diff, and the minimal right fix, so the ranking is seen working on real
test runs in real Docker sandboxes.
"""

from __future__ import annotations

import json

import pytest
from lsprotocol import types
from pygls.uris import from_fs_path

from offload.server.tasks.manager import TaskManager
from tests.conftest import make_repo, offload_cli
from tests.test_e2e_lsp import client, execute, start  # noqa: F401 (client is a fixture)
from tests.test_e2e_cli import model_env

pytestmark = pytest.mark.docker

WRONG, VERBOSE, MINIMAL = "+    return a * b", '+"""A tiny calculator."""', "+    return a + b"


def kind_of(diff: str) -> str:
    return "wrong" if WRONG in diff else "verbose" if VERBOSE in diff else "minimal"


def test_three_attempts_the_minimal_passing_fix_wins_and_each_stays_appliable(docker_engine, fake_model,
                                                                                sample_repo):
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), "--attempts", "3",
                       env=model_env(fake_model, "best-of-three"))
    assert proc.returncode == 0, proc.stderr
    assert MINIMAL in proc.stdout and VERBOSE not in proc.stdout and WRONG not in proc.stdout
    listed = [line for line in proc.stderr.splitlines() if line[:10] in ("  attempt ", "* attempt ")]
    assert len(listed) == 3 and sum(line.startswith("*") for line in listed) == 1, proc.stderr

    task_id = json.loads(offload_cli("tasks", "--json", cwd=sample_repo).stdout)["id"]
    record = json.loads(offload_cli("show", task_id, "--json", cwd=sample_repo).stdout)
    assert record["state"] == "finished" and record["attempts"] == 3
    results = {}
    for a in record["attempt_results"]:
        diff = offload_cli("diff", task_id, "--attempt", str(a["attempt"]), cwd=sample_repo).stdout
        results[kind_of(diff)] = a
    assert set(results) == {"wrong", "verbose", "minimal"}
    assert record["attempt"] == results["minimal"]["attempt"]
    assert results["minimal"]["passed"] == results["verbose"]["passed"] == 1
    assert results["wrong"]["passed"] == 0 and results["wrong"]["failed"] == 1
    assert results["minimal"]["diff_lines"] < results["verbose"]["diff_lines"]
    assert f"attempt {record['attempt']} of 3 chosen" in record["reason"]
    # every attempt ran in a sandbox of its own, its events tagged with its number
    sandboxes = {e["attempt"]: e["sandbox"] for e in record["events"] if e["type"] == "sandbox"}
    assert sorted(sandboxes) == [1, 2, 3] and len(set(sandboxes.values())) == 3
    # tokens and cost are the sum of the attempts'
    assert record["input_tokens"] == sum(a["input_tokens"] for a in record["attempt_results"]) > 0

    # a follow-up would continue the chosen attempt's conversation, not another's
    patches = [c.arguments for item in TaskManager().conversation(task_id) if item["role"] == "assistant"
               for c in item["calls"] if c.name == "apply_patch"]
    assert len(patches) == 1 and "return a + b" in patches[0] and "tiny calculator" not in patches[0]

    # the checkout is untouched until an attempt is applied; another attempt can be applied instead
    assert "return a - b" in (sample_repo / "calc.py").read_text()
    verbose = str(results["verbose"]["attempt"])
    applied = offload_cli("apply", task_id, "--attempt", verbose, cwd=sample_repo)
    assert applied.returncode == 0, applied.stderr
    text = (sample_repo / "calc.py").read_text()
    assert '"""A tiny calculator."""' in text and "return a + b" in text
    record = json.loads(offload_cli("show", task_id, "--json", cwd=sample_repo).stdout)
    assert record["attempt"] == int(verbose) and record["reason"].startswith(f"attempt {verbose} of 3 chosen by you")

    # a follow-up continues the attempt now chosen, in a sandbox holding its change
    proc = offload_cli("followup", task_id, "Show me calc.py", "--json", cwd=sample_repo,
                       env=model_env(fake_model, "best-of-three"))
    record = json.loads(proc.stdout.splitlines()[-1])["record"]
    assert proc.returncode == 0, (record["state"], record["reason"], record["message"], record["checks"])
    assert record["state"] == "finished" and 'begins `"""A tiny calculator."""`' in record["message"]

    for bad in (["diff", task_id, "--attempt", "4"], ["apply", task_id, "--attempt", "0"]):
        proc = offload_cli(*bad, cwd=sample_repo)
        assert proc.returncode == 2 and "attempts 1 to 3" in proc.stderr, proc.stderr


def test_attempts_must_be_a_small_whole_number(fake_model, sample_repo):
    for value in ("0", "17"):
        proc = offload_cli("run", "Fix it", "--repo", str(sample_repo), "--attempts", value,
                           env=model_env(fake_model, "best-of-three"))
        assert proc.returncode == 2 and "attempts must be a whole number from 1 to 16" in proc.stderr
    assert offload_cli("tasks", "--json", cwd=sample_repo).stdout == ""


def test_a_single_attempt_task_refuses_an_attempt_number(docker_engine, fake_model, sample_repo):
    assert offload_cli("run", "Fix it", "--repo", str(sample_repo), env=model_env(fake_model)).returncode == 0
    task_id = json.loads(offload_cli("tasks", "--json", cwd=sample_repo).stdout)["id"]
    proc = offload_cli("diff", task_id, "--attempt", "1", cwd=sample_repo)
    assert proc.returncode == 2 and "ran a single attempt" in proc.stderr


def test_when_every_attempt_fails_the_task_fails_naming_each(docker_engine, fake_model, sample_repo):
    proc = offload_cli("run", "Fix it", "--repo", str(sample_repo), "--attempts", "2",
                       env={**model_env(fake_model, "no-such-model"), "OFFLOAD_MODEL_MAX_RETRIES": "0"})
    assert proc.returncode == 1
    task_id = json.loads(offload_cli("tasks", "--json", cwd=sample_repo).stdout)["id"]
    record = json.loads(offload_cli("show", task_id, "--json", cwd=sample_repo).stdout)
    assert record["state"] == "failed" and record["reason"].startswith("all 2 attempts failed: 1: ")
    assert "; 2: " in record["reason"] and "no-such-model" in record["reason"]
    fake_model.errors.clear()  # the unknown model was the point


async def test_best_of_n_from_the_editor(client, fake_model, tmp_path):  # noqa: F811
    repo = make_repo(tmp_path / "calc")
    editor = await start(client, repo, fake_model, "visual-studio-code", "best-of-three")
    task_id = (await execute(client, "offload.code", {"prompt": "Make the failing test pass",
                                                      "attempts": 3}))["taskId"]
    await editor.until(lambda: editor.state(task_id) in ("finished", "failed", "cancelled"))
    summary = [u for u in editor.updates if u["taskId"] == task_id][-1]
    assert summary["state"] == "finished" and summary["attempts"] == 3
    assert len(summary["attemptResults"]) == 3
    # progress names the attempt each step belongs to
    reports = client.progress_reports[f"offload-{task_id}"]
    assert any(isinstance(r, types.WorkDoneProgressReport) and (r.message or "").startswith("attempt ")
               for r in reports)

    shown = await execute(client, "offload.showTask", {"taskId": task_id})
    assert kind_of(shown["diff"]) == "minimal" and shown["attempt"] == summary["attempt"]
    assert shown["hunks"] and all(h["status"] == "pending" for h in shown["hunks"])
    others = {}
    for a in (r._asdict() for r in summary["attemptResults"]):  # notifications arrive as named tuples
        if a["attempt"] != summary["attempt"]:
            other = await execute(client, "offload.showTask", {"taskId": task_id, "attempt": a["attempt"]})
            assert other["attempt"] == a["attempt"] and all(e.get("attempt") in (None, a["attempt"])
                                                            for e in other["events"])
            others[kind_of(other["diff"])] = a["attempt"]
    assert set(others) == {"wrong", "verbose"}

    with pytest.raises(Exception, match="attempts 1 to 3"):
        await execute(client, "offload.apply", {"taskId": task_id, "attempt": 7})
    with pytest.raises(Exception, match="attempts must be a whole number"):
        await execute(client, "offload.code", {"prompt": "again", "attempts": "three"})

    applied = await execute(client, "offload.apply", {"taskId": task_id, "attempt": others["verbose"]})
    assert applied["files"] == ["calc.py"]
    await editor.until(lambda: editor.edits)
    (change,) = editor.edits[0].edit.document_changes
    assert change.text_document.uri == from_fs_path(str(repo / "calc.py"))
    assert '"""A tiny calculator."""' in change.edits[0].new_text
    # the editor hears that another attempt is now the task's change
    await editor.until(lambda: editor.updates[-1]["attempt"] == others["verbose"], timeout=10)
