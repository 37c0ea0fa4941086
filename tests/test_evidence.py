"""A pass must point at its run: the cited chunk ran an equivalent command, exited 0, after the last edit."""

from __future__ import annotations

import pytest

from offload.server.agent.checks import Check
from offload.server.agent.commands import Step, steps
from offload.server.agent.evidence import Chunks, check_citations, checks_passed, checks_problem, task_checks

UNITTEST = ["python3", "-m", "unittest", "-q"]


def task() -> Chunks:
    """c1 the failing tests, c2 a patch, c3 the passing tests, c4 `npm test` in web, c5 a plan."""
    chunks = Chunks(root="/workspace")
    chunks.add(call="a", name="shell", exit_code=1, command=UNITTEST, directory=".")
    chunks.add(call="b", name="apply_patch", files=["calc.py"])
    chunks.add(call="c", name="shell", exit_code=0, command=UNITTEST, directory=".")
    chunks.add(call="d", name="shell", exit_code=0, command=["bash", "-lc", "cd web && npm run test 2>&1"],
               directory=".")
    chunks.add(call="e", name="update_plan")
    return chunks


def verdicts(testing: str, chunks: Chunks) -> dict[str, tuple[str, str]]:
    checks = task_checks(check_citations(f"## Summary\nok\n## Testing\n{testing}", lambda p: None, chunks), [], [],
                         chunks)
    return {c["check"]: (c["status"], c.get("reason", "")) for c in checks}


@pytest.mark.parametrize(("line", "status", "reason"), [
    ("- `python3 -m unittest -q` passed [c3]", "passed", ""),
    ("- python -m unittest -v: passed [c3]", "passed", ""),  # the same tests in another spelling
    ("- `python3 -m unittest -q` passed [c2]", "unverified",
     "claims passed, but c2 is the output of apply_patch, not of a command run"),
    ("- `python3 -m unittest -q` passed [c5]", "unverified", "claims passed, but c5 is the output of update_plan"),
    ("- `python3 -m unittest -q` passed [c1]", "unverified", "claims passed, but c1 exited 1"),
    ("- `npm test` passed [c3]", "unverified", "claims passed, but c3 ran `python -m unittest`, not `npm test`"),
    ("- `npm test` passed [c4]", "passed", ""),  # run from web/ with `cd`: a line naming no directory counts it
    ("- `cd web && npm test` passed [c4]", "passed", ""),
    ("- `cd api && npm test` passed [c4]", "unverified", "not `npm test`"),
    ("- `python3 -m unittest -q` passed", "unverified", "cites no chunk"),
    ("- `python3 -m unittest -q` passed [c9]", "unverified", "c9 is no output of this task"),
    ("- `python3 -m unittest -q` passed [c1, c3]", "passed", ""),  # one cited run proves it
    ("- `python3 -m unittest -q` failed [c1]", "failed", ""),
])
def test_a_pass_counts_only_when_its_chunk_proves_it(line, status, reason):
    ((got_status, got_reason),) = verdicts(line, task()).values()
    assert got_status == status and reason in got_reason, got_reason


def test_a_run_before_the_last_edit_proves_nothing():
    chunks = task()
    chunks.add(call="f", name="apply_patch", files=["calc.py"])  # c6: an edit after the passing run
    ((status, reason),) = verdicts("- `python3 -m unittest -q` passed [c3]", chunks).values()
    assert (status, reason) == ("unverified", "claims passed, but c3 ran before the last edit (c6)")


def test_declared_checks_are_proven_from_the_runs_in_their_directory():
    chunks = task()
    declared = [Check("npm test", "web", "web/AGENTS.md", 3, "declared", steps("npm test", "web")),
                Check("npm run lint", "web", "web/AGENTS.md", 4, "declared", steps("npm run lint", "web")),
                Check("python3 -m unittest -q", "sub", "AGENTS.md", 2, "required",
                      steps("python3 -m unittest -q", "sub"))]
    checks = task_checks([], declared, [{"check": "`make docs`", "file": "AGENTS.md", "line": 9,
                                         "reason": "no docs changed"}], chunks)
    assert [(c["check"], c["status"], c["chunks"]) for c in checks] == [
        ("`npm test` (in web/)", "passed", ["c4"]),
        ("`npm run lint` (in web/)", "not run", []),
        ("`python3 -m unittest -q` (in sub/)", "not run", []),  # the run at the root is not the one in sub/
        ("`make docs`", "dismissed", []),
    ]
    assert not checks_passed(checks)
    assert checks_problem(checks).startswith("`npm run lint` (in web/) — not run: no run of it since the last edit")
    assert checks_passed(checks[:1] + checks[3:])


def test_no_check_at_all_is_no_pass():
    assert not checks_passed([]) and "no check was reported" in checks_problem([])


def test_a_follow_up_keeps_what_earlier_runs_proved():
    earlier = [{"chunk": "c1", "call_id": "a", "name": "apply_patch", "files": ["calc.py"]},
               {"chunk": "c2", "call_id": "b", "name": "shell", "exit_code": 0, "command": UNITTEST, "directory": "."}]
    chunks = Chunks(earlier)
    assert chunks.add(call="c", name="shell", exit_code=0, command=["true"]) == "c3"
    assert chunks.last_edit == 1 and chunks.latest_run(steps(UNITTEST)) == "c2"


@pytest.mark.parametrize(("command", "expected"), [
    ("npm test 2>&1", [Step(".", "npm test")]),
    ("cd pkg && pytest -q > out.txt", [Step("pkg", "pytest")]),
    (["python3", "-m", "pytest", "-q"], [Step(".", "pytest")]),
    (["bash", "-lc", "cd /workspace/web && CI=1 npm run test"], [Step("web", "npm test")]),
    ("make lint && make test", [Step(".", "make lint"), Step(".", "make test")]),
    ("make lint; make test", [Step(".", "make test")]),  # only the last of a `;` list decides the exit status
    ("pytest | tail -5", [Step(".", "pytest '|' tail -5")]),  # a pipe hides a failure: not `pytest`
    ("pytest || true", [Step(".", "pytest '||' true")]),
    ("npm run lint", [Step(".", "npm run lint")]),
    ('echo "unclosed', []),
])
def test_the_steps_an_exit_status_vouches_for(command, expected):
    assert steps(command) == expected


def test_best_of_n_counts_passes_as_the_exit_code_does():
    from offload.server.agent.loop import AgentResult
    from offload.server.tasks.attempts import check_counts

    checks = [{"status": s} for s in ("passed", "unverified", "not run", "failed", "dismissed", "blocked")]
    assert check_counts(AgentResult("completed", "", checks=checks)) == (1, 3)
    assert not checks_passed(checks) and checks_passed(checks[:1] + checks[4:5])


def test_outputs_before_a_rebuilt_workspace_prove_nothing():
    earlier = [{"chunk": "c1", "call_id": "a", "name": "apply_patch", "files": ["calc.py"]},
               {"chunk": "c2", "call_id": "b", "name": "shell", "exit_code": 0, "command": UNITTEST, "directory": "."},
               {"role": "user", "content": "follow up", "rebuilt": True}]
    ((status, reason),) = verdicts("- `python3 -m unittest -q` passed [c2]", Chunks(earlier)).values()
    assert status == "unverified" and "c2 ran before the workspace was rebuilt for a follow-up" in reason


# A shell command that changes files is an edit too: the harness records the files it changed.
SED_BREAK = ["bash", "-lc", "sed -i 's/a + b/a - b/' calc.py"]


def fixed_then(*commands: tuple[list[str] | str, list[str], int]) -> Chunks:
    """c1 the fix, c2 the passing tests, then each (command, files it changed, exit code) from c3 on."""
    chunks = Chunks(root="/workspace")
    chunks.add(call="a", name="apply_patch", files=["calc.py"])
    chunks.add(call="b", name="shell", exit_code=0, command=UNITTEST, directory=".")
    for n, (command, files, exit_code) in enumerate(commands):
        chunks.add(call=f"x{n}", name="shell", exit_code=exit_code, command=command, directory=".", files=files)
    return chunks


def test_a_run_before_a_shell_command_that_changed_files_proves_nothing():
    chunks = fixed_then((SED_BREAK, ["calc.py"], 0))
    ((status, reason),) = verdicts("- `python3 -m unittest` passed [c2]", chunks).values()
    assert (status, reason) == ("unverified", "claims passed, but c2 ran before the last edit (c3)")
    assert chunks.latest_run(steps(UNITTEST)) is None


def test_a_shell_command_that_changed_nothing_is_no_edit():
    chunks = fixed_then((["bash", "-lc", "sed -n 1,5p calc.py"], [], 0), (["git", "status"], [], 0))
    ((status, reason),) = verdicts("- `python3 -m unittest` passed [c2]", chunks).values()
    assert (status, reason) == ("passed", "")


@pytest.mark.parametrize(("command", "status", "reason"), [
    # the edit comes first and the check runs on the edited files: the run is at the last edit, and proves it
    ("sed -i 's/a - b/a + b/' calc.py && python3 -m unittest -q", "passed", ""),
    ("black . ; python3 -m unittest -q", "passed", ""),
    # the check ran first, then a later step of the same command changed files: it may not have seen them
    ("python3 -m unittest -q && sed -i 's/a + b/a - b/' calc.py", "unverified",
     "claims passed, but c3 changed files (calc.py) and ran `sed -i 's/a + b/a - b/' calc.py` after the check, "
     "so the check may not have seen them"),
])
def test_a_command_that_edits_and_tests_proves_the_check_it_ran_last(command, status, reason):
    chunks = fixed_then((["bash", "-lc", command], ["calc.py"], 0))
    ((got_status, got_reason),) = verdicts("- `python3 -m unittest` passed [c3]", chunks).values()
    assert (got_status, got_reason) == (status, reason)
    assert (chunks.latest_run(steps(UNITTEST)) == "c3") == (status == "passed")


def test_a_test_run_that_writes_its_own_output_still_proves_itself():
    """A suite that writes a report (tracked or not ignored) edits the workspace each time it runs:
    each run proves itself, and the latest run is the one that counts."""
    report = "python3 -m unittest -q > report.txt"
    chunks = fixed_then((["bash", "-lc", report], ["report.txt"], 0), (["bash", "-lc", report], ["report.txt"], 0))
    got = verdicts("- `python3 -m unittest` passed [c4]\n- `python3 -m unittest -v` passed [c3]", chunks)
    assert list(got.values()) == [("passed", ""), ("unverified", "claims passed, but c3 ran before the last edit (c4)")]
    declared = Check("python3 -m unittest -q", ".", "AGENTS.md", 1, "declared", steps("python3 -m unittest -q"))
    assert [(c["status"], c["chunks"]) for c in task_checks([], [declared], [], chunks)] == [("passed", ["c4"])]


def test_a_follow_up_counts_the_shell_edits_of_earlier_runs():
    """The log keeps the files a command changed, so the chunks a follow-up rebuilds from it know the edit."""
    earlier = [{"chunk": "c1", "call_id": "a", "name": "apply_patch", "files": ["calc.py"]},
               {"chunk": "c2", "call_id": "b", "name": "shell", "exit_code": 0, "command": UNITTEST, "directory": "."},
               {"chunk": "c3", "call_id": "c", "name": "shell", "exit_code": 0, "command": SED_BREAK,
                "directory": ".", "files": ["calc.py"]}]
    chunks = Chunks(earlier)
    assert chunks.last_edit == 3 and chunks.latest_run(steps(UNITTEST)) is None
    ((status, reason),) = verdicts("- `python3 -m unittest` passed [c2]", chunks).values()
    assert (status, reason) == ("unverified", "claims passed, but c2 ran before the last edit (c3)")


def test_a_rebuilt_workspace_is_after_a_command_that_edited_and_tested():
    earlier = [{"chunk": "c1", "call_id": "a", "name": "shell", "exit_code": 0, "directory": ".",
                "command": ["bash", "-lc", "sed -i 's/a - b/a + b/' calc.py && python3 -m unittest -q"],
                "files": ["calc.py"]},
               {"role": "user", "content": "follow up", "rebuilt": True}]
    ((status, reason),) = verdicts("- `python3 -m unittest` passed [c1]", Chunks(earlier)).values()
    assert status == "unverified" and "c1 ran before the workspace was rebuilt" in reason
