"""`offload show --log` and `tasks` through the real command line, on tasks the model stand-in
plays in real bubblewrap sandboxes; and what reaches a terminal when a task's files, outputs and
messages carry escape sequences."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import offload_cli, part_missing
from tests.fakemodel import FakeModel, apply_patch, say, scenario, shell, update_plan
from tests.scenarios import FIX_ADD, UNITTEST, chunk_of, output_text, report

PROMPT = "Fix add\nand keep the tests green\n\nContext: calc.py lines 4-5"
HOSTILE = "\x1b[2K\x1b]0;owned\x07"  # erase the line; set the window title
RELEASE = threading.Event()  # the `waits` scenario thinks until a test sets it


@scenario("tour")
def tour(req):
    """A plan, a failing run, a long output, output and a patch carrying escape sequences, the fix,
    a passing run cited as proof, and a final message carrying escape sequences too."""
    yield update_plan([("Run the tests", "in_progress"), ("Fix add", "pending")], "first see what fails")
    out = yield shell(UNITTEST)
    assert "FAILED" in out, out
    yield shell(["seq", "1", "100"])
    yield shell(["printf", "%b", r"before\033[2Kafter\033]0;owned\007\n"])
    out = yield apply_patch(FIX_ADD.replace("*** End Patch", f"*** Add File: banner.txt\n+hi{HOSTILE}there\n"
                                                             "*** End Patch"))
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    yield update_plan([("Run the tests", "completed"), ("Fix add", "completed")])
    status = "passed" if out.split("\n")[1] == "Exit code: 0" else "failed"
    yield say(report([f"Fixed `add` (calc.py:L4-L5).{HOSTILE}"], [(" ".join(UNITTEST), status)])
              + f" [{chunk_of(out)}]")


@scenario("waits")
def waits(req):
    """Runs the tests, then thinks until the test releases it, then reports."""
    out = yield shell(UNITTEST)
    RELEASE.wait(120)
    yield say(report(["Looked (calc.py:L4-L5)."], [(" ".join(UNITTEST), "failed" if "FAILED" in out else "passed")]))


@scenario("streams")
def streams(req):
    """A command that says it started, then runs for a minute: something to watch, then cancel."""
    out = yield shell(["sh", "-c", "echo started; sleep 60; echo done"])
    yield say(report(["Waited."], [("sleep 60", "passed" if out.startswith("Exit code: 0") else "failed")]))



@pytest.fixture
def model():
    """The stand-in with this file's scenarios; any other name (a priced one, say) plays the tour."""
    RELEASE.clear()
    with FakeModel(default=tour, scenarios=[tour, waits, streams]) as fake:
        yield fake
    RELEASE.set()
    assert not fake.errors, fake.errors


def env(model, name: str = "gpt-5-mini") -> dict:
    return {"OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "test-key", "OFFLOAD_MODEL_NAME": name,
            "OFFLOAD_SANDBOX_BACKEND": "bubblewrap"}


def run_task(model, repo, name: str = "gpt-5-mini") -> str:
    proc = offload_cli("run", PROMPT, "--repo", str(repo), "--json", env=env(model, name))
    assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])["task"]


def on_terminal(*args: str, cwd=None, extra: dict | None = None) -> str:
    """What the real CLI writes to a terminal (stdout and stderr both on one pseudo-terminal)."""
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "offload.server.cli", *args], stdin=subprocess.DEVNULL,
                            stdout=secondary, stderr=secondary, cwd=cwd,
                            env={**os.environ, "TERM": "xterm", "COLUMNS": "100", **(extra or {})})
    os.close(secondary)
    data = b""
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # the other side closed
            break
        if not chunk:
            break
        data += chunk
    os.close(primary)
    assert proc.wait(timeout=60) == 0, data
    return data.decode()


def test_show_log_tells_every_step(bubblewrap, model, sample_repo):
    task = run_task(model, sample_repo)
    log = offload_cli("show", task, "--log", cwd=sample_repo)
    assert log.returncode == 0, log.stderr
    text = log.stdout
    # the plan, as the model set it and as it ended
    assert "plan: first see what fails\n" in text and "[>] Run the tests" in text and "[ ] Fix add" in text
    assert "[x] Run the tests" in text and "[x] Fix add" in text
    # each command with its exit code, time and output
    failing = text.index("$ python3 -m unittest -q")
    assert re.search(r"exit 1 · \d+\.\d\d s · c2\n", text[failing:])
    assert "FAILED (failures=1)" in text[failing:]
    # a long output: head and tail, the middle counted
    assert "    1\n" in text and "    10\n" in text and "    91\n" in text and "    100\n" in text
    assert "    50\n" not in text and "80 lines omitted (--full shows them)" in text
    # the patch as a diff, after the failing run
    assert text.index("+    return a + b") > failing and "*** Add File: banner.txt" in text
    # the model's final text, the check with its proof, the costs
    passing = text.rindex("$ python3 -m unittest -q")
    chunk = re.search(r"exit 0 · \S+ s · (c\d+)", text[passing:])[1]
    assert "## Summary" in text and "Fixed `add`" in text
    assert re.search(rf"passed +.*python3 -m unittest -q.* passed \[{chunk}\]\n +proof: {chunk} exited 0", text)
    assert re.search(r"step 1 · \d+ in / \d+ out tokens · \S+ s · \$0\.0\d{3}", text)
    assert re.search(r"completed: the model finished · 8 steps · .* · \$0\.\d{4}\n", text)
    assert text.rstrip().endswith("finished: the model finished")

    full = offload_cli("show", task, "--log", "--full", cwd=sample_repo).stdout
    assert "".join(f"    {n}\n" for n in range(1, 101)) in full and "omitted" not in full

    # events of a type or shape this version does not know (a later version wrote them) are shown as they are
    log = Path(os.environ["XDG_STATE_HOME"]) / "offload" / "tasks" / task / "events.jsonl"
    with log.open("a") as f:
        f.write(json.dumps({"t": 1, "type": "future.thing", "x": 1}) + "\n")
        f.write(json.dumps({"t": 1, "type": "tool.result", "id": "z", "exit_code": 0, "duration": None}) + "\n")
    later = offload_cli("show", task, "--log", cwd=sample_repo)
    assert later.returncode == 0, later.stderr
    assert '  future.thing: {"x": 1}\n' in later.stdout and '  tool.result: {"id": "z"' in later.stdout


def test_tasks_prints_one_line_per_task_whatever_the_prompt(bubblewrap, model, sample_repo):
    first, second = run_task(model, sample_repo), run_task(model, sample_repo)
    lines = offload_cli("tasks", cwd=sample_repo).stdout.splitlines()
    assert [line.split()[0] for line in lines] == [first, second]
    assert all(line.endswith("Fix add and keep the tests green Context: calc.py lines 4-5") for line in lines)
    # on a terminal, cut to its width
    screen = on_terminal("tasks", cwd=sample_repo, extra={"COLUMNS": "90"}).splitlines()
    assert len(screen) == 2 and all(len(line) == 90 and line.endswith("…") for line in screen)


def test_follow_shows_a_running_task_as_it_goes_and_ends_with_it(bubblewrap, model, sample_repo):
    run = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "run", "Look", "--repo", str(sample_repo),
                            "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env={**os.environ, **env(model, "waits")})
    try:
        task = json.loads(run.stdout.readline())["task"]
        follow = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "show", task, "-f"],
                                  stdout=subprocess.PIPE, text=True, cwd=sample_repo)
        seen = []
        for line in follow.stdout:
            seen.append(line)
            if line.startswith("  exit 1"):
                break
        # the model still thinks: the task and its follower run on
        assert run.poll() is None and follow.poll() is None
        RELEASE.set()
        rest = follow.stdout.read()
        assert follow.wait(timeout=60) == 0
        assert run.wait(timeout=60) == 1  # its check failed
    finally:
        RELEASE.set()
        run.kill()
    text = "".join(seen) + rest
    assert "running: working with waits" in text and "## Summary" in rest
    assert rest.rstrip().endswith("finished: the model finished")


def test_follow_shows_a_command_s_output_as_it_comes_and_a_cancel_ends_both(bubblewrap, model, sample_repo):
    run = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "run", "Wait", "--repo", str(sample_repo),
                            "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env={**os.environ, **env(model, "streams")})
    try:
        task = json.loads(run.stdout.readline())["task"]
        follow = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "show", task, "-f"],
                                  stdout=subprocess.PIPE, text=True, cwd=sample_repo)
        for line in follow.stdout:
            if line == "    started\n":
                break
        # the command runs on, and its follower with it
        assert run.poll() is None and follow.poll() is None
        cancel = offload_cli("cancel", task, cwd=sample_repo)
        assert cancel.returncode == 0 and f"cancelling {task}" in cancel.stdout
        rest = follow.stdout.read()
        assert follow.wait(timeout=60) == 0
        assert run.wait(timeout=60) == 1
    finally:
        run.kill()
    assert "done" not in rest and rest.rstrip().endswith("cancelled: cancelled by the user")


def test_follow_ends_when_the_process_running_the_task_dies(bubblewrap, model, sample_repo):
    run = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "run", "Look", "--repo", str(sample_repo),
                            "--json"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           env={**os.environ, **env(model, "waits")})
    try:
        task = json.loads(run.stdout.readline())["task"]
        follow = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "show", task, "--follow"],
                                  stdout=subprocess.PIPE, text=True, cwd=sample_repo)
        for line in follow.stdout:
            if line.startswith("  exit 1"):
                break
        run.send_signal(signal.SIGKILL)
        run.wait()
        rest = follow.stdout.read()
        assert follow.wait(timeout=60) == 0
    finally:
        run.kill()
    assert re.search(r"failed: interrupted: the process running it stopped", rest)


def test_nothing_a_task_brings_back_can_drive_the_terminal(bubblewrap, model, sample_repo):
    run = on_terminal("run", PROMPT, "--repo", str(sample_repo), extra=env(model))
    task = offload_cli("tasks", "--json", cwd=sample_repo).stdout.splitlines()[0]
    task = json.loads(task)["id"]
    screens = {
        "run": run,
        "diff": on_terminal("diff", task, cwd=sample_repo),
        "show": on_terminal("show", task, cwd=sample_repo),
        "show --log": on_terminal("show", task, "--log", "--full", cwd=sample_repo),
        "tasks": on_terminal("tasks", cwd=sample_repo),
    }
    for verb, screen in screens.items():
        # only our own colours and the live display's line clearing are left as escape sequences
        ours = re.sub(r"\x1b\[[\d;]*m|\r\x1b\[K", "", screen)
        assert "\x1b" not in ours and "\x07" not in ours, (verb, ours)
    for verb in ("run", "diff", "show --log"):
        assert r"hi\x1b[2K\x1b]0;owned\x07there" in screens[verb], verb
    for verb in ("run", "show", "show --log"):
        assert r"(calc.py:L4-L5).\x1b[2K\x1b]0;owned\x07" in screens[verb], verb
    assert r"before\x1b[2Kafter\x1b]0;owned\x07" in screens["show --log"]
    # coloured diffs on a terminal, unless NO_COLOR says not to
    assert "\x1b[32m+    return a + b\x1b[0m" in screens["diff"]
    plain = on_terminal("diff", task, cwd=sample_repo, extra={"NO_COLOR": "1"})
    assert "\x1b[" not in plain.replace(r"\x1b[", "") and "+    return a + b" in plain
    # piped, the diff is the task's diff byte for byte: still a patch
    piped = offload_cli("diff", task, cwd=sample_repo).stdout
    assert f"+hi{HOSTILE}there" in piped and "\x1b[32m" not in piped
