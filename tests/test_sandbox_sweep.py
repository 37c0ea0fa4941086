"""The sweep: what a process killed with SIGKILL left on either backend is removed, nothing else."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import docker.errors

from offload.sandbox import owner
from offload.sandbox.manager import SandboxConfig, SandboxManager
from tests.conftest import offload_cli
from tests.test_e2e_lsp import client, start  # noqa: F401  (client is a fixture)
from tests.test_sandbox_backends import (  # noqa: F401  (fixtures)
    backend,
    host_processes_mentioning,
    wait_until,
)

HOST_THAT_DIES = """
import json, sys, time
from pathlib import Path
from offload.sandbox.manager import SandboxConfig, SandboxManager
from tests.conftest import offload_cli
from tests.test_e2e_lsp import client, start  # noqa: F401  (client is a fixture)
manager = SandboxManager(SandboxConfig(backend=sys.argv[3]), Path(sys.argv[1]), owner="offload-doomed")
snapshot = manager.snapshot(sys.argv[2])
made = []
for read_only in (False, True):
    sandbox = manager.create(snapshot, read_only=read_only)
    sandbox.run(["sh", "-c", "sleep 300 & echo started"])
    sandbox.run(["sh", "-c", "echo left > /tmp/scratch"])
    b = sandbox.backend
    made.append({"id": sandbox.id, "directory": str(b.directory) if b.directory else None,
                 "container": getattr(b, "container", None) and b.container.id,
                 "cgroups": [str(c) for c in getattr(b, "cgroups", None).dirs] if getattr(b, "cgroups", None) else []})
print(json.dumps(made), flush=True)
time.sleep(300)
"""


def killed_after_making_sandboxes(cache: Path, repo: Path, backend: str) -> list[dict]:
    """What a process made (two sandboxes over `repo`, busy) before it was killed with SIGKILL."""
    host = subprocess.Popen([sys.executable, "-c", HOST_THAT_DIES, str(cache), str(repo), backend],
                            stdout=subprocess.PIPE, text=True)
    try:
        return json.loads(host.stdout.readline())
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()


def mounts_under(path: Path) -> list[str]:
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(str(path))]


def test_a_killed_owner_leaves_nothing_after_the_sweep(backend, sample_repo, tmp_path, request):
    cache = tmp_path / "cache"
    live = SandboxManager(SandboxConfig(backend=backend), cache, owner="offload-alive")
    survivor = live.create(live.snapshot(sample_repo))  # a live owner's sandbox in the same cache
    made = killed_after_making_sandboxes(cache, sample_repo, backend)
    try:
        ids = {m["id"] for m in made}
        assert wait_until(lambda: not any(host_processes_mentioning(i) for i in ids), 30), "a sandbox outlived its owner"
        assert all(Path(m["directory"]).exists() for m in made)  # left behind until the sweep
        if backend == "docker":
            assert mounts_under(cache / "sandboxes")

        removed = SandboxManager(SandboxConfig(backend=backend), cache).sweep()

        assert ids <= set(removed) and survivor.id not in removed
        for m in made:
            assert not Path(m["directory"]).exists()
            assert not host_processes_mentioning(m["id"])
            assert not any(Path(c).exists() for c in m["cgroups"])
        assert [p.name for p in (cache / "sandboxes").iterdir()] == [survivor.id]
        layer = survivor.backend.directory / "layer"
        assert mounts_under(cache / "sandboxes") == ([str(layer), str(layer / "ws")] if backend == "docker" else [])
        if backend == "docker":
            assert not request.getfixturevalue("docker_engine").containers.list(
                ignore_removed=True, all=True, filters={"label": "offload.owner=offload-doomed"})
        assert survivor.run(["echo", "still here"]).output == "still here\n"
    finally:
        live.close()
    assert not list((cache / "sandboxes").iterdir()) and not mounts_under(cache)


def test_only_what_a_dead_process_of_this_machine_left_is_judged_dead():
    me = owner.current()
    assert owner.alive(me) and not owner.alive(None)
    assert not owner.alive({**me, "started": "1"})  # the pid was reused by another process
    assert not owner.dead({owner.LABEL: owner.label()})
    host, boot, _, _ = owner.label().split("/")
    dead_child = subprocess.Popen(["true"])
    dead_child.wait()
    assert owner.dead({owner.LABEL: f"{host}/{boot}/{dead_child.pid}/1"})
    assert owner.dead({owner.LABEL: f"{host}/an-earlier-boot/{me['pid']}/{me['started']}"})
    assert not owner.dead({owner.LABEL: f"another-host/{boot}/{dead_child.pid}/1"})  # not ours to judge
    assert not owner.dead({}) and not owner.dead({owner.LABEL: "garbage"})


def test_a_task_sweeps_first(backend, fake_model, sample_repo, isolated_dirs):
    cache = Path(isolated_dirs["XDG_CACHE_HOME"]) / "offload"
    made = killed_after_making_sandboxes(cache, sample_repo, backend)
    assert all(Path(m["directory"]).exists() for m in made)
    env = {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "test-key",
           "OFFLOAD_MODEL_NAME": "fix-failing-test", "OFFLOAD_SANDBOX_BACKEND": backend}
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), env=env)
    assert proc.returncode == 0, proc.stderr
    assert not any(Path(m["directory"]).exists() for m in made)
    assert not mounts_under(cache)


async def test_the_language_server_sweeps_when_it_starts(client, docker_engine, fake_model, sample_repo,  # noqa: F811
                                                        isolated_dirs):
    cache = Path(isolated_dirs["XDG_CACHE_HOME"]) / "offload"
    made = killed_after_making_sandboxes(cache, sample_repo, "docker")
    assert all(Path(m["directory"]).exists() for m in made)
    await start(client, sample_repo, fake_model, "visual-studio-code")
    async with asyncio.timeout(60):
        while any(Path(m["directory"]).exists() for m in made) or mounts_under(cache):
            await asyncio.sleep(0.1)
    assert not docker_engine.containers.list(ignore_removed=True, all=True,
                                             filters={"label": "offload.owner=offload-doomed"})


def test_a_dead_process_s_unfinished_setup_is_swept(docker_engine, tmp_path):
    """A setup killed mid-way leaves its bridge network and its unfinished result; the sweep takes
    both, and leaves a live process's alone."""
    cache = tmp_path / "cache"
    dead_child = subprocess.Popen(["true"])
    dead_child.wait()
    host, boot, _, _ = owner.label().split("/")
    dead = f"{host}/{boot}/{dead_child.pid}/1"
    made = {}
    for who, label in (("dead", dead), ("live", owner.label())):
        staging = cache / "setup" / f".new-{who}"
        staging.mkdir(parents=True)
        (staging / ".owner").write_text(label)
        made[who] = docker_engine.networks.create(
            f"offload-setup-test-{who}-{uuid.uuid4().hex[:6]}", driver="bridge",
            labels={"offload.sandbox": f"setup-{who}", owner.LABEL: label, "offload.backend": "docker"})
    try:
        removed = SandboxManager(SandboxConfig(backend="docker"), cache).sweep()
        assert "setup-dead" in removed and ".new-dead" in removed and "setup-live" not in removed
        assert [p.name for p in (cache / "setup").glob(".new-*")] == [".new-live"]
        names = {n.name for n in docker_engine.networks.list(names=[made["dead"].name, made["live"].name])}
        assert names == {made["live"].name}
    finally:
        for network in made.values():
            try:
                network.remove()
            except docker.errors.NotFound:
                pass
