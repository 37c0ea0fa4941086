"""Bad tool calls from the model: each gets an error it can act on, never a crash, on both APIs."""

from __future__ import annotations

import json
import threading

import pytest

from offload.server.agent.loop import preview
from offload.server.agent.tools import Tools, schema_problem, tool_specs
from tests.agent_support import MODES, run, sandbox, shared_sandbox  # noqa: F401 - fixtures
from tests.fakemodel import apply_patch, call, say, shell

pytestmark = pytest.mark.docker

FIX = "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a + b\n*** End Patch"


def clumsy(req):
    """Every kind of broken call a model sends, each checked for an error that says how to fix it."""
    out = yield call("shell", '{"command": ["ls"')
    assert "the arguments of shell are not valid JSON" in out and '{"command": []} (optional: workdir' in out, out
    out = yield call("grep_files", {"pattern": "add"})
    assert "error: unknown tool 'grep_files'; the tools are: shell, apply_patch, update_plan" in out, out
    out = yield call("shell", {"command": "ls", "timeout_ms": "100"})
    assert 'timeout_ms must be an integer, not "100"' in out, out
    out = yield call("shell", {"command": ["ls", 2]})
    assert "command[1] must be a string, not 2" in out, out
    out = yield call("shell", {"cmd": ["ls"]})
    assert "missing 'command' in the arguments" in out, out
    out = yield call("shell", {"command": ["ls"], "cwd": "/"})
    assert "unknown 'cwd' in the arguments; allowed: command, workdir, timeout_ms" in out, out
    out = yield call("shell", '["ls"]')
    assert "the arguments must be an object, not [" in out, out
    out = yield call("shell", {"command": []})
    assert "a non-empty list" in out, out
    out = yield call("update_plan", {"plan": [{"step": "look", "status": "done"}]})
    assert 'plan[0].status must be one of "pending", "in_progress", "completed", not "done"' in out, out
    out = yield call("update_plan", {"plan": [{"step": "a", "status": "in_progress"},
                                              {"step": "b", "status": "in_progress"}]})
    assert "at most one step of the plan may be in_progress" in out, out
    out = yield call("apply_patch", {"input": 42})
    assert "input must be a string, not 42" in out, out
    out = yield apply_patch("*** Begin Patch\n*** Update File: nope.py\n@@\n-x\n+y\n*** End Patch")
    assert "error: the patch was not applied, nothing changed" in out, out
    out = yield shell(["python3", "-m", "unittest", "-q"])  # the tools still work after all that
    assert "Exit code: 1" in out, out
    yield say("## Summary\nNothing changed.")


@pytest.mark.parametrize("api,stream", MODES)
def test_every_bad_call_gets_an_error_the_model_can_act_on(sandbox, api, stream):
    r = run(sandbox, clumsy, api, stream)
    assert r.result.outcome == "completed", r.result.reason
    results = r.of("tool.result")
    assert len(results) == 13 and all("error" in e for e in results[:12]) and "error" not in results[12]
    assert [e["error"] for e in results[:3]] == ["bad json", "unknown tool", "bad args"]


@pytest.mark.parametrize("api,stream", MODES)
def test_a_shell_apply_patch_is_the_patch_tool(sandbox, api, stream):
    def via_shell(req):
        out = yield shell(["apply_patch", FIX])
        assert "Success" in out, out
        swap = "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a + b\n+    return b + a\n*** End Patch"
        out = yield shell(["bash", "-lc", f"apply_patch <<'EOF'\n{swap}\nEOF"])
        assert "Success" in out, out
        yield say("done")

    r = run(sandbox, via_shell, api, stream)
    assert r.result.outcome == "completed"
    assert "return b + a" in sandbox.read_file("calc.py").decode()


@pytest.mark.parametrize("api,stream", MODES)
def test_a_read_only_task_cannot_edit(sandbox, api, stream):
    def editor(req):
        assert "apply_patch" not in req.tool_names
        out = yield apply_patch(FIX)
        assert "error: this is a read-only task; files cannot be edited" in out, out
        out = yield shell(["apply_patch", FIX])
        assert "error: this is a read-only task" in out, out
        yield say("`add` is at calc.py:L4-L5.")

    r = run(sandbox, editor, api, stream, read_only=True)
    assert r.result.outcome == "completed" and r.result.commit is None
    assert "return a - b" in sandbox.read_file("calc.py").decode()
    assert [c["ok"] for c in r.result.citations] == [True]


def test_freeform_input_for_a_json_tool_is_refused(sandbox):
    tools = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event())
    assert tools.call("x", "shell", "ls -la", custom=True).output.startswith(
        "error: shell takes JSON arguments, not freeform text")
    assert "Success" in tools.call("y", "apply_patch", FIX, custom=True).output


def test_a_patch_that_fails_while_writing_puts_everything_back(sandbox):
    tools = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event())
    before = sandbox.read_file("calc.py")
    sandbox.run(["chmod", "a-w", "."])  # new files cannot be created; existing ones can still be written
    try:
        out = tools.call("z", "apply_patch", FIX.replace("*** End Patch", "*** Add File: new.txt\n+x\n*** End Patch"))
    finally:
        sandbox.run(["chmod", "u+w", "."])
    assert out.output.startswith("error: the patch was not applied, nothing changed"), out.output
    assert sandbox.read_file("calc.py") == before and sandbox.read_file("new.txt") is None


def test_schema_problems_name_the_argument():
    shell_schema = tool_specs()[0]["parameters"]
    assert schema_problem({"command": ["ls"], "timeout_ms": True}, shell_schema) == (
        "timeout_ms must be an integer, not true")
    assert schema_problem({"command": ["ls"], "workdir": "src", "timeout_ms": 5}, shell_schema) is None
    assert schema_problem("ls", shell_schema) == 'the arguments must be an object, not "ls"'


def test_the_freeform_patch_tool_carries_codex_grammar():
    (patch_tool,) = [t for t in tool_specs(freeform=True) if t["name"] == "apply_patch"]
    assert patch_tool["type"] == "custom" and patch_tool["format"]["type"] == "grammar"
    assert 'update_hunk: "*** Update File: " filename LF change_move? change?' in patch_tool["format"]["definition"]
    assert [t["name"] for t in tool_specs(read_only=True, freeform=True)] == ["shell", "update_plan"]


def test_progress_shows_the_file_a_freeform_patch_edits():
    assert preview(FIX) == "*** Update File: calc.py"
    assert preview('{"command": ["python3", "-m", "unittest"]}') == "python3 -m unittest"


def test_a_patch_after_cd_or_with_a_workdir_applies_in_that_directory(sandbox):
    tools = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event())
    sandbox.run(["mkdir", "-p", "pkg/sub"])
    add = "*** Begin Patch\n*** Add File: {name}\n+x\n*** End Patch"
    out = tools.call("a", "shell", json.dumps({"command": ["bash", "-lc", "cd pkg && apply_patch <<'EOF'\n"
                                                           + add.format(name="a.txt") + "\nEOF"]}))
    assert "Success" in out.output and out.event["files"] == ["pkg/a.txt"], out.output
    out = tools.call("b", "shell", json.dumps({"command": ["bash", "-lc", "cd sub && applypatch <<'PATCH'\n"
                                                           + add.format(name="b.txt") + "\nPATCH"], "workdir": "pkg"}))
    assert out.event["files"] == ["pkg/sub/b.txt"], out.output
    out = tools.call("c", "shell", json.dumps({"command": ["apply_patch", add.format(name="c.txt")], "workdir": "pkg"}))
    assert out.event["files"] == ["pkg/c.txt"], out.output
    assert [sandbox.read_file(p) for p in ("pkg/a.txt", "pkg/sub/b.txt", "pkg/c.txt")] == [b"x\n"] * 3
    out = tools.call("d", "shell", json.dumps({"command": ["bash", "-lc", "cd ../.. && apply_patch <<'EOF'\n"
                                                           + add.format(name="x.txt") + "\nEOF"]}))
    assert out.output.startswith("error: the patch was not applied, nothing changed") and "outside" in out.output


def test_a_patch_cut_off_before_its_end_is_refused(sandbox):
    tools = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event())
    out = tools.call("a", "apply_patch", json.dumps({"input": FIX.replace("\n*** End Patch", "")}))
    assert "may have been cut off" in out.output and "return a - b" in sandbox.read_file("calc.py").decode()


def test_declare_checks_is_offered_only_under_an_agents_md_and_checks_its_arguments(sandbox, tmp_path):
    from offload.server.agent.checks import CheckBook

    assert "declare_checks" not in [t["name"] for t in tool_specs()]
    bare = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event())
    assert bare.call("a", "declare_checks", "{}").event == {"error": "unknown tool"}
    (tmp_path / "AGENTS.md").write_text("Run `make test` before you finish.\n")
    tools = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event(), CheckBook(tmp_path))
    out = tools.call("b", "declare_checks", json.dumps({"checks": {"command": "make test"}}))
    assert "checks must be an array" in out.output, out.output
    out = tools.call("c", "declare_checks", json.dumps({"checks": [{"candidate": 1, "command": "make test"}]}))
    assert out.event["declared"] == [{"command": "make test", "directory": ".", "file": "AGENTS.md", "line": 1}]


def test_a_shell_command_that_changes_files_is_recorded_as_an_edit(sandbox):
    """However a command changes files — sed, a heredoc script, cd, a workdir, git checkout, mv, rm —
    its output carries the files it changed (so the evidence counts it as an edit); one that changes
    nothing, or only what .gitignore ignores, carries none. The real index and HEAD stay as they were."""
    tools = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event())

    def run(script: str, workdir: str | None = None):
        out = tools.call("x", "shell", json.dumps({"command": script, **({"workdir": workdir} if workdir else {})}))
        assert out.event["exit_code"] == 0, out.output
        return out.event.get("files"), out.output

    files, output = run("sed -i 's/a - b/a + b/' calc.py")
    assert files == ["calc.py"] and output.endswith("\nFiles changed by this command: calc.py\n"), output
    files, output = run("python3 -m unittest -q")
    assert files is None and "Files changed" not in output, output
    assert run("printf '__pycache__/\\n' > .gitignore")[0] == [".gitignore"]
    assert run("env -u PYTHONDONTWRITEBYTECODE python3 -m unittest -q")[0] is None  # only an ignored cache
    assert sandbox.run(["ls", "__pycache__"]).exit_code == 0
    assert run("python3 - <<'EOF'\nopen('calc.py', 'a').write('# formatted\\n')\nEOF")[0] == ["calc.py"]
    assert run("mkdir -p pkg && cd pkg && echo x > new.txt")[0] == ["pkg/new.txt"]
    assert run("echo y > other.txt", workdir="pkg")[0] == ["pkg/other.txt"]
    assert run("git checkout -- calc.py")[0] == ["calc.py"]
    assert run("mv pkg/new.txt moved.txt")[0] == ["moved.txt", "pkg/new.txt"]
    assert run("rm moved.txt && touch same.txt && rm same.txt")[0] == ["moved.txt"]
    assert run("git add -A && git -c user.name=a -c user.email=a@b commit -qm wip && git reset -q HEAD~1"
               )[0] is None  # git's own bookkeeping changes no file
    # a patch is its own edit: the next command is not blamed for it
    assert tools.call("p", "apply_patch", FIX).event["files"] == ["calc.py"]
    assert run("true")[0] is None
    assert sandbox.git("rev-parse", "HEAD").output.strip() == sandbox.snapshot.base
    status = sandbox.git("status", "--porcelain").output
    assert " M calc.py" in status and "?? .gitignore" in status, status


def test_a_command_that_leaves_the_workspace_uncomparable_counts_as_an_edit(sandbox):
    tools = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event())
    try:
        out = tools.call("x", "shell", json.dumps({"command": "mv .git .git-away"}))
        assert out.event["files"] == ["."] and "could not tell which files this command changed" in out.output
    finally:
        sandbox.run(["bash", "-c", "rm -rf .git && mv .git-away .git"])
    assert tools.call("y", "shell", json.dumps({"command": ["true"]})).event.get("files") is None
    # a command that spoils the indexes (their shared part gone) changes no file: the look and the
    # commit rebuild theirs from HEAD, and the edit made after it is still seen and committed
    assert tools.call("z", "shell", json.dumps({"command": "rm .git/sharedindex.*"})).event.get("files") is None
    assert sandbox.run(["git", "status"]).exit_code != 0  # git itself can't read the real index now
    assert tools.call("w", "shell", json.dumps({"command": "echo more >> calc.py"})).event["files"] == ["calc.py"]
    assert sandbox.commit("more") is not None
    assert sandbox.git("show", "--name-only", "--format=", "HEAD").output.split() == ["calc.py"]


def test_a_read_only_task_records_no_edit(sandbox):
    tools = Tools(sandbox, True, lambda call_id, chunk: None, threading.Event())
    out = tools.call("x", "shell", json.dumps({"command": ["ls"]}))
    assert out.event["exit_code"] == 0 and "files" not in out.event


def test_a_command_run_while_git_cannot_read_the_workspace_counts_as_an_edit(sandbox):
    tools = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event())
    sandbox.run(["mv", ".git", ".git-away"])  # no look before the next command is possible
    try:
        out = tools.call("x", "shell", json.dumps({"command": "mv .git-away .git && echo changed >> calc.py"}))
    finally:
        sandbox.run(["bash", "-c", "test -d .git || mv .git-away .git"])
    assert out.event["files"] == ["."], out.output
