"""The setup phase (`sandbox.setup`) on both backends: run once per environment with its own network
and secrets, cached for later sandboxes, never leaking into the agent phase or the task's diff."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from offload.sandbox import cache
from offload.sandbox.manager import SandboxConfig, SandboxManager
from offload.sandbox.setup import SetupError
from offload.server import config as cfg
from offload.server.tasks.manager import TaskManager
from tests.changes import changes_of, diff_of
from tests.conftest import git, host_strings, make_repo, offload_cli
from tests.test_sandbox_backends import backend  # noqa: F401 (a fixture)

# Writes into the workspace (an untracked directory), into home and, as root on Docker, into a
# system path; counts its runs in home, so a second run would show.
SCRIPT = """set -e
mkdir -p deps && echo setup > deps/lib.txt
echo run >> "$HOME/.runs"
echo home > "$HOME/.setup-home"
if [ "$(id -u)" = 0 ]; then echo tool > /usr/local/bin/setup-tool; fi
echo setup-done
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    (source / "app.py").write_text("print('app')\n")
    (source / "requirements.txt").write_text("requests==2.32.0\n")
    return make_repo(tmp_path / "repo", source)


@pytest.fixture
def managers(backend, tmp_path, request):
    """SandboxManager factory with `sandbox.setup` settings on the backend under test; at the end every
    sandbox goes, and the setup images this test's cache made."""
    made = []
    cache = tmp_path / "cache"

    def make(script: str = SCRIPT, **settings) -> SandboxManager:
        manager = SandboxManager(SandboxConfig(backend=backend, setup=script, **settings), cache,
                                 owner=f"offload-test-{uuid.uuid4().hex[:8]}")
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()
    if backend == "docker":
        remove_setup_images(request.getfixturevalue("docker_engine"), cache)


def remove_setup_images(client, cache: Path) -> None:
    """The setup images made for the keys of this cache."""
    for key in [p.name for p in (cache / "setup").glob("*") if not p.name.startswith(".")]:
        for image in client.images.list(filters={"label": f"offload.setup={key}"}):
            client.images.remove(image.id, force=True)


def create(manager: SandboxManager, repo: Path, **options):
    """A sandbox and the setup's events on the way."""
    events = []
    sandbox = manager.create(manager.snapshot(repo), on_setup=events.append, **options)
    return sandbox, events


def statuses(events: list[dict]) -> list[str]:
    return [e["status"] for e in events if "status" in e]


def output(sandbox, command: str) -> str:
    result = sandbox.run(["sh", "-c", command])
    assert result.exit_code == 0, result.output
    return result.output


def test_setup_runs_once_and_later_sandboxes_start_from_its_result(managers, repo, backend):
    manager = managers()
    first, events = create(manager, repo)
    assert statuses(events) == ["running", "ran", "stored"]
    assert "setup-done" in "".join(e.get("output", "") for e in events)
    second, events = create(manager, repo)
    assert statuses(events) == ["cached"]
    for sandbox in (first, second):
        assert output(sandbox, "cat deps/lib.txt ~/.setup-home ~/.runs") == "setup\nhome\nrun\n"  # one run
        if backend == "docker":
            assert output(sandbox, "cat /usr/local/bin/setup-tool") == "tool\n"
    # the agent phase owns what setup left, and its additions never show in the task's change
    output(second, "echo more >> deps/lib.txt && echo more >> ~/.setup-home && echo \"print('x')\" >> app.py")
    assert diff_of(second).count("diff --git") == 1 and "app.py" in diff_of(second)
    assert [c.path for c in changes_of(second)] == ["app.py"]
    assert diff_of(first) == "" and changes_of(first) == []
    assert output(first, "cat deps/lib.txt") == "setup\n"  # one sandbox's writes stay its own


def _last_used(path: Path, seconds_ago: float) -> None:
    when = time.time() - seconds_ago
    os.utime(path, (when, when))


def test_setup_results_and_snapshots_share_the_cache_bound(managers, repo, backend, tmp_path, request):
    manager = managers(SCRIPT + "head -c 3000000 /dev/urandom > deps/big.bin\n", snapshot_cache="1m")
    sandbox, events = create(manager, repo)
    (result,) = [p for p in (tmp_path / "cache" / "setup").iterdir() if not p.name.startswith(".")]
    assert int((result / cache.SIZE_FILE).read_text()) > 3_000_000  # what it costs the cache
    _last_used(result, 300)
    (repo / "app.py").write_text("print('changed')\n")
    manager.snapshot(repo)  # over the bound, but a live sandbox started from the result: it stays
    assert (result / "setup.json").exists()
    manager.destroy(sandbox.id)
    _last_used(result, 300)
    (repo / "app.py").write_text("print('changed again')\n")
    manager.snapshot(repo)  # now the least recently used entry goes
    assert not result.exists()
    again, events = create(manager, repo)
    assert statuses(events) == ["running", "ran", "stored"]  # made again, and it works
    assert output(again, "cat deps/lib.txt") == "setup\n"
    if backend == "docker":  # the engine keeps one image for the key, not the evicted one beside it
        client = request.getfixturevalue("docker_engine")
        assert len(client.images.list(filters={"label": f"offload.setup={result.name}"})) == 1


def test_a_changed_lockfile_or_script_runs_setup_again_and_newer_sources_win(managers, repo, backend):
    manager = managers()
    create(manager, repo)
    # a source file changes, and the user now tracks a file setup had made: same key, the user's file wins
    (repo / "app.py").write_text("print('changed')\n")
    (repo / "deps").mkdir()
    (repo / "deps" / "lib.txt").write_text("user\n")
    sandbox, events = create(manager, repo)
    assert statuses(events) == ["cached"]
    assert output(sandbox, "cat deps/lib.txt app.py") == "user\nprint('changed')\n"
    # a lockfile changes: setup runs again, over the new snapshot
    (repo / "requirements.txt").write_text("requests==2.32.3\n")
    sandbox, events = create(manager, repo)
    assert statuses(events) == ["running", "ran", "stored"]
    assert output(sandbox, "cat ~/.runs") == "run\n"
    # so does a changed script
    sandbox, events = create(managers(SCRIPT + "echo second > ~/.changed\n"), repo)
    assert statuses(events) == ["running", "ran", "stored"]
    assert output(sandbox, "cat ~/.changed") == "second\n"


def test_setup_may_be_a_script_file_of_the_repository(managers, tmp_path, backend):
    source = tmp_path / "with-script"
    (source / "scripts").mkdir(parents=True)
    (source / "scripts" / "setup.sh").write_text("#!/bin/sh\necho one > from-script.txt\n")
    (source / "scripts" / "setup.sh").chmod(0o755)
    repo = make_repo(tmp_path / "repo2", source)
    manager = managers("scripts/setup.sh")
    sandbox, events = create(manager, repo)
    assert statuses(events) == ["running", "ran", "stored"]
    assert output(sandbox, "cat from-script.txt") == "one\n"
    (repo / "scripts" / "setup.sh").write_text("#!/bin/sh\necho two > from-script.txt\n")
    sandbox, events = create(manager, repo)
    assert statuses(events) == ["running", "ran", "stored"]
    assert output(sandbox, "cat from-script.txt") == "two\n"


def test_concurrent_sandboxes_with_one_key_run_setup_once(managers, repo):
    manager = managers()
    snapshot = manager.snapshot(repo)
    events: list[list[dict]] = [[], []]
    sandboxes = [None, None]

    def start(i: int) -> None:
        sandboxes[i] = manager.create(snapshot, on_setup=events[i].append)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(s for e in events for s in statuses(e) if s in ("running", "cached")) == ["cached", "running"]
    for sandbox in sandboxes:
        assert output(sandbox, "cat ~/.runs deps/lib.txt") == "run\nsetup\n"


def test_a_read_only_sandbox_sees_what_setup_left(managers, repo):
    manager = managers()
    sandbox, _ = create(manager, repo, read_only=True)
    assert output(sandbox, "cat deps/lib.txt ~/.setup-home") == "setup\nhome\n"
    assert sandbox.run(["sh", "-c", "echo x > deps/lib.txt"]).exit_code != 0


@pytest.mark.docker
def test_on_an_engine_that_cannot_mount_this_host_the_image_holds_the_whole_result(docker_engine, repo, tmp_path):
    manager = SandboxManager(SandboxConfig(backend="docker", setup=SCRIPT), tmp_path / "cache", owner="offload-test-remote")
    try:
        sandbox, events = create(manager, repo, local=False)  # as for a remote engine: the workspace is copied in
        assert statuses(events) == ["running", "ran", "stored"]
        assert output(sandbox, "cat deps/lib.txt ~/.setup-home /usr/local/bin/setup-tool") == "setup\nhome\ntool\n"
        assert output(sandbox, "cat app.py") == "print('app')\n"
        assert diff_of(sandbox) == ""
        again, events = create(manager, repo, local=False)
        assert statuses(events) == ["cached"] and output(again, "cat ~/.runs") == "run\n"
    finally:
        manager.close()
        remove_setup_images(docker_engine, tmp_path / "cache")


# -- network -----------------------------------------------------------------------------------------

class _Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"hello from the host")

    def log_message(self, *args):
        pass


@pytest.fixture
def host_server():
    """A tiny HTTP server on this host (all addresses: a setup container reaches it through its
    network's gateway, a bubblewrap sandbox sharing the host's network on 127.0.0.1)."""
    server = ThreadingHTTPServer(("0.0.0.0", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def fetch_script(backend: str, port: int) -> str:
    """Python that finds the host (the default gateway on Docker), notes its address in ~/.host and
    fetches from it."""
    find = ("import socket, struct\n"
            "gw = [l.split()[2] for l in open('/proc/net/route') if l.split()[1] == '00000000'][0]\n"
            "host = socket.inet_ntoa(struct.pack('<L', int(gw, 16)))\n") if backend == "docker" else "host = '127.0.0.1'\n"
    return (f"{find}import os, urllib.request\n"
            "open(os.path.expanduser('~/.host'), 'w').write(host)\n"
            f"print(urllib.request.urlopen(f'http://{{host}}:{port}/', timeout=10).read().decode())\n")


def test_with_network_for_setup_only_setup_reaches_the_host(managers, repo, backend, host_server):
    script = fetch_script(backend, host_server)
    manager = managers(f"python3 - > fetched.txt <<'PY'\n{script}PY\n", network="setup")
    sandbox, _ = create(manager, repo)
    assert output(sandbox, "cat fetched.txt") == "hello from the host\n"
    host = output(sandbox, "cat ~/.host")
    agent = sandbox.run(["python3", "-c", f"import urllib.request; urllib.request.urlopen('http://{host}:{host_server}/', timeout=5)"])
    assert agent.exit_code != 0
    assert "unreachable" in agent.output or "refused" in agent.output, agent.output


def test_without_network_setup_cannot_reach_the_host(managers, repo, backend, host_server):
    manager = managers(f"python3 - <<'PY'\n{fetch_script(backend, host_server)}PY\n", network="off")
    with pytest.raises(SetupError, match="failed with exit code 1") as failed:
        create(manager, repo)
    assert "unreachable" in str(failed.value) or "refused" in str(failed.value) or "IndexError" in str(failed.value)


# -- secrets ----------------------------------------------------------------------------------------

TOKEN = "OFFLOAD_TEST_TOKEN"


@pytest.fixture
def secret(monkeypatch) -> str:
    value = f"tok-{uuid.uuid4().hex}"
    monkeypatch.setenv(TOKEN, value)
    return value


def test_a_secret_reaches_setup_only(managers, repo, secret):
    digest = hashlib.sha256(secret.encode()).hexdigest()
    manager = managers(f'test "$(printf %s "${TOKEN}" | sha256sum | cut -c1-64)" = {digest} && echo "using ${TOKEN}" '
                       '&& echo ok > deps-ok', setup_secrets=[TOKEN])
    sandbox, events = create(manager, repo)
    assert output(sandbox, "cat deps-ok") == "ok\n"
    logged = json.dumps(events)
    assert f"using [{TOKEN}]" in logged and secret not in logged  # its value is not even in the task's log
    environment = output(sandbox, "env")
    assert TOKEN not in environment and secret not in environment
    assert sandbox.run(["grep", "-rqF", secret, "/workspace", "/home/offload", "/tmp"]).exit_code == 1


@pytest.mark.parametrize("target", ["~/.npmrc", "deps/config"])
def test_a_setup_that_writes_a_secret_into_a_file_fails_and_caches_nothing(managers, repo, backend, secret, target,
                                                                             tmp_path):
    manager = managers(f'mkdir -p deps && echo "//registry/:_authToken=${TOKEN}" > {target}', setup_secrets=[TOKEN])
    shown = target.replace("~", "/home/offload").replace("deps/", "/workspace/deps/")
    with pytest.raises(SetupError, match=f"wrote the value of {TOKEN} .* into {shown};"):
        create(manager, repo)
    assert_nothing_cached(tmp_path / "cache", backend, manager)


@pytest.mark.docker
def test_a_secret_written_into_a_system_path_is_found_too(docker_engine, repo, secret, tmp_path):
    manager = SandboxManager(SandboxConfig(backend="docker", setup=f'echo "${TOKEN}" > /usr/local/etc/token',
                                           setup_secrets=[TOKEN]), tmp_path / "cache", owner="offload-test-system")
    with pytest.raises(SetupError, match=f"wrote the value of {TOKEN} .* into /usr/local/etc/token;"):
        create(manager, repo)
    assert_nothing_cached(tmp_path / "cache", "docker", manager)


def test_a_secret_that_is_not_set_is_a_clear_error(managers, repo, monkeypatch):
    monkeypatch.delenv(TOKEN, raising=False)
    with pytest.raises(SetupError, match=f"names {TOKEN}, which is not set"):
        create(managers("true", setup_secrets=[TOKEN]), repo)


def assert_nothing_cached(cache: Path, backend: str, manager: SandboxManager) -> None:
    assert [p.name for p in (cache / "setup").iterdir() if not p.name.startswith(".")] == []
    if backend == "docker":
        client = manager.engines().engines[0].client
        mine = {c["Labels"].get("offload.owner") for c in client.api.containers(all=True, filters={"label": "offload.setup"})}
        assert manager.owner not in mine  # no setup container left either


# What real setups leave that the cache must keep as it was: a venv (its python a symlink to the
# system's), an outward symlink, a private directory and a pipe; and the mount table setup saw.
KEEPS = """set -e
mkdir -p deps && cat /proc/self/mountinfo > deps/mounts.txt
python3 -m venv --without-pip deps/venv
ln -s /etc/hostname deps/outward && mkfifo deps/pipe
mkdir -p "$HOME/.ssh" && chmod 700 "$HOME/.ssh" && echo key > "$HOME/.ssh/id"
"""


def test_what_setup_keeps_comes_out_as_it_was_and_setup_sees_no_host_path(managers, repo, backend, tmp_path):
    sandbox, _ = create(managers(KEEPS), repo)
    mounts = output(sandbox, "cat deps/mounts.txt")
    for text in host_strings(tmp_path):
        assert text not in mounts, mounts
    assert output(sandbox, "deps/venv/bin/python -c 'import sys; print(sys.prefix)'") == "/workspace/deps/venv\n"
    assert output(sandbox, "readlink deps/outward; test -e deps/pipe || echo no pipe; stat -c %a ~/.ssh; "
                           "cat ~/.ssh/id") == "/etc/hostname\nno pipe\n700\nkey\n"


# A Docker setup is root in its container: it can put a tar of its own before the system's, whose
# archive climbs out of the directory it is unpacked in, through "..", a symlink, or a hard link.
FORGED_TAR = """set -e
cat > /usr/local/bin/tar <<'EOF'
#!/usr/bin/python3
import io, sys, tarfile
with tarfile.open(fileobj=sys.stdout.buffer, mode="w|") as tar:
    for name, kind, link in %r:
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.size = kind.encode(), link, 6 if kind == "0" else 0
        tar.addfile(info, io.BytesIO(b"pwned\\n") if kind == "0" else None)
EOF
chmod +x /usr/local/bin/tar
"""


@pytest.mark.docker
@pytest.mark.parametrize("members", [
    [("../../../../escaped", "0", "")],
    [("up", "2", "../../../.."), ("up/escaped", "0", "")],
    [("hosts", "1", "/etc/hosts"), ("hosts", "0", "")],
], ids=["dotdot", "symlink", "hardlink"])
def test_a_forged_archive_out_of_a_setup_is_refused_and_lands_nowhere(docker_engine, repo, tmp_path, members):
    manager = SandboxManager(SandboxConfig(backend="docker", setup=FORGED_TAR % (members,)), tmp_path / "cache",
                             owner=f"offload-test-{uuid.uuid4().hex[:8]}")
    hosts = Path("/etc/hosts").read_bytes()
    try:
        with pytest.raises(SetupError, match="could not be kept"):
            create(manager, repo)
        assert not list(tmp_path.rglob("escaped")) and Path("/etc/hosts").read_bytes() == hosts
        assert_nothing_cached(tmp_path / "cache", "docker", manager)
    finally:
        manager.close()


# -- failures ---------------------------------------------------------------------------------------

def test_a_failing_setup_fails_with_its_exit_code_and_output_and_caches_nothing(managers, repo, backend, tmp_path):
    manager = managers("echo first line; echo 'the last words' >&2; exit 3")
    with pytest.raises(SetupError, match="(?s)failed with exit code 3.*the last words"):
        create(manager, repo)
    assert_nothing_cached(tmp_path / "cache", backend, manager)


def test_a_hanging_setup_is_stopped_at_its_timeout(managers, repo, backend, tmp_path):
    manager = managers("echo started; sleep 600", setup_timeout=0.05)
    with pytest.raises(SetupError, match=r"(?s)did not finish within 0.05 minutes.*started"):
        create(manager, repo)
    assert_nothing_cached(tmp_path / "cache", backend, manager)


@pytest.mark.usefixtures("bubblewrap")
async def test_cancelling_a_task_stops_its_setup(fake_model, sample_repo, isolated_dirs):
    manager = TaskManager(overrides={"model": {"base_url": fake_model.base_url, "name": "fix-failing-test"},
                                     "sandbox": {"backend": "bubblewrap", "setup": "echo waiting; sleep 600"}})
    task_id = manager.submit("Make the failing test pass", sample_repo)["id"]
    for _ in range(600):
        if any(e.get("output") == "waiting\n" for e in manager.events(task_id)):
            break
        await asyncio.sleep(0.05)
    manager.cancel(task_id)
    record = await manager.wait(task_id)
    assert (record["state"], record["reason"]) == ("cancelled", "the setup script was cancelled; nothing was cached")
    assert not fake_model.requests
    setup = Path(isolated_dirs["XDG_CACHE_HOME"]) / "offload" / "setup"
    assert [p.name for p in setup.iterdir() if not p.name.startswith(".")] == []


# -- configuration ----------------------------------------------------------------------------------

def test_setup_settings_are_checked_where_they_arrive(tmp_path):
    (tmp_path / ".offload").mkdir()
    config_file = tmp_path / ".offload" / "config.toml"
    config_file.write_text('[sandbox]\nsetup = "npm ci"\nnetwork = "setup"\nsetup_secrets = ["NPM_TOKEN"]\n')
    config = cfg.load_config(tmp_path, env={"OFFLOAD_SANDBOX_SETUP_TIMEOUT": "5"})
    assert (config.get("sandbox.setup"), config.get("sandbox.network")) == ("npm ci", "setup")
    assert (config.get("sandbox.setup_secrets"), config.get("sandbox.setup_timeout")) == (["NPM_TOKEN"], 5.0)
    bad = {
        '[sandbox]\nnetwork = "yes"\n': r"sandbox.network must be one of 'off', 'setup', 'on', got 'yes' \(from .*config.toml\)",
        '[sandbox]\nsetup_secrets = ["NPM TOKEN"]\n': "'NPM TOKEN' is not an environment variable name",
        '[sandbox]\nsetup_secrets = ["OPENAI_API_KEY"]\n': "the model's API key never enters a sandbox",
        '[model]\napi_key_env = "MY_KEY"\n[sandbox]\nsetup_secrets = ["MY_KEY"]\n': "names MY_KEY: the model's API key",
        '[sandbox]\nsetup_timeout = 0\n': "setup_timeout must be a number of minutes above 0",
    }
    for text, error in bad.items():
        config_file.write_text(text)
        with pytest.raises(cfg.ConfigError, match=error):
            cfg.load_config(tmp_path, env={})


def test_doctor_reports_the_setup_and_a_secret_not_set(tmp_path):
    (tmp_path / ".offload").mkdir()
    (tmp_path / ".offload" / "config.toml").write_text(
        f'[sandbox]\nsetup = "npm ci"\nnetwork = "setup"\nsetup_secrets = ["{TOKEN}"]\n')
    for env, ok in (({}, False), ({TOKEN: "value"}, True)):
        proc = offload_cli("doctor", "--json", cwd=tmp_path, env=env)
        setup = next(r for r in json.loads(proc.stdout) if r["check"] == "setup")
        assert setup["ok"] is ok and "sandbox.setup runs with network; 0 result(s) cached" in setup["detail"]
        if not ok:
            assert f"names {TOKEN}, not set here" in setup["detail"] and setup["fix"] == f"set {TOKEN} in the environment Offload runs in"


# -- end to end ---------------------------------------------------------------------------------------

@pytest.mark.docker
def test_offload_run_with_a_setup_in_the_repository_config(docker_engine, fake_model, sample_repo):
    (sample_repo / ".offload").mkdir()
    (sample_repo / ".offload" / "config.toml").write_text(
        '[sandbox]\nsetup = "mkdir -p .deps && echo ready > .deps/marker && echo setup-output"\n')
    git(sample_repo, "add", "-A")
    git(sample_repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "setup")
    env = {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "test-key", "OFFLOAD_MODEL_NAME": "fix-failing-test"}
    images = []
    try:
        proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), "--json", env=env)
        assert proc.returncode == 0, proc.stderr
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        setup = [e for e in events if e["type"] == "setup"]
        images += [e["image"] for e in setup if "image" in e]
        assert [e["status"] for e in setup if "status" in e] == ["running", "ran", "stored"]
        assert "setup-output" in "".join(e.get("output", "") for e in setup)
        assert events[-1]["record"]["state"] == "finished"
        diff = offload_cli("diff", events[-1]["task"], cwd=sample_repo).stdout
        assert "return a + b" in diff and ".deps" not in diff
        # the next task starts from the cached result, and says so
        again = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), env=env)
        assert again.returncode == 0, again.stderr
        assert "setup: the setup's cached result is used" in again.stderr
        assert "setup: running" not in again.stderr and "return a + b" in again.stdout and ".deps" not in again.stdout
    finally:
        for image in set(images):
            docker_engine.images.remove(image, force=True)
