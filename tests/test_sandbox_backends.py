"""Both sandbox backends, Docker and bubblewrap, behave the same on a real git repository."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import types
import uuid
from pathlib import Path

import pytest

from offload.sandbox import docker_backend
from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import SandboxConfig, SandboxManager
from tests.changes import changes_of, diff_of
from tests.conftest import offload_cli, part_missing

BACKENDS = [pytest.param("docker", marks=pytest.mark.docker), "bubblewrap"]



@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    request.getfixturevalue("docker_engine" if request.param == "docker" else "bubblewrap")
    return request.param


@pytest.fixture
def make_manager(backend, tmp_path):
    """SandboxManager factory on the backend under test; every sandbox is destroyed at the end."""
    managers = []

    def make(**settings) -> SandboxManager:
        owner = f"offload-test-{uuid.uuid4().hex[:8]}"  # lists only what this test made
        manager = SandboxManager(SandboxConfig(backend=backend, **settings), tmp_path / "cache", owner=owner)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        manager.close()


@pytest.fixture
def sandbox(make_manager, sample_repo):
    manager = make_manager()
    return manager.create(manager.snapshot(sample_repo))


def tree_digest(root: Path) -> str:
    """Every path, mode and content under root (the snapshot's .git included)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        stat = path.lstat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_mode}\0".encode())
        if path.is_file() and not path.is_symlink():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def host_processes_mentioning(text: str) -> list[int]:
    """Host pids whose command line contains `text` (zombies have none)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def wait_until(predicate, timeout: float = 10.0) -> bool:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def test_run_reports_exit_code_output_and_working_directory(sandbox, backend):
    assert sandbox.backend.backend == backend
    result = sandbox.run(["sh", "-c", "pwd; echo out; echo err >&2; exit 3"])
    assert result.exit_code == 3 and not result.timed_out
    assert result.output.splitlines() == ["/workspace", "out", "err"]
    assert sandbox.run(["git", "log", "--format=%s"]).output.strip() == "initial"  # the user's own history
    assert sandbox.run(["whoami"]).output.strip() == "offload"


def test_a_subdirectory_task_starts_there(make_manager, sample_repo):
    (sample_repo / "pkg").mkdir()
    (sample_repo / "pkg" / "mod.py").write_text("x = 1\n")
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo / "pkg"))
    assert sandbox.workdir == "/workspace/pkg"
    assert sandbox.run(["pwd"]).output.strip() == "/workspace/pkg"
    assert sandbox.read_file("mod.py") == b"x = 1\n"
    with pytest.raises(SandboxError, match="outside the workspace"):
        sandbox.run(["pwd"], workdir="../..")


def test_a_command_past_its_timeout_is_stopped(sandbox):
    result = sandbox.run(["sleep", "30"], timeout=0.5)
    assert result.timed_out and result.exit_code != 0


def test_files_are_read_written_and_deleted(sandbox):
    assert b"def add(a, b)" in sandbox.read_file("calc.py")
    assert sandbox.read_file("missing.txt") is None
    sandbox.write_file("sub/dir/new.txt", b"hello\n")
    assert sandbox.run(["cat", "sub/dir/new.txt"]).output == "hello\n"
    sandbox.run(["sh", "-c", "echo from-shell > shell.txt"])
    assert sandbox.read_file("shell.txt") == b"from-shell\n"
    sandbox.delete_file("README.md")
    assert sandbox.read_file("README.md") is None
    assert sandbox.run(["test", "-e", "README.md"]).exit_code == 1


def test_commit_diff_and_export_show_the_change(sandbox):
    calc = sandbox.read_file("calc.py").replace(b"return a - b", b"return a + b")
    sandbox.write_file("calc.py", calc)
    sandbox.write_file("notes.txt", b"new\n")
    sandbox.delete_file("README.md")
    assert "calc.py" in sandbox.run(["git", "status", "--porcelain"]).output

    commit = sandbox.commit("Fix add")
    assert commit and sandbox.run(["git", "log", "-1", "--format=%H %s"]).output.strip() == f"{commit} Fix add"
    assert sandbox.commit("nothing") is None
    diff = diff_of(sandbox)
    assert "-    return a - b" in diff and "+    return a + b" in diff and "+new" in diff
    changes = {c.path: c for c in changes_of(sandbox)}
    assert {p: c.status for p, c in changes.items()} == {"calc.py": "modified", "notes.txt": "added",
                                                        "README.md": "deleted"}
    assert changes["calc.py"].result == calc and b"return a - b" in changes["calc.py"].base
    assert changes["README.md"].result is None and changes["notes.txt"].base is None


def test_the_snapshot_cache_is_unchanged_by_a_sandbox_that_writes(sandbox):
    before = tree_digest(sandbox.snapshot.path)
    sandbox.write_file("calc.py", b"changed\n")
    sandbox.run(["sh", "-c", "echo x > made.txt && mkdir -p d && touch d/f && rm test_calc.py"])
    sandbox.commit("change everything")
    sandbox.run(["git", "gc", "-q"])
    assert sandbox.read_file("calc.py") == b"changed\n"
    assert tree_digest(sandbox.snapshot.path) == before


def test_files_beyond_the_memory_limit_but_within_the_disk_leave_the_sandbox_working(make_manager, sample_repo):
    manager = make_manager(memory="256m", disk="1g")
    sandbox = manager.create(manager.snapshot(sample_repo))
    result = sandbox.run(["sh", "-c", "head -c 314572800 /dev/zero > big.bin && wc -c < big.bin"], timeout=120)
    assert result.exit_code == 0 and result.output.strip() == "314572800"
    assert sandbox.run(["echo", "alive"]).output == "alive\n"


def test_two_sandboxes_from_one_snapshot_do_not_see_each_other(make_manager, sample_repo):
    manager = make_manager()
    snapshot = manager.snapshot(sample_repo)
    first, second = manager.create(snapshot), manager.create(snapshot)
    first.write_file("calc.py", b"first\n")
    first.run(["sh", "-c", "echo one > /tmp/mine"])
    second.write_file("only-second.txt", b"2\n")
    assert b"def add(a, b)" in second.read_file("calc.py")
    assert first.read_file("only-second.txt") is None
    assert second.run(["cat", "/tmp/mine"]).exit_code != 0
    assert first.commit("first") and second.commit("second")
    assert diff_of(first) != diff_of(second)


def test_destroy_leaves_nothing_behind(make_manager, sample_repo, backend, request):
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo))
    sandbox.run(["sh", "-c", "echo x > file.txt"])
    if backend == "docker":
        client, container = request.getfixturevalue("docker_engine"), sandbox.backend.container.id
        directory = sandbox.backend.directory
        assert directory.exists() and str(directory) in Path("/proc/self/mountinfo").read_text()
        manager.destroy(sandbox.id)
        assert not client.containers.list(ignore_removed=True, all=True, filters={"id": container})
        assert not directory.exists()
        assert str(directory) not in Path("/proc/self/mountinfo").read_text()
    else:
        directory, pid = sandbox.backend.directory, sandbox.backend.pid
        cgroups = sandbox.backend.cgroups.dirs if sandbox.backend.cgroups else []
        assert pid and host_processes_mentioning(str(directory)) and all(c.exists() for c in cgroups)
        manager.destroy(sandbox.id)
        assert not directory.exists() and not any(c.exists() for c in cgroups)
        assert wait_until(lambda: not host_processes_mentioning(str(directory)))
        assert not list((directory.parent).iterdir())
    assert manager.list() == []


def test_a_sandbox_outlives_the_thread_that_created_it(make_manager, sample_repo):
    manager = make_manager()
    snapshot = manager.snapshot(sample_repo)
    made = []
    creator = threading.Thread(target=lambda: made.append(manager.create(snapshot)))
    creator.start()
    creator.join()
    time.sleep(0.2)  # bwrap's --die-with-parent would fire here if the thread had spawned it
    assert made[0].run(["echo", "alive"]).output == "alive\n"


def test_list_shows_the_live_sandboxes_of_this_owner(make_manager, sample_repo):
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo), {"offload.task": "t1"})
    [listed] = manager.list()
    assert listed["offload.sandbox"] == sandbox.id and listed["offload.task"] == "t1"
    assert listed["status"] == "running"


# --- choosing a backend ---------------------------------------------------------------------


def test_auto_picks_docker_where_an_engine_answers(docker_engine, tmp_path):
    assert SandboxManager(SandboxConfig(backend="auto"), tmp_path).backend_name() == "docker"


def test_auto_falls_back_to_bubblewrap_without_an_engine(bubblewrap, sample_repo, tmp_path):
    manager = SandboxManager(SandboxConfig(backend="auto", docker_host="unix:///nonexistent/docker.sock"), tmp_path)
    try:
        sandbox = manager.create(manager.snapshot(sample_repo))
        assert sandbox.backend.backend == "bubblewrap"
        assert sandbox.run(["echo", "ok"]).output == "ok\n"
    finally:
        manager.close()


def test_a_backend_that_cannot_work_names_the_fix(tmp_path, monkeypatch):
    with pytest.raises(SandboxError, match="must be \"auto\", \"docker\" or \"bubblewrap\""):
        SandboxManager(SandboxConfig(backend="podman"), tmp_path).backend_name()
    with pytest.raises(SandboxError, match="no Docker engine answers.*Start it"):
        SandboxManager(SandboxConfig(backend="docker", docker_host="unix:///nonexistent/docker.sock"),
                       tmp_path).backend_name()
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(SandboxError, match="apt-get install -y bubblewrap"):
        SandboxManager(SandboxConfig(backend="bubblewrap"), tmp_path).backend_name()
    with pytest.raises(SandboxError, match="no sandbox backend works here.*Docker.*Bubblewrap.*bubblewrap"):
        SandboxManager(SandboxConfig(backend="auto", docker_host="unix:///nonexistent/docker.sock"),
                       tmp_path).backend_name()


def test_doctor_reports_each_backend_and_the_one_tasks_use(docker_engine, bubblewrap, tmp_path):
    proc = offload_cli("doctor", "--json", cwd=tmp_path)
    checks = {c["check"]: c for c in json.loads(proc.stdout)}
    assert checks["docker"]["ok"] and checks["image"]["ok"]
    assert checks["bubblewrap"]["ok"] and "a sandbox answered" in checks["bubblewrap"]["detail"]
    assert checks["sandbox"]["ok"] and "tasks run on docker" in checks["sandbox"]["detail"]
    broken = offload_cli("doctor", "--json", cwd=tmp_path, env={"OFFLOAD_SANDBOX_BACKEND": "docker",
                                                                 "OFFLOAD_SANDBOX_DOCKER_HOST": "unix:///nonexistent.sock"})
    checks = {c["check"]: c for c in json.loads(broken.stdout)}
    assert not checks["docker"]["ok"] and "dockerd" in checks["docker"]["fix"]
    assert not checks["sandbox"]["ok"] and checks["sandbox"]["fix"] and broken.returncode == 1


def test_a_code_task_runs_end_to_end_on_bubblewrap(bubblewrap, fake_model, sample_repo):
    env = {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "test-key",
           "OFFLOAD_MODEL_NAME": "fix-failing-test", "OFFLOAD_SANDBOX_BACKEND": "bubblewrap"}
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "+    return a + b" in proc.stdout and "finished" in proc.stderr
    assert "return a - b" in (sample_repo / "calc.py").read_text()  # the checkout is untouched
    task = json.loads(offload_cli("tasks", "--json", cwd=sample_repo).stdout.splitlines()[0])
    events = json.loads(offload_cli("show", task["id"], "--json", cwd=sample_repo).stdout)["events"]
    assert any(e["type"] == "sandbox" and e["backend"] == "bubblewrap" for e in events), events[:5]


def test_a_read_only_sandbox_cannot_change_its_workspace(make_manager, sample_repo):
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo), read_only=True)
    before = sandbox.read_file("calc.py")
    result = sandbox.run(["sh", "-c", "echo x >> calc.py; touch new.txt; rm -f test_calc.py; echo done"])
    assert "done" in result.output
    assert sandbox.read_file("calc.py") == before and sandbox.read_file("new.txt") is None
    assert sandbox.read_file("test_calc.py") is not None
    assert sandbox.run(["git", "status", "--porcelain"]).output.strip() == ""
    assert sandbox.run(["sh", "-c", "echo ok > /tmp/scratch && cat /tmp/scratch"]).output.strip() == "ok"


def test_only_the_workspace_tmp_and_home_are_writable(sandbox):
    result = sandbox.run(["sh", "-c", "for d in / /etc /usr /var /opt; do touch $d/offload-x 2>/dev/null && echo WROTE $d; done; "
                                      "touch /workspace/w /tmp/t /home/offload/h && echo writable"])
    assert "WROTE" not in result.output and "writable" in result.output, result.output


# --- how the workspace reaches a Docker sandbox ---------------------------------------------


def owners(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_uid, p.lstat().st_gid) for p in [root, *root.rglob("*")]}


# In a Docker sandbox: every file outside the object store is the sandbox user's; it edits, adds,
# removes and renames files and directories (in .git too), commits, reads an object file of
# another owner and has git gc delete it.
EDITS = """set -e
test "$(find . -path ./.git/objects -prune -o ! -user 1000 -print)" = ""
echo changed > calc.py && echo new > new.txt && rm test_calc.py && mkdir -p pkg/inner && mv new.txt pkg/inner/
mv pkg pkg2 && mv .git/hooks .git/hooks-renamed && rm -r .git/hooks-renamed && mkdir .git/mine
git add -A && git commit -qm x && git cat-file -p "$1$2" > /dev/null
git gc -q && test ! -e ".git/objects/$1/$2"
git status --porcelain && git log --oneline | wc -l
"""


@pytest.mark.parametrize("warm", [0, 1], ids=["cold", "warm"])
@pytest.mark.parametrize("backend", [pytest.param("docker", marks=pytest.mark.docker)], indirect=True)
def test_a_docker_workspace_is_the_cached_snapshot_shown_as_the_sandbox_users(make_manager, sample_repo, warm):
    objects = sample_repo / ".git" / "objects"
    foreign = next(p for p in sorted(objects.glob("??/*")))  # the user's, linked into the snapshot
    os.chown(foreign, 4242, 4242)
    manager = make_manager(warm=warm)
    manager.prewarm()
    assert wait_until(lambda: manager.warm_ready() == warm, timeout=60)
    snapshot = manager.snapshot(sample_repo)
    before = tree_digest(snapshot.path), owners(snapshot.path)
    sandbox = manager.create(snapshot)
    assert sandbox.warm == bool(warm)
    edited = sandbox.run(["sh", "-c", EDITS, "sh", foreign.parent.name, foreign.name])
    assert edited.exit_code == 0 and edited.output == "2\n", edited.output
    assert sandbox.read_file("pkg2/inner/new.txt") == b"new\n" and sandbox.read_file("test_calc.py") is None
    assert (tree_digest(snapshot.path), owners(snapshot.path)) == before  # written only through the overlay
    assert (foreign.stat().st_uid, foreign.exists()) == (4242, True)
    assert [p.name for p in snapshot.path.parent.iterdir() if not p.name.startswith(".")] == [snapshot.tree]
    second = manager.create(snapshot)
    assert b"def add" in second.read_file("calc.py") and second.read_file("pkg2/inner/new.txt") is None
    directory = sandbox.backend.directory
    manager.destroy(sandbox.id)
    assert str(directory) not in Path("/proc/self/mountinfo").read_text() and not directory.exists()


@pytest.mark.parametrize("backend", [pytest.param("docker", marks=pytest.mark.docker)], indirect=True)
def test_a_remote_engine_gets_the_workspace_copied_in(docker_engine, make_manager, sample_repo):
    manager = make_manager()
    snapshot = manager.snapshot(sample_repo)
    sandbox = manager.create(snapshot, local=False)
    assert sandbox.backend.directory is None
    sandbox.write_file("calc.py", b"changed\n")
    assert sandbox.commit("change") and "+changed" in diff_of(sandbox)
    reader = manager.create(snapshot, read_only=True, local=False)
    reader.run(["sh", "-c", "echo x >> calc.py; rm -f README.md"])
    assert reader.run(["git", "status", "--porcelain"]).output.strip() == ""
    assert not (manager.cache_dir / "sandboxes").exists() or not list((manager.cache_dir / "sandboxes").iterdir())
    assert "engine is remote" in docker_backend.overlay_problem(docker_engine, local=False)
    assert docker_backend.overlay_problem(docker_engine) is None  # root, on this machine's socket


@pytest.mark.parametrize("backend", [pytest.param("docker", marks=pytest.mark.docker)], indirect=True)
def test_on_a_kernel_before_idmapped_overlays_the_workspace_is_copied_in(docker_engine, make_manager, sample_repo,
                                                                         monkeypatch):
    real = os.uname()
    older = types.SimpleNamespace(sysname=real.sysname, nodename=real.nodename, release="5.15.0-91-generic",
                                  version=real.version, machine=real.machine)  # Ubuntu 22.04's kernel
    monkeypatch.setattr(os, "uname", lambda: older)
    assert "needs Linux 5.19 or later (this is 5.15.0-91-generic)" in docker_backend.overlay_problem(docker_engine)
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo))
    assert sandbox.backend.directory is None  # the copy, as a remote engine gets: it still works
    sandbox.write_file("calc.py", b"changed\n")
    assert sandbox.commit("change") and "+changed" in diff_of(sandbox)


def test_a_cache_path_an_overlay_cannot_take_is_refused_and_leaves_nothing(backend, sample_repo, tmp_path):
    """Bubblewrap's overlay options reach the snapshot through the cache's path, which must then hold
    no `,`; Docker's name only directories of the sandbox's layer, so any cache path serves."""
    cache = tmp_path / "odd,cache"
    manager = SandboxManager(SandboxConfig(backend=backend), cache, owner=f"offload-test-{uuid.uuid4().hex[:8]}")
    if backend == "docker":
        sandbox = manager.create(manager.snapshot(sample_repo))
        assert sandbox.read_file("calc.py") == (sample_repo / "calc.py").read_bytes()
        manager.destroy(sandbox.id)
    else:
        with pytest.raises(SandboxError, match="overlayfs cannot take.*XDG_CACHE_HOME"):
            manager.create(manager.snapshot(sample_repo))
    assert not list((cache / "sandboxes").glob("*")) and str(cache) not in Path("/proc/self/mountinfo").read_text()
    assert manager.list() == []


def test_a_runner_that_cannot_start_is_named_with_how_its_exec_ended(docker_engine):
    """No `python3` on the container's PATH: the exec ends at once and the error says how, after
    one more try only when the exec said nothing."""
    from offload.sandbox.image import DEFAULT_IMAGE
    container = docker_engine.containers.run(DEFAULT_IMAGE, ["/bin/sleep", "60"], detach=True, init=True,
                                             environment={"PATH": "/nowhere"},
                                             labels={"offload.test": "runner-cannot-start"})
    try:
        with pytest.raises(SandboxError, match=r"the sandbox runner did not start: .*exit code 12[67]; "
                                               r"the container is running"):
            docker_backend._start_runner(docker_engine, container)
    finally:
        container.remove(force=True)
