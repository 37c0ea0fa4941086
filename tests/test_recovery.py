"""Nothing lost: a process killed mid-task leaves every task listed with its whole history."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.sandbox import owner
from offload.sandbox.manager import SandboxConfig, SandboxManager
from tests.conftest import ROOT, offload_cli
from tests.lsp_wire import StdioServer

pytestmark = pytest.mark.docker


def start_run(fake_model, repo, scenario: str, prompt: str = "wait a minute") -> subprocess.Popen:
    env = {**os.environ, "OPENAI_BASE_URL": fake_model.base_url, "OFFLOAD_MODEL_NAME": scenario,
           "OPENAI_API_KEY": "test-key"}
    return subprocess.Popen([sys.executable, "-m", "offload.server.cli", "run", prompt, "--repo", str(repo),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def read_until(proc: subprocess.Popen, predicate) -> list[dict]:
    events = []
    for line in proc.stdout:
        events.append(json.loads(line))
        if predicate(events[-1]):
            return events
    raise AssertionError(f"the run ended before the expected event: {proc.stderr.read()}")


def swept_clean() -> None:
    """What a killed process mounted for its sandbox (the layer's tmpfs, the workspace overlay)
    stays until the next start's sweep, and goes then."""
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "offload"
    assert str(cache) in Path("/proc/self/mountinfo").read_text()
    assert SandboxManager(SandboxConfig(backend="docker"), cache).sweep()
    assert str(cache) not in Path("/proc/self/mountinfo").read_text()


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
    swept_clean()


def test_cli_killed_while_its_task_prepares_keeps_the_task_and_a_follow_up_finishes_it(docker_engine, fake_model,
                                                                                       sample_repo):
    config = sample_repo / ".offload" / "config.toml"
    config.parent.mkdir()
    config.write_text('[sandbox]\nsetup = "echo started; sleep 600"\n')
    proc = start_run(fake_model, sample_repo, "slow-then-fix", "Make the failing test pass")
    events = read_until(proc, lambda e: e["type"] == "setup" and "started" in e.get("output", ""))
    task_id = events[-1]["task"]
    assert [e["state"] for e in events if e["type"] == "state"] == ["queued", "preparing"]
    def setups():  # the killed process's setup containers
        return [c for c in docker_engine.containers.list(ignore_removed=True, all=True,
                                                         filters={"label": "offload.setup"})
                if c.labels[owner.LABEL].split("/")[-2] == str(proc.pid)]
    assert setups()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    listed = [json.loads(line) for line in offload_cli("tasks", "--json", cwd=sample_repo).stdout.splitlines()]
    assert [(t["id"], t["state"], t["interrupted"]) for t in listed] == [(task_id, "failed", True)]
    shown = json.loads(offload_cli("show", task_id, "--json").stdout)
    assert "started" in "".join(e.get("output", "") for e in shown["events"] if e["type"] == "setup")
    deadline = time.monotonic() + 30
    while setups():
        assert time.monotonic() < deadline, "the killed task's setup container is still there"
        time.sleep(0.2)

    config.unlink()  # the setup was the trouble: the follow-up goes without it
    env = {"OPENAI_BASE_URL": fake_model.base_url, "OFFLOAD_MODEL_NAME": "slow-then-fix", "OPENAI_API_KEY": "test-key"}
    followed = offload_cli("followup", task_id, "Go on.", cwd=sample_repo, env=env)
    assert followed.returncode == 0, followed.stderr
    assert "return a + b" in offload_cli("diff", task_id, cwd=sample_repo).stdout
    assert json.loads(offload_cli("show", task_id, "--json").stdout)["state"] == "finished"


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
    assert docker_engine.containers.list(ignore_removed=True, filters={"label": f"offload.task={task_id}"})
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while docker_engine.containers.list(ignore_removed=True, all=True,
                                        filters={"label": f"offload.task={task_id}"}):
        assert time.monotonic() < deadline, "the orphaned sandbox is still there"
        time.sleep(0.2)
    swept_clean()


# -- the language server and its task worker --------------------------------------------------------

def workers(pid: int) -> list[int]:
    """The task workers a server started (it also keeps `git cat-file` readers of task results)."""
    found = [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    return [p for p in found if b"offload.server.tasks.worker" in open(f"/proc/{p}/cmdline", "rb").read()]


def gone(pid: int, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
                return True  # ended; its parent (killed) never reaped it
        except FileNotFoundError:
            return True
        time.sleep(0.1)
    return False


def serve_slow_task(state: Path, fake_model, repo: Path, concurrency: int = 4) -> tuple[StdioServer, str]:
    """A language server whose task is at its minute-long command (in the task worker)."""
    server = StdioServer(env={"XDG_STATE_HOME": str(state), "OPENAI_API_KEY": "test-key"})
    server.initialize(repo, {"model": {"base_url": fake_model.base_url, "name": "slow-then-fix"},
                             "tasks": {"concurrency": concurrency}})
    task_id = server.command("offload.code", {"prompt": "wait a minute"})["result"]["taskId"]
    server.wait_for(lambda m: m.get("method") == "offload/taskEvent" and m["params"]["taskId"] == task_id
                    and m["params"]["event"]["type"] == "tool.call", timeout=120)
    return server, task_id


def final_state(server: StdioServer, task_id: str, timeout: float = 120, since: int = 0) -> dict:
    update = server.wait_for(lambda m: m.get("method") == "offload/taskUpdated" and m["params"]["taskId"] == task_id
                             and m["params"]["state"] in ("finished", "failed", "cancelled"), timeout=timeout,
                             since=since)
    return update["params"]


def test_a_killed_task_worker_interrupts_its_task_and_the_next_task_runs(docker_engine, fake_model, sample_repo,
                                                                          tmp_path):
    server, task_id = serve_slow_task(tmp_path / "state", fake_model, sample_repo)
    with server:
        (worker,) = workers(server.proc.pid)
        os.kill(worker, signal.SIGKILL)
        ended = final_state(server, task_id)
        assert ended["state"] == "failed" and "interrupted" in ended["reason"] and "worker" in ended["reason"]
        shown = server.command("offload.showTask", {"taskId": task_id})["result"]
        assert "tool.call" in [e["type"] for e in shown["events"]]  # its history is whole

        again = server.command("offload.code", {"prompt": "Make the failing test pass"})["result"]["taskId"]
        assert final_state(server, again)["state"] == "finished"  # in a new worker
        assert "return a + b" in server.command("offload.showTask", {"taskId": again})["result"]["diff"]
        assert len(workers(server.proc.pid)) == 1


def test_a_language_server_killed_mid_task_takes_its_worker_along_and_a_new_one_lists_the_task(
        docker_engine, fake_model, sample_repo, tmp_path):
    server, task_id = serve_slow_task(tmp_path / "state", fake_model, sample_repo)
    with server:
        (worker,) = workers(server.proc.pid)
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        assert gone(worker), "the task worker outlived its language server"
    deadline = time.monotonic() + 30
    while docker_engine.containers.list(ignore_removed=True, all=True,
                                        filters={"label": f"offload.task={task_id}"}):
        assert time.monotonic() < deadline, "the killed worker's sandbox is still there"
        time.sleep(0.2)

    with StdioServer(env={"XDG_STATE_HOME": str(tmp_path / "state")}) as restarted:
        restarted.initialize(sample_repo)
        (task,) = restarted.command("offload.listTasks", {})["result"]["tasks"]
        assert task["taskId"] == task_id and task["state"] == "failed" and "interrupted" in task["reason"]
        events = restarted.command("offload.showTask", {"taskId": task_id})["result"]["events"]
        assert [e["type"] for e in events][:3] == ["state", "state", "sandbox"] and "tool.call" in [
            e["type"] for e in events]


def test_a_task_queued_when_its_server_was_killed_is_listed_and_a_follow_up_runs_it(
        docker_engine, fake_model, sample_repo, tmp_path):
    state = tmp_path / "state"
    server, slow = serve_slow_task(state, fake_model, sample_repo, concurrency=1)
    with server:
        queued = server.command("offload.code", {"prompt": "Make the failing test pass"})["result"]["taskId"]
        listed = {t["taskId"]: t["state"] for t in server.command("offload.listTasks", {})["result"]["tasks"]}
        assert listed == {slow: "running", queued: "queued"}
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()

    with StdioServer(env={"XDG_STATE_HOME": str(state), "OPENAI_API_KEY": "test-key"}) as restarted:
        restarted.initialize(sample_repo, {"model": {"base_url": fake_model.base_url, "name": "slow-then-fix"}})
        tasks = {t["taskId"]: t for t in restarted.command("offload.listTasks", {})["result"]["tasks"]}
        assert set(tasks) == {slow, queued}
        assert all(t["state"] == "failed" and "interrupted" in t["reason"] for t in tasks.values()), tasks
        # it never had a sandbox: the follow-up runs it from the workspace as it is now, its prompt first
        since = len(restarted.messages)
        reply = restarted.command("offload.followUp", {"taskId": queued, "prompt": "Go on."})
        assert "result" in reply, reply
        ended = final_state(restarted, queued, since=since)
        assert ended["state"] == "finished", ended
        shown = restarted.command("offload.showTask", {"taskId": queued})["result"]
        assert "return a + b" in shown["diff"]
        assert (sample_repo / "calc.py").read_text().count("return a - b") == 1  # nothing touched the checkout


SAVER = """
import sys
from offload.server.tasks.store import TaskStore
from pathlib import Path
from tests.changes import one_change
store = TaskStore(sys.argv[1])
change = one_change(Path(sys.argv[3]), "a.py", b"a" * 50_000, b"b" * 50_000)
for n in range(300):
    store.save({"id": "t1", "created": 1, "state": "running", "writer": sys.argv[2], "n": n, "pad": "x" * 50_000})
    store.save_changes("t1", [change])
"""


def test_a_task_saved_by_two_processes_at_once_is_never_read_half_written(tmp_path):
    """The task worker, an editor window and the CLI may save one task while another reads it."""
    from offload.server.tasks.store import TaskStore
    store = TaskStore(tmp_path)
    store.create({"id": "t1", "created": 1, "state": "queued"})
    writers = [subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path), name, str(tmp_path / name)],
                                stderr=subprocess.PIPE, text=True, cwd=ROOT)
               for name in ("worker", "editor")]
    reads = 0
    while any(w.poll() is None for w in writers) or reads == 0:
        record = store.load("t1")
        assert record is not None and record["id"] == "t1"
        changes = store.changes("t1")
        assert changes == [] or changes[0].base == b"a" * 50_000 and store.diff("t1").count("\n") > 3
        reads += 1
    assert [w.wait() for w in writers] == [0, 0], [w.stderr.read() for w in writers]
    assert store.load("t1")["n"] == 299
    assert sorted(p.name for p in store.dir("t1").iterdir()) == ["changes.json", "diff.patch", "task.json"]


def test_a_change_recorded_by_an_older_offload_is_read_checked_and_applied(fake_model, sample_repo, tmp_path,
                                                                           bubblewrap):
    env = {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "k", "OFFLOAD_MODEL_NAME": "fix-failing-test",
           "OFFLOAD_SANDBOX_BACKEND": "bubblewrap"}
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), "--json", env=env)
    record = json.loads(proc.stdout.splitlines()[-1])["record"]
    (task,) = (tmp_path / "xdg").glob(f"xdg_state_home/offload/tasks/{record['id']}")
    base = (sample_repo / "calc.py").read_bytes()
    binary = bytes(range(256)) * 4

    def as_older_offload_kept_it(files: list[tuple[str, str, bytes | None, bytes | None]]) -> None:
        encode = lambda data: None if data is None else base64.b64encode(data).decode()  # noqa: E731
        for repo in task.glob("results/*.git"):
            shutil.rmtree(repo)
        (task / "changes.json").write_text(json.dumps(
            [{"path": p, "status": s, "base": encode(b), "result": encode(r)} for p, s, b, r in files]))

    as_older_offload_kept_it([("../escape.txt", "added", None, b"out\n")])  # what the old way let through
    refused = offload_cli("apply", record["id"], cwd=sample_repo)
    assert refused.returncode != 0 and "recorded by an older Offload" in refused.stderr, refused.stderr
    assert "escape.txt" in refused.stderr and not (sample_repo.parent / "escape.txt").exists()

    fixed = base.replace(b"a - b", b"a + b")
    as_older_offload_kept_it([("calc.py", "modified", base, fixed), ("logo.bin", "added", None, binary)])
    applied = offload_cli("apply", record["id"], cwd=sample_repo)
    assert applied.returncode == 0, applied.stderr
    assert (sample_repo / "calc.py").read_bytes() == fixed and (sample_repo / "logo.bin").read_bytes() == binary
    assert isinstance(json.loads((task / "changes.json").read_text()), dict)  # kept as this Offload keeps it now
    shown = offload_cli("diff", record["id"], cwd=sample_repo).stdout
    assert "+    return a + b" in shown and "Binary files /dev/null and b/logo.bin differ" in shown, shown
