"""The warm pool (`sandbox.warm`) on both backends: a claimed warm sandbox works as a cold one does,
is used once, is never shared, and nothing of the pool outlives its manager or its process."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lsprotocol import types
from pygls.uris import from_fs_path
from pytest_lsp import client_capabilities

from offload.sandbox import pool as pool_module
from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import SandboxConfig, SandboxManager
from offload.sandbox.pool import WarmPool
from offload.server import config as cfg
from offload.server.tasks.manager import TaskManager
from tests.changes import changes_of, diff_of
from tests.test_sandbox_backends import (  # noqa: F401  (fixtures)
    backend,
    host_processes_mentioning,
    make_manager,
    tree_digest,
    wait_until,
)
from tests.conftest import offload_cli
from tests.test_e2e_lsp import Editor, client, execute  # noqa: F401  (client is a fixture)
from tests.test_sandbox_setup import SCRIPT, remove_setup_images


def filled(manager: SandboxManager, count: int) -> SandboxManager:
    """The manager once `count` warm sandboxes are ready."""
    manager.prewarm()
    assert wait_until(lambda: manager.warm_ready() >= count, timeout=60), f"{manager.warm_ready()} ready"
    return manager


def mounts_under(path: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(path))]


def test_a_claimed_warm_sandbox_works_like_a_cold_one(make_manager, sample_repo, backend):
    manager = filled(make_manager(warm=1), 1)
    snapshot = manager.snapshot(sample_repo)
    sandbox = manager.create(snapshot, {"offload.task": "t-warm"})
    assert sandbox.warm and sandbox.backend.backend == backend
    result = sandbox.run(["sh", "-c", "pwd; whoami; cat calc.py | head -1"])
    assert result.exit_code == 0 and result.output.splitlines()[:2] == ["/workspace", "offload"]
    assert sandbox.read_file("calc.py") == (sample_repo / "calc.py").read_bytes()
    assert sandbox.run(["git", "rev-parse", "HEAD"]).output.strip() == snapshot.base
    sandbox.write_file("calc.py", b"def add(a, b):\n    return a + b\n")
    sandbox.run(["sh", "-c", "echo new > added.txt"])
    assert sandbox.commit("the fix") is not None
    assert "+    return a + b" in diff_of(sandbox) and "added.txt" in diff_of(sandbox)
    assert {(c.path, c.status) for c in changes_of(sandbox)} == {("calc.py", "modified"), ("added.txt", "added")}
    listed = {s["offload.sandbox"]: s for s in manager.list()}
    assert listed[sandbox.id]["offload.task"] == "t-warm" and listed[sandbox.id]["offload.tree"] == snapshot.tree
    assert (sample_repo / "added.txt").exists() is False  # the checkout is never written


def test_the_pool_refills_after_each_claim_and_a_sandbox_is_used_once(make_manager, sample_repo):
    manager = filled(make_manager(warm=2), 2)
    snapshot = manager.snapshot(sample_repo)
    first = manager.create(snapshot)
    first.run(["sh", "-c", "echo secret-of-task-one > leftover.txt; echo x > /tmp/scratch; echo y > ~/dotfile"])
    manager.destroy(first.id)
    assert wait_until(lambda: manager.warm_ready() == 2, timeout=60)
    second = manager.create(snapshot)
    assert second.warm and second.id != first.id
    listing = second.run(["sh", "-c", "ls -a . /tmp ~"]).output
    assert "leftover.txt" not in listing and "scratch" not in listing and "dotfile" not in listing
    assert second.run(["sh", "-c", "cat leftover.txt /tmp/scratch ~/dotfile"]).exit_code != 0
    assert diff_of(second) == ""


def test_a_read_only_claim_cannot_write_its_workspace(make_manager, sample_repo):
    manager = filled(make_manager(warm=1), 1)
    snapshot = manager.snapshot(sample_repo)
    before = tree_digest(snapshot.path)
    sandbox = manager.create(snapshot, read_only=True)
    assert sandbox.warm
    for command in ("echo x >> calc.py", "echo x > new.txt", "rm -f calc.py", "mkdir d", "touch .git/x"):
        result = sandbox.run(["sh", "-c", command])
        assert result.exit_code != 0, command
    with pytest.raises(SandboxError):
        sandbox.write_file("calc.py", b"changed\n")
    assert sandbox.run(["sh", "-c", "echo ok > /tmp/t && cat /tmp/t"]).output == "ok\n"  # /tmp stays writable
    assert sandbox.run(["git", "log", "--format=%s"]).output.strip() == "initial"  # the user's own history
    assert tree_digest(snapshot.path) == before


def test_the_claimed_workspace_cannot_be_unmounted_or_covered_from_inside(make_manager, sample_repo):
    manager = filled(make_manager(warm=1), 1)
    sandbox = manager.create(manager.snapshot(sample_repo))
    assert sandbox.warm
    for command in ("umount /workspace", "umount -l /workspace", "mount -t tmpfs none /workspace",
                    "mount --make-shared /workspace"):
        assert sandbox.run(["sh", "-c", command]).exit_code != 0, command
    assert sandbox.read_file("calc.py") == (sample_repo / "calc.py").read_bytes()


def test_concurrent_claims_never_share_a_sandbox(make_manager, sample_repo):
    manager = filled(make_manager(warm=2), 2)
    snapshot = manager.snapshot(sample_repo)
    made, errors = [None] * 4, []

    def claim(i: int) -> None:
        try:
            made[i] = manager.create(snapshot)
        except Exception as e:  # reported below, not lost in the thread
            errors.append(e)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({s.id for s in made}) == 4 and sum(s.warm for s in made) >= 2
    for i, sandbox in enumerate(made):
        sandbox.write_file(f"mine-{i}.txt", f"{i}\n".encode())
    for i, sandbox in enumerate(made):
        assert sandbox.run(["sh", "-c", "ls mine-*.txt"]).output.split() == [f"mine-{i}.txt"]


def test_close_destroys_the_unclaimed_warm_sandboxes(make_manager, sample_repo, tmp_path, backend):
    manager = filled(make_manager(warm=2), 2)
    claimed = manager.create(manager.snapshot(sample_repo))
    assert claimed.warm and len(manager.list()) >= 2  # the claimed one and the warm ones
    manager.close()
    assert manager.list() == [] and manager.warm_ready() == 0
    assert list((tmp_path / "cache" / "sandboxes").iterdir()) == []
    assert mounts_under(tmp_path / "cache") == []
    assert host_processes_mentioning(str(tmp_path / "cache" / "sandboxes")) == []


def test_a_different_image_or_no_ready_sandbox_starts_cold(make_manager, sample_repo):
    manager = make_manager(warm=1)  # not prewarmed: the first create finds none ready
    snapshot = manager.snapshot(sample_repo)
    first = manager.create(snapshot)
    assert not first.warm and first.run(["cat", "calc.py"]).exit_code == 0
    assert wait_until(lambda: manager.warm_ready() == 1, timeout=60)  # the first create asked for one
    assert manager.create(snapshot).warm


HOST_THAT_DIES = """
import json, sys, time
from pathlib import Path
from offload.sandbox.manager import SandboxConfig, SandboxManager
manager = SandboxManager(SandboxConfig(backend=sys.argv[2], warm=2), Path(sys.argv[1]), owner="offload-doomed")
manager.prewarm()
while manager.warm_ready() < 2:
    time.sleep(0.05)
print(json.dumps([s["offload.sandbox"] for s in manager.list()]), flush=True)
time.sleep(300)
"""


def test_a_dead_process_warm_sandboxes_stop_and_are_swept(backend, tmp_path, docker_engine_if_docker):
    cache = tmp_path / "cache"
    host = subprocess.Popen([sys.executable, "-c", HOST_THAT_DIES, str(cache), backend], stdout=subprocess.PIPE,
                            text=True)
    try:
        ids = json.loads(host.stdout.readline())
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()
    assert len(ids) == 2
    sandboxes = cache / "sandboxes"
    # the runner sees its owner go and stops its sandbox; what stays on this host is the sweep's
    assert wait_until(lambda: not host_processes_mentioning(str(sandboxes)), timeout=30)
    if backend == "docker":
        assert wait_until(lambda: not docker_engine_if_docker.containers.list(ignore_removed=True, 
            all=True, filters={"label": "offload.owner=offload-doomed"}), timeout=30)
    assert sorted(p.name for p in sandboxes.iterdir()) == sorted(ids)
    survivor = SandboxManager(SandboxConfig(backend=backend), cache, owner="offload-alive")
    assert sorted(survivor.sweep()) == sorted(ids)
    assert list(sandboxes.iterdir()) == [] and mounts_under(cache) == []


@pytest.fixture
def docker_engine_if_docker(backend, request):
    return request.getfixturevalue("docker_engine") if backend == "docker" else None


def test_a_warm_sandbox_gets_the_cached_setup_like_a_cold_one(backend, sample_repo, tmp_path, request):
    manager = SandboxManager(SandboxConfig(backend=backend, setup=SCRIPT, warm=1), tmp_path / "cache",
                             owner="offload-test-warm-setup")
    try:
        snapshot = manager.snapshot(sample_repo)
        cold = manager.create(snapshot)  # runs setup, then asks for a warm sandbox of its environment
        assert not cold.warm
        assert wait_until(lambda: manager.warm_ready() == 1, timeout=60)
        warm = manager.create(snapshot)
        assert warm.warm
        for sandbox in (cold, warm):
            assert sandbox.run(["sh", "-c", "cat deps/lib.txt ~/.setup-home"]).output == "setup\nhome\n"
        warm.run(["sh", "-c", "echo more >> deps/lib.txt && echo '# x' >> calc.py"])
        assert [c.path for c in changes_of(warm)] == ["calc.py"]  # what setup added stays out of the change
    finally:
        manager.close()
        if backend == "docker":
            remove_setup_images(request.getfixturevalue("docker_engine"), tmp_path / "cache")


# -- the task manager -------------------------------------------------------------------------------

def bubblewrap_task_manager(fake_model, long_lived: bool) -> TaskManager:
    return TaskManager(overrides={"model": {"base_url": fake_model.base_url, "name": "fix-failing-test"},
                                  "sandbox": {"backend": "bubblewrap", "warm": 1}}, long_lived=long_lived)


@pytest.mark.usefixtures("bubblewrap")
async def test_the_language_server_keeps_warm_sandboxes_between_tasks(fake_model, sample_repo):
    manager = bubblewrap_task_manager(fake_model, long_lived=True)
    config = cfg.load_config(sample_repo, manager.overrides)
    try:
        first = await manager.wait(manager.submit("Make the failing test pass", sample_repo)["id"])
        sandboxes = manager.sandboxes(config)
        assert sandboxes is manager.sandboxes(config)  # one per configuration, kept
        assert wait_until(lambda: sandboxes.warm_ready() == 1, timeout=60)
        second = await manager.wait(manager.submit("Make the failing test pass", sample_repo)["id"])
        for record in (first, second):
            assert record["state"] == "finished", record["reason"]
            assert "return a + b" in manager.diff(record["id"])
        [event] = [e for e in manager.events(second["id"]) if e["type"] == "sandbox"]
        assert event["warm"] is True
        assert wait_until(lambda: sandboxes.warm_ready() == 1, timeout=60)
        assert [s for s in sandboxes.list() if "offload.task" in s] == []  # each task's sandbox is gone
    finally:
        manager.close()
    assert sandboxes.list() == []


@pytest.mark.docker
async def test_through_the_language_server_a_later_task_claims_a_warm_sandbox(client, docker_engine, fake_model,
                                                                              sample_repo):
    Editor(client)  # answers what the server asks of an editor
    await client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), root_uri=from_fs_path(str(sample_repo)),
        initialization_options={"settings": {"model": {"base_url": fake_model.base_url, "name": "fix-failing-test"},
                                             "sandbox": {"warm": 1}}}))
    records = []
    for _ in range(2):
        task_id = (await execute(client, "offload.code", {"prompt": "Make the failing test pass"}))["taskId"]
        for _ in range(1200):
            record = await execute(client, "offload.showTask", {"taskId": task_id})
            if record["state"] in ("finished", "failed", "cancelled"):
                break
            await asyncio.sleep(0.1)
        assert record["state"] == "finished", record
        records.append(record)
    [sandbox] = [e for e in records[1]["events"] if e["type"] == "sandbox"]
    assert sandbox["warm"] is True and sandbox["backend"] == "docker"
    assert "+    return a + b" in records[1]["diff"]


@pytest.mark.usefixtures("bubblewrap")
async def test_a_one_task_process_starts_no_warm_sandbox(fake_model, sample_repo):
    manager = bubblewrap_task_manager(fake_model, long_lived=False)
    record = await manager.wait(manager.submit("Make the failing test pass", sample_repo)["id"])
    assert record["state"] == "finished", record["reason"]
    [event] = [e for e in manager.events(record["id"]) if e["type"] == "sandbox"]
    assert event["warm"] is False
    sandboxes = manager.sandboxes(cfg.load_config(sample_repo, manager.overrides))
    assert sandboxes.warm_ready() == 0 and sandboxes.list() == []


@pytest.mark.parametrize("value", [-1, "two", 1.5, True])
def test_a_bad_sandbox_warm_is_a_clear_error_where_it_arrives(tmp_path, value):
    (tmp_path / ".offload").mkdir()
    (tmp_path / ".offload" / "config.toml").write_text(f"[sandbox]\nwarm = {json.dumps(value)}\n")
    with pytest.raises(cfg.ConfigError, match=r"sandbox\.warm must be "):
        cfg.load_config(tmp_path)


# -- the pool's bookkeeping, with plain objects for sandboxes ---------------------------------------

def test_a_key_whose_claim_failed_is_not_refilled():
    started, stopped = [], []
    pool = WarmPool(2, lambda key: started.append(object()) or started[-1], lambda key, s: stopped.append(s))
    pool.want("image")
    assert wait_until(lambda: pool.ready() == 2)
    pool.drop("image", "its workspace did not show inside")
    assert sorted(map(id, stopped)) == sorted(map(id, started)) and pool.ready() == 0
    assert pool.take("image") is None
    pool.close()
    assert len(started) == 2  # nothing started for it since


def test_a_start_that_fails_is_tried_again_later_and_close_leaves_nothing(monkeypatch):
    monkeypatch.setattr(pool_module, "RETRY_AFTER", 0.05)
    attempts, stopped = [], []

    def start(key):
        attempts.append(key)
        if len(attempts) == 1:
            raise SandboxError("the engine went away")
        return f"sandbox-{len(attempts)}"

    pool = WarmPool(1, start, lambda key, s: stopped.append(s))
    pool.want("image")
    assert wait_until(lambda: pool.ready() == 1)
    assert pool.take("image") == "sandbox-2"  # taken once: a second take finds none until the refill
    assert wait_until(lambda: pool.ready() == 1)
    pool.close()
    assert stopped == ["sandbox-3"] and pool.ready() == 0
    pool.want("image")  # closed: nothing starts any more
    assert pool.take("image") is None and len(attempts) == 3


def test_doctor_says_how_many_sandboxes_the_language_server_keeps_warm(bubblewrap, tmp_path):
    env = {"OFFLOAD_SANDBOX_BACKEND": "bubblewrap", "OFFLOAD_SANDBOX_WARM": "2"}
    checks = {c["check"]: c for c in json.loads(offload_cli("doctor", "--json", cwd=tmp_path, env=env).stdout)}
    assert checks["sandbox"]["ok"] and "keeps 2 started" in checks["sandbox"]["detail"]
    broken = json.loads(offload_cli("doctor", "--json", cwd=tmp_path, env={"OFFLOAD_SANDBOX_WARM": "-1"}).stdout)
    assert broken[0]["check"] == "config" and not broken[0]["ok"] and "sandbox.warm" in broken[0]["detail"]
