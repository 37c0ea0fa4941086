"""One Code task end to end from the command line: real git, real Docker sandbox, the model stand-in."""

from __future__ import annotations

import json

import pytest

from tests.conftest import git, offload_cli

pytestmark = pytest.mark.docker


def model_env(fake_model, scenario: str = "fix-failing-test") -> dict:
    return {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "test-key", "OFFLOAD_MODEL_NAME": scenario}


def test_run_fixes_the_failing_test_without_touching_the_checkout(docker_engine, fake_model, sample_repo):
    before = (sample_repo / "calc.py").read_text()
    status_before = git(sample_repo, "status", "--porcelain")

    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), env=model_env(fake_model))

    assert proc.returncode == 0, proc.stderr
    assert "-    return a - b" in proc.stdout and "+    return a + b" in proc.stdout
    assert "## Summary" in proc.stdout
    assert "finished" in proc.stderr and "shell: python3 -m unittest" in proc.stderr
    # the model saw the real failure, then the real pass, from inside the sandbox
    outputs = [m for r in fake_model.requests for m in json.dumps(r.body).split("Exit code: ")[1:]]
    assert any(o.startswith("1") and "FAILED" in o for o in outputs)
    assert any(o.startswith("0") and "OK" in o for o in outputs)
    # the user's checkout is untouched until the change is applied
    assert (sample_repo / "calc.py").read_text() == before
    assert git(sample_repo, "status", "--porcelain") == status_before

    task_id = json.loads(offload_cli("tasks", "--json", cwd=sample_repo).stdout.splitlines()[0])["id"]
    applied = offload_cli("apply", task_id, cwd=sample_repo)
    assert applied.returncode == 0, applied.stderr
    assert "return a + b" in (sample_repo / "calc.py").read_text()
    assert "return a * b" in (sample_repo / "calc.py").read_text()


def test_run_includes_uncommitted_work_and_apply_merges_onto_newer_edits(docker_engine, fake_model, sample_repo):
    # uncommitted and untracked work goes into the sandbox
    (sample_repo / "calc.py").write_text((sample_repo / "calc.py").read_text() + "\n\ndef negate(a):\n    return -a\n")
    (sample_repo / "notes.txt").write_text("untracked\n")
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), "--json",
                       env=model_env(fake_model))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert events[-1]["type"] == "result" and events[-1]["record"]["state"] == "finished"
    assert {"queued", "preparing", "running", "finished"} <= {e.get("state") for e in events if e["type"] == "state"}
    task_id = events[-1]["task"]
    # the user edits the same file meanwhile, elsewhere in it
    text = (sample_repo / "calc.py").read_text().replace("def multiply(a, b):", "def multiply(a, b):  # user edit")
    (sample_repo / "calc.py").write_text(text)
    assert offload_cli("apply", task_id, cwd=sample_repo).returncode == 0
    merged = (sample_repo / "calc.py").read_text()
    assert "return a + b" in merged and "# user edit" in merged and "def negate" in merged
    assert (sample_repo / "notes.txt").read_text() == "untracked\n"


def test_run_with_apply_flag_applies(docker_engine, fake_model, sample_repo):
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), "--apply",
                       env=model_env(fake_model))
    assert proc.returncode == 0, proc.stderr
    assert "return a + b" in (sample_repo / "calc.py").read_text()


def test_without_a_model_it_stops_at_once_saying_what_to_set(sample_repo):
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo))
    assert proc.returncode == 2
    assert "OPENAI_API_KEY" in proc.stderr and "OPENAI_BASE_URL" in proc.stderr
    assert offload_cli("tasks", "--json", cwd=sample_repo).stdout == ""


def test_help_on_every_verb():
    for verb in ("serve", "run", "ask", "tasks", "show", "diff", "apply", "cancel", "doctor", "image"):
        proc = offload_cli(verb, "--help")
        assert proc.returncode == 0 and "usage: offload" in proc.stdout, verb


def test_tasks_changing_the_same_file_merge_or_conflict(docker_engine, fake_model, sample_repo):
    ids = {}
    for scenario in ("fix-failing-test", "fix-and-document", "rewrite-add"):
        proc = offload_cli("run", scenario, "--repo", str(sample_repo), "--json", env=model_env(fake_model, scenario))
        assert proc.returncode == 0, proc.stderr
        ids[scenario] = json.loads(proc.stdout.splitlines()[-1])["task"]
    assert offload_cli("apply", ids["fix-failing-test"], cwd=sample_repo).returncode == 0
    # the same fix plus a comment elsewhere: the shared hunk is already there, the other merges in
    assert offload_cli("apply", ids["fix-and-document"], cwd=sample_repo).returncode == 0
    text = (sample_repo / "calc.py").read_text()
    assert text.count("return a + b") == 1 and "# the product of a and b" in text
    # a different change to the same line: a conflict, named, and nothing written
    clash = offload_cli("apply", ids["rewrite-add"], cwd=sample_repo)
    assert clash.returncode == 2 and "Conflicts: calc.py" in clash.stderr
    assert (sample_repo / "calc.py").read_text() == text


def test_ask_answers_from_a_read_only_sandbox(docker_engine, fake_model, sample_repo):
    proc = offload_cli("ask", "Where is add defined?", "--repo", str(sample_repo),
                       env=model_env(fake_model, "ask-tries-to-write"))
    assert proc.returncode == 0, proc.stderr
    assert "calc.py:L4-L5" in proc.stdout and "Writing was refused" in proc.stdout
    assert "diff --git" not in proc.stdout
    assert git(sample_repo, "status", "--porcelain") == ""


def test_checks_agents_md_lists_run_after_the_last_edit(docker_engine, fake_model, sample_repo):
    # reminded once, the model runs them itself
    proc = offload_cli("run", "fix add", "--repo", str(sample_repo), "--json",
                       env=model_env(fake_model, "checks-after-reminder"))
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert any(e["type"] == "note" and "unrun checks" in e["text"] for e in events)
    assert not any(e.get("by") == "harness" for e in events)
    # a model that will not run them: the harness runs them and reports them in the message
    proc = offload_cli("run", "fix add", "--repo", str(sample_repo), env=model_env(fake_model, "skip-checks"))
    assert proc.returncode == 0, proc.stderr
    assert "## Testing (run by Offload after the last edit" in proc.stdout
    assert "`python3 -m unittest -q` — passed [c" in proc.stdout
    # a follow-up's conversation carries the harness's run as a message the model can read
    task_id = json.loads(offload_cli("tasks", "--json", cwd=sample_repo).stdout.splitlines()[-1])["id"]
    proc = offload_cli("followup", task_id, "anything left?", cwd=sample_repo, env=model_env(fake_model, "skip-checks"))
    assert "nothing more to do" in proc.stdout, proc.stderr


def test_a_global_agents_md_is_read_first(docker_engine, fake_model, sample_repo, isolated_dirs):
    from pathlib import Path

    from offload.server.agent.checks import CheckBook
    from offload.server.agent.prompts import agents_instructions

    global_file = Path(isolated_dirs["XDG_CONFIG_HOME"]) / "offload" / "AGENTS.md"
    global_file.parent.mkdir(parents=True)
    global_file.write_text("Prefer small commits.\n\n## Checks\n- `make lint`\n")
    text, notes = agents_instructions(sample_repo)
    assert text.index("Prefer small commits") < text.index("A tiny calculator") and notes == []
    assert [c.command for c in CheckBook(sample_repo).required] == ["make lint", "python3 -m unittest -q"]
