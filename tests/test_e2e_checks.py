"""Evidence end to end through `offload run`: checks declared from AGENTS.md and proven from the
task's own runs, and forged passes that never yield a ✔ or exit 0. Bubblewrap sandboxes: the
backend does not matter here, and they start in milliseconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import git, offload_cli

AGENTS_MD = """# calc

A tiny calculator.

## Dev environment tips
- Everything is in the standard library; do not run `pip install -e .` (the sandbox has no network).

## Testing instructions
```bash
python3 -m unittest -q                        # the whole suite: it must pass before you finish
python3 -m unittest -q test_calc.<TestCase>   # one test case while you work
```
- **Release:** `make release` — maintainers only, never from a task.
"""
TOOLS_AGENTS_MD = """## Testing
Run `python3 -m unittest -q` from this directory: the root suite does not collect these tests.
"""
TOOLS_TEST = """import unittest


class ToolsTest(unittest.TestCase):
    def test_truth(self):
        self.assertTrue(True)
"""


def env(fake_model, scenario: str) -> dict:
    return {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "test-key", "OFFLOAD_MODEL_NAME": scenario,
            "OFFLOAD_SANDBOX_BACKEND": "bubblewrap"}


def commit(repo, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", message)


def record_and_events(repo) -> tuple[dict, list[dict]]:
    task_id = json.loads(offload_cli("tasks", "--json", cwd=repo).stdout.splitlines()[-1])["id"]
    shown = json.loads(offload_cli("show", task_id, "--json", cwd=repo).stdout)
    return shown, shown["events"]


@pytest.fixture
def real_world_repo(sample_repo):
    """The sample with a real-world-style AGENTS.md and a tools/ package with its own."""
    (sample_repo / "AGENTS.md").write_text(AGENTS_MD)
    (sample_repo / "tools").mkdir()
    (sample_repo / "tools" / "AGENTS.md").write_text(TOOLS_AGENTS_MD)
    (sample_repo / "tools" / "test_tools.py").write_text(TOOLS_TEST)
    commit(sample_repo, "agents")
    return sample_repo


def test_checks_from_a_testing_instructions_block_are_declared_run_after_the_last_edit_and_proven(
        bubblewrap, fake_model, real_world_repo):
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(real_world_repo),
                       env=env(fake_model, "declare-and-prove"))
    assert proc.returncode == 0, proc.stderr
    record, events = record_and_events(real_world_repo)
    (offer,) = [e for e in events if e["type"] == "checks.offered"]
    offered = {(c["command"], c["directory"]): c for c in offer["candidates"]}
    assert offered[("python3 -m unittest -q test_calc.<TestCase>", ".")]["placeholders"] == ["<TestCase>"]
    assert ("python3 -m unittest -q", "tools") in offered  # the nested file's, in its directory
    assert any("warns" in n for n in offered[("pip install -e .", ".")]["notes"])
    # each check passed, proven by its own run after the edit: the placeholder filled, the nested one in tools/
    checks = {c["check"].split("`")[1]: c for c in record["checks"] if c["kind"] == "testing"}
    assert [c["status"] for c in checks.values()] == ["passed"] * 3, record["checks"]
    results = {e["chunk"]: e for e in events if e["type"] == "tool.result"}
    filled = results[checks["python3 -m unittest -q test_calc.CalcTest"]["chunks"][0]]
    assert filled["command"] == ["python3", "-m", "unittest", "-q", "test_calc.CalcTest"] and filled["exit_code"] == 0
    nested = results[checks["cd tools && python3 -m unittest -q"]["chunks"][0]]
    assert "Ran 1 test" in nested["output"] and nested["exit_code"] == 0
    declared = [e for e in events if e["type"] == "tool.result" and e["name"] == "declare_checks"]
    assert "fill in the placeholder" in declared[0]["output"]
    assert {(d["command"], d["directory"]) for d in declared[1]["declared"]} == {
        ("python3 -m unittest -q", "."), ("python3 -m unittest -q test_calc.CalcTest", "."),
        ("python3 -m unittest -q", "tools")}
    dismissed = [c for c in record["checks"] if c["status"] == "dismissed"]
    assert {c["check"] for c in dismissed} == {"`pip install -e .`", "`make release`"}
    assert all(c["reason"] for c in dismissed)
    # the harness ran no command of its own: no candidate runs unless the model runs it
    assert not [e for e in events if e.get("by") == "harness"]
    # a follow-up keeps the declarations: after its edit it runs them again, and nobody has to remind it
    followed = offload_cli("followup", record["id"], "Document add", cwd=real_world_repo,
                           env=env(fake_model, "declare-and-prove"))
    assert followed.returncode == 0, followed.stderr
    record, events = record_and_events(real_world_repo)
    assert '"""Sum of a and b."""' in offload_cli("diff", record["id"], cwd=real_world_repo).stdout
    assert not [e for e in events if e["type"] == "note" and "told" in e]


@pytest.mark.parametrize(("how", "reason"), [
    ("patch", "c1 is the output of apply_patch, not of a command run"),
    ("failing", "c2 exited 1"),
    ("stale", "c2 ran before the last edit (c3)"),
    ("other", "not `python -m unittest`"),
])
def test_a_forged_pass_never_exits_0_nor_shows_as_passed(bubblewrap, fake_model, sample_repo, how, reason):
    (sample_repo / "AGENTS.md").unlink()  # nothing else to prove: the Testing line alone decides
    commit(sample_repo, "no agents file")
    proc = offload_cli("run", f"Fix add, forged: {how}", "--repo", str(sample_repo), env=env(fake_model, "forge-pass"))
    assert proc.returncode == 1, proc.stderr
    assert "finished, but its checks are not proven" in proc.stderr and reason in proc.stderr, proc.stderr
    record, _ = record_and_events(sample_repo)
    assert record["state"] == "finished"
    (check,) = record["checks"]  # what the editor's task page shows: no ✔
    assert (check["status"], check["claimed"]) == ("unverified", "passed") and reason in check["reason"]


def test_a_declared_check_not_run_after_the_last_edit_fails_the_task(bubblewrap, fake_model, real_world_repo):
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(real_world_repo), "--json",
                       env=env(fake_model, "declare-then-skip"))
    assert proc.returncode == 1, proc.stderr  # with --json too, stderr says why
    assert "`python3 -m unittest -q` — not run: no run of it since the last edit" in proc.stderr, proc.stderr
    record, events = record_and_events(real_world_repo)
    assert [c["status"] for c in record["checks"] if c["kind"] in ("testing", "declared")] == ["unverified", "not run"]
    assert not [e for e in events if e.get("by") == "harness"]  # declared by the model: never run by the harness


def test_a_follow_up_of_an_interrupted_task_is_told_its_edits_are_gone(bubblewrap, fake_model, sample_repo):
    proc = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "run", "Fix add", "--repo", str(sample_repo),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env(fake_model, "killed-then-told")})
    for line in proc.stdout:
        event = json.loads(line)
        if event["type"] == "tool.call" and "sleep" in event["arguments"]:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    task_id = event["task"]
    listed = json.loads(offload_cli("tasks", "--json", cwd=sample_repo).stdout)  # finds the task interrupted
    assert (listed["id"], listed["interrupted"]) == (task_id, True)
    followed = offload_cli("followup", task_id, "Go on.", cwd=sample_repo, env=env(fake_model, "killed-then-told"))
    assert followed.returncode == 0, followed.stderr
    assert "return a + b" in offload_cli("diff", task_id, cwd=sample_repo).stdout


def test_candidates_left_undecided_are_asked_about_once_and_never_run(bubblewrap, fake_model, real_world_repo):
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(real_world_repo), "--json",
                       env=env(fake_model, "ignore-candidates"))
    assert proc.returncode == 0, proc.stderr  # the one check reported is proven
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    (note,) = [e for e in events if e["type"] == "note" and "told" in e]
    assert "Candidates 1, 2, 3, 4, 5 of the list" in note["told"], note
    assert [e["arguments"] for e in events if e["type"] == "tool.call"] == [
        e["arguments"] for e in events if e["type"] == "tool.call" and not e.get("by")]
    assert len([e for e in events if e["type"] == "tool.call"]) == 2  # the patch and the model's own run


def test_a_task_that_fails_says_why_on_stderr_with_json_too(bubblewrap, fake_model, sample_repo):
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), "--json",
                       env={**env(fake_model, "fix-failing-test"), "OFFLOAD_BUDGET_MAX_STEPS": "1"})
    assert proc.returncode == 1 and "failed: step budget reached" in proc.stderr, proc.stderr


def test_a_run_before_a_follow_up_rebuilt_the_workspace_proves_nothing(bubblewrap, fake_model, sample_repo):
    from offload.server.tasks.manager import TaskManager

    (sample_repo / "AGENTS.md").unlink()
    commit(sample_repo, "no agents file")
    proc = offload_cli("run", "Fix add", "--repo", str(sample_repo), env=env(fake_model, "cite-before-rejection"))
    assert proc.returncode == 0, proc.stderr
    record, _ = record_and_events(sample_repo)
    manager = TaskManager()
    comment = [h.id for h, _, _ in manager.hunks(record["id"]) if "product" in "".join(h.result_lines)]
    manager.reject(record["id"], comment)  # as the editor's Reject does
    followed = offload_cli("followup", record["id"], "Anything else?", cwd=sample_repo,
                           env=env(fake_model, "cite-before-rejection"))
    assert followed.returncode == 1, followed.stderr
    assert "c2 ran before the workspace was rebuilt for a follow-up" in followed.stderr, followed.stderr


@pytest.mark.parametrize(("how", "code", "reason"), [
    ("sed-after-test", 1, "c2 ran before the last edit (c3)"),  # `sed -i` broke the fix after the passing run
    ("formatter", 1, "c2 ran before the last edit (c3)"),  # a script rewrote calc.py after it
    ("test-after-sed", 0, ""),  # the fix made with `sed -i`, then the passing run
    ("edit-and-test", 0, ""),  # `sed -i … && python3 -m unittest -q`: the run saw the edited file
    ("ignored-cache", 0, ""),  # a command that wrote only ignored caches after the passing run is no edit
])
def test_a_shell_command_that_changes_files_is_an_edit(bubblewrap, fake_model, sample_repo, how, code, reason):
    (sample_repo / "AGENTS.md").unlink()  # nothing else to prove: the Testing line alone decides
    (sample_repo / ".gitignore").write_text("__pycache__/\n")
    commit(sample_repo, "no agents file, caches ignored")
    proc = offload_cli("run", f"Fix add, then: {how}", "--repo", str(sample_repo),
                       env=env(fake_model, "edit-by-command"))
    assert proc.returncode == code, proc.stderr
    record, events = record_and_events(sample_repo)
    (check,) = record["checks"]
    results = [e for e in events if e["type"] == "tool.result"]
    if code:
        assert "finished, but its checks are not proven" in proc.stderr and reason in proc.stderr, proc.stderr
        assert (check["status"], check["claimed"]) == ("unverified", "passed") and reason in check["reason"]
        assert results[2]["files"] == ["calc.py"] and "Files changed by this command: calc.py" in results[2]["output"]
    else:
        assert check["status"] == "passed", check
        assert [bool(e.get("files")) for e in results] == {
            "test-after-sed": [True, False], "edit-and-test": [True], "ignored-cache": [True, False, False]}[how]


def test_a_shell_edit_of_an_earlier_run_still_counts_in_a_follow_up(bubblewrap, fake_model, sample_repo):
    """The log keeps the files a command changed: a follow-up, rebuilding its chunks from the log,
    still finds the run it cites made before the last edit."""
    (sample_repo / "AGENTS.md").unlink()
    commit(sample_repo, "no agents file")
    proc = offload_cli("run", "Fix add, then: sed-after-test", "--repo", str(sample_repo),
                       env=env(fake_model, "edit-by-command"))
    assert proc.returncode == 1, proc.stderr
    record, _ = record_and_events(sample_repo)
    followed = offload_cli("followup", record["id"], "Report again", cwd=sample_repo,
                           env=env(fake_model, "edit-by-command"))
    assert followed.returncode == 1, followed.stderr
    assert "c2 ran before the last edit (c3)" in followed.stderr, followed.stderr
    record, _ = record_and_events(sample_repo)
    assert [c["status"] for c in record["checks"]] == ["unverified"]
