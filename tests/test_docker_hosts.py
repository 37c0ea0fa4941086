"""Several Docker engines (`sandbox.docker_hosts`), with real extra `dockerd`s on this machine: placement
by load, an engine that dies or never answered, TLS over TCP, doctor, and a task end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time

import pytest
from offload.sandbox import hosts
from offload.sandbox.errors import SandboxError
from offload.sandbox.image import DEFAULT_IMAGE
from offload.sandbox.manager import SandboxConfig, SandboxManager
from offload.server import config as cfg

from tests.changes import changes_of
from tests.conftest import offload_cli, part_missing
from tests.engines import Dockerd, SshEngine
from tests.test_sandbox_backends import make_manager  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def engines(docker_engine):
    """Two more engines holding the sandbox image: `a` on a unix socket, `b` reached over TLS TCP with
    another host name, so it counts as remote. A failure to start them fails the tests (never a skip)."""
    started = []
    try:
        for options in ({}, {"tls": True, "hostname": "offload-elsewhere"}):
            started.append(Dockerd(**options))
            started[-1].load_image(DEFAULT_IMAGE)
        yield started
    finally:
        for engine in started:
            engine.stop()


@pytest.fixture
def tls_env(engines, monkeypatch):
    """Where `b`'s client certificates are: a directory named after the host under DOCKER_CERT_PATH."""
    monkeypatch.setenv("DOCKER_CERT_PATH", str(engines[1].root))
    return {"DOCKER_CERT_PATH": str(engines[1].root)}


@pytest.fixture
def backend(docker_engine) -> str:
    """`make_manager`'s backend here: Docker, over the engines each test names."""
    return "docker"


def containers(engine: Dockerd) -> set[str]:
    """Sandbox ids of the Offload containers on an engine, asked of the engine itself."""
    client = engine.client()
    try:
        found = client.containers.list(ignore_removed=True, all=True, filters={"label": "offload.sandbox"})
        return {c.labels["offload.sandbox"] for c in found}
    finally:
        client.close()


@pytest.mark.docker
def test_sandboxes_spread_across_engines_by_load(engines, tls_env, make_manager, sample_repo):
    a, b = engines
    urls = [a.url, b.tls_url]
    first, second = make_manager(docker_hosts=urls), make_manager(docker_hosts=urls)
    snapshot = first.snapshot(sample_repo)
    s1, s2, s3 = (first.create(snapshot) for _ in range(3))
    # equal loads go to the first engine listed; then the less loaded one
    assert [s.backend.host for s in (s1, s2, s3)] == [a.url, b.tls_url, a.url]
    assert containers(a) == {s1.id, s3.id} and containers(b) == {s2.id}
    # load counts every Offload sandbox on an engine, whichever process or owner made it
    s4 = second.create(snapshot)
    assert s4.backend.host == b.tls_url
    s5 = second.create(snapshot)
    assert s5.backend.host == a.url  # 2 and 2: the first listed again
    for sandbox in (s1, s2, s3, s4, s5):
        assert sandbox.run(["cat", "calc.py"]).output == (sample_repo / "calc.py").read_text()
        assert sandbox.run(["sh", "-c", f"echo {sandbox.id} > mine && cat mine"]).output == f"{sandbox.id}\n"
    # the TLS engine calls itself another host, so its sandboxes get a copy of the workspace, not a mount
    engine_b = hosts.engine_for(b.tls_url)
    assert not engine_b.local and hosts.engine_for(a.url).local
    assert not any(m["Destination"] == "/workspace" for m in s2.backend.container.attrs["Mounts"])
    listed = first.list()
    assert {(s["offload.sandbox"], s["host"]) for s in listed} == {(s1.id, a.url), (s2.id, b.tls_url),
                                                                    (s3.id, a.url)}
    first.close()
    second.close()
    assert first.list() == [] and not containers(a) and not containers(b)


@pytest.mark.docker
def test_a_dead_engine_fails_only_its_own_sandboxes(engines, make_manager, sample_repo):
    a = engines[0]
    doomed = Dockerd()
    try:
        doomed.load_image(DEFAULT_IMAGE)
        manager = make_manager(docker_hosts=[a.url, doomed.url])
        snapshot = manager.snapshot(sample_repo)
        on_a, lost, on_a_too = (manager.create(snapshot) for _ in range(3))
        assert [s.backend.host for s in (on_a, lost, on_a_too)] == [a.url, doomed.url, a.url]
        assert lost.run(["echo", "alive"]).output == "alive\n"

        doomed.kill()
        with pytest.raises(SandboxError) as error:
            lost.run(["echo", "still there?"])
        assert f"the Docker engine at {doomed.url} stopped answering" in str(error.value)
        assert "Other engines' sandboxes are not affected" in str(error.value)
        # the other engine's sandboxes still answer; a new sandbox goes there although it holds more
        assert on_a.run(["echo", "fine"]).output == "fine\n"
        placed = manager.create(snapshot)
        assert placed.backend.host == a.url and placed.run(["true"]).exit_code == 0
        assert {s["host"] for s in manager.list()} == {a.url}
        dead = hosts.engine_for(doomed.url)
        assert not dead.answering() and dead.error
        manager.close()  # destroying the lost sandbox is not an error
        assert not containers(a)
    finally:
        doomed.stop()


@pytest.mark.docker
def test_an_engine_that_never_answered_or_lacks_the_image_is_skipped_with_its_error(
        engines, make_manager, sample_repo, tmp_path):
    a = engines[0]
    nothing = f"unix://{tmp_path}/nothing-here.sock"
    bare = Dockerd()  # answers, but holds no image
    try:
        manager = make_manager(docker_hosts=[nothing, bare.url, a.url])
        sandbox = manager.create(manager.snapshot(sample_repo))
        assert sandbox.backend.host == a.url and sandbox.run(["echo", "ok"]).output == "ok\n"
        assert "No such file or directory" in hosts.engine_for(nothing).error
        assert f"docker save {DEFAULT_IMAGE} | docker -H {bare.url} load" in hosts.engine_for(bare.url).error

        proc = offload_cli("doctor", "--json", cwd=tmp_path,
                           env={"OFFLOAD_SANDBOX_DOCKER_HOSTS": f"{nothing}, {bare.url}, {a.url}"})
        checks = {c["check"]: c for c in json.loads(proc.stdout)}
        assert not checks[f"docker {nothing}"]["ok"] and "No such file" in checks[f"docker {nothing}"]["detail"]
        assert "remove it from sandbox.docker_hosts" in checks[f"docker {nothing}"]["fix"]
        assert checks[f"docker {bare.url}"]["ok"] and not checks[f"image {bare.url}"]["ok"]
        assert f"docker -H {bare.url} load" in checks[f"image {bare.url}"]["fix"]
        assert checks[f"docker {a.url}"]["ok"] and "local" in checks[f"docker {a.url}"]["detail"]
        assert checks[f"image {a.url}"]["ok"]
        assert checks["docker"]["ok"] and "2 of 3 engines" in checks["docker"]["detail"]
        assert checks["image"]["ok"] and "1 of the 2 engines" in checks["image"]["detail"]
        assert checks["sandbox"]["ok"] and "tasks run on docker" in checks["sandbox"]["detail"]
    finally:
        bare.stop()


def test_when_no_engine_answers_the_error_names_each(tmp_path, sample_repo):
    dead = [f"unix://{tmp_path}/first.sock", f"unix://{tmp_path}/second.sock"]
    manager = SandboxManager(SandboxConfig(backend="docker", docker_hosts=dead), tmp_path / "cache")
    with pytest.raises(SandboxError) as error:
        manager.create(manager.snapshot(sample_repo))
    message = str(error.value)
    assert "none of the Docker engines in sandbox.docker_hosts answers" in message
    assert all(f"{url}: " in message and "No such file" in message for url in dead)
    # and it stays known without asking again until the back-off ends
    assert all(hosts.engine_for(url).retry_at > time.monotonic() for url in dead)


def test_engine_urls_are_checked_where_they_arrive(tmp_path, monkeypatch):
    for bad in ("http://build:2375", "build.example.com", "ssh://", "unix://"):
        with pytest.raises(SandboxError, match="is not a Docker engine URL; use unix:///path"):
            hosts.DockerHosts([bad])
    with pytest.raises(SandboxError, match="'http://build:2375' is not a Docker engine URL"):
        SandboxManager(SandboxConfig(backend="auto", docker_hosts=["http://build:2375"]), tmp_path).backend_name()
    ssh = hosts.DockerHosts(["ssh://builder@127.0.0.1:1"]).engines[0]
    assert not ssh.answering() and ssh.error  # nothing listens there
    if importlib.util.find_spec("paramiko") is None:
        assert "pip install 'docker[ssh]'" in ssh.error
    monkeypatch.setenv("DOCKER_CERT_PATH", str(tmp_path))
    nowhere = hosts.DockerHosts(["tcp://127.0.0.1:1"]).engines[0]
    assert not nowhere.answering()
    assert f"{tmp_path}/ca.pem" in nowhere.error and f"{tmp_path}/127.0.0.1/" in nowhere.error


def test_docker_hosts_from_files_and_the_environment(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    (repo / ".offload").mkdir(parents=True)
    (repo / ".offload" / "config.toml").write_text(
        '[sandbox]\ndocker_hosts = ["unix:///run/docker.sock", "ssh://builder@build1"]\n')
    assert cfg.load_config(repo).get("sandbox.docker_hosts") == ["unix:///run/docker.sock", "ssh://builder@build1"]
    assert cfg.load_config(tmp_path).get("sandbox.docker_hosts") == []
    monkeypatch.setenv("OFFLOAD_SANDBOX_DOCKER_HOSTS", " unix:///run/docker.sock , tcp://build2:2376,")
    assert cfg.load_config(repo).get("sandbox.docker_hosts") == ["unix:///run/docker.sock", "tcp://build2:2376"]
    monkeypatch.delenv("OFFLOAD_SANDBOX_DOCKER_HOSTS")
    (repo / ".offload" / "config.toml").write_text("[sandbox]\ndocker_hosts = 2\n")
    with pytest.raises(cfg.ConfigError, match="sandbox.docker_hosts must be a list of strings"):
        cfg.load_config(repo)
    with pytest.raises(cfg.ConfigError, match="sandbox.docker_hosts must be a list of strings"):
        cfg.load_config(tmp_path, overrides={"sandbox": {"docker_hosts": ["unix:///a.sock", 7]}})


@pytest.mark.docker
def test_a_task_runs_end_to_end_on_the_listed_engines(engines, tls_env, fake_model, sample_repo):
    a, b = engines
    clients = [a.client(), b.client()]
    since = int(time.time()) - 1
    env = {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "test-key",
           "OFFLOAD_MODEL_NAME": "fix-failing-test", "OFFLOAD_SANDBOX_BACKEND": "docker",
           "OFFLOAD_SANDBOX_DOCKER_HOSTS": f"{a.url},{b.tls_url}", **tls_env}
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), env=env)
    assert proc.returncode == 0, proc.stderr
    assert "+    return a + b" in proc.stdout and "finished" in proc.stderr
    task = json.loads(offload_cli("tasks", "--json", cwd=sample_repo).stdout.splitlines()[0])
    # its sandbox was made on one of the listed engines, and is gone
    made = sum(len(list(client.events(since=since, until=int(time.time()) + 1, decode=True,
                                      filters={"type": "container", "event": "create",
                                               "label": f"offload.task={task['id']}"})))
               for client in clients)
    assert made == 1
    assert not containers(a) and not containers(b)
    for client in clients:
        client.close()


@pytest.fixture
def ssh_engine(docker_engine, monkeypatch):
    """This machine's engine behind a real sshd, reached through the ssh command."""
    if not shutil.which("sshd", path="/usr/sbin:/usr/bin"):
        part_missing("no sshd: apt-get install openssh-server (scripts/install.sh does under CI=true)")
    engine = SshEngine()
    monkeypatch.setenv("PATH", f"{engine.bin}:{os.environ['PATH']}")
    yield engine
    engine.stop()


@pytest.mark.docker
def test_an_engine_reached_over_ssh(ssh_engine, make_manager, sample_repo):
    manager = make_manager(docker_hosts=[ssh_engine.url])
    sandbox = manager.create(manager.snapshot(sample_repo))
    assert sandbox.backend.host == ssh_engine.url
    result = sandbox.run(["python3", "-m", "unittest", "-q"])
    assert result.exit_code == 1 and "FAILED" in result.output  # the sample's real failing test, over ssh
    sandbox.write_file("calc.py", sandbox.read_file("calc.py").replace(b"a - b", b"a + b"))
    assert sandbox.run(["python3", "-m", "unittest", "-q"]).exit_code == 0
    assert [c.path for c in changes_of(sandbox)] == ["calc.py"]
