"""What a sandbox holds and is handed, on both backends: the default image's toolchains, the
variables of `sandbox.env`, the CA bundle of `sandbox.ca_bundle`; and a user's own image that
has neither python3 nor git."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path

import pytest

from offload.sandbox.environment import CA_PATH
from offload.sandbox.errors import SandboxError
from offload.sandbox.image import build_image, is_ours, rootfs
from offload.sandbox.manager import SandboxConfig, SandboxManager
from offload.sandbox.toolset import missing
from offload.server import config as cfg
from tests.conftest import host_strings, make_repo, offload_cli, part_missing
from tests.test_real_projects import import_busybox
from tests.test_sandbox_backends import backend  # noqa: F401 (a fixture)
from tests.test_sandbox_setup import remove_setup_images


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    source = tmp_path / "source"
    source.mkdir()
    (source / "README.md").write_text("a project\n")
    return make_repo(tmp_path / "repo", source)


@pytest.fixture
def sandbox_of(tmp_path, repo):
    """A sandbox over `repo` with these settings; all of them go at the end."""
    managers = []

    def make(backend: str, **settings):
        manager = SandboxManager(SandboxConfig(backend=backend, **settings), tmp_path / "cache",
                                 owner=f"offload-test-{uuid.uuid4().hex[:8]}")
        managers.append(manager)
        return manager.create(manager.snapshot(repo))

    yield make
    for manager in managers:
        manager.close()


def run(sandbox, script: str) -> str:
    result = sandbox.run(["sh", "-c", script])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_default_image_has_current_toolchains_and_the_common_tools(backend, sandbox_of):
    if rootfs() is None:
        part_missing("the base image's root filesystem is missing: run `offload image build`")
    sandbox = sandbox_of(backend)
    versions = run(sandbox, "python3 -c 'import sys; print(*sys.version_info[:2])'; node -p process.versions.node; "
                            "npm --version; gcc -dumpversion; g++ -dumpversion")
    python, node, npm, gcc, gxx = versions.splitlines()
    assert tuple(map(int, python.split())) >= (3, 13)
    assert int(node.split(".")[0]) >= 20 and int(npm.split(".")[0]) >= 9 and int(gcc) >= 14 and gxx == gcc
    run(sandbox, "python3 -m venv /tmp/venv && /tmp/venv/bin/pip --version && python3 -m pip --version")
    for tool in ("make", "curl", "git", "rg", "jq", "unzip", "zip", "xz", "bzip2", "file", "patch", "less", "ps",
                 "openssl", "tree", "pkg-config"):
        run(sandbox, f"command -v {tool}")
    run(sandbox, "command -v useradd")  # /usr/sbin is on PATH
    assert str(rootfs().parent) not in run(sandbox, "cat /proc/self/mountinfo")  # no host path shows
    # a C program builds and runs
    run(sandbox, "printf '#include <stdio.h>\\nint main(void){puts(\"built\");}' > /tmp/a.c && cc -o /tmp/a /tmp/a.c "
                 "&& /tmp/a | grep -x built")


def test_sandbox_env_reaches_every_command_and_setup(backend, sandbox_of):
    sandbox = sandbox_of(backend, env={"OFFLOAD_TEST_GREETING": "hello there", "NODE_ENV": "test"},
                         setup='echo "$OFFLOAD_TEST_GREETING" > seen-by-setup.txt')
    assert run(sandbox, 'echo "$OFFLOAD_TEST_GREETING/$NODE_ENV"').strip() == "hello there/test"
    assert run(sandbox, "cat seen-by-setup.txt").strip() == "hello there"


def test_sandbox_env_is_checked_where_it_is_set(tmp_path):
    assert cfg.load_config(None, env={"OFFLOAD_SANDBOX_ENV": "A=1,B=x=y"}).get("sandbox.env") == {"A": "1", "B": "x=y"}
    assert cfg.load_config(None, env={"OFFLOAD_SANDBOX_ENV": '{"A": "1"}'}).get("sandbox.env") == {"A": "1"}
    for bad in ("{not json", "A", '{"A": 1}', '{"1A": "x"}', '["A=1"]'):
        with pytest.raises(cfg.ConfigError, match="sandbox.env"):
            cfg.load_config(None, env={"OFFLOAD_SANDBOX_ENV": bad})
    repo = tmp_path / "r"
    (repo / ".offload").mkdir(parents=True)
    (repo / ".offload" / "config.toml").write_text('[sandbox.env]\nPIP_INDEX_URL = "http://pypi.internal/simple"\n')
    assert cfg.load_config(repo).get("sandbox.env") == {"PIP_INDEX_URL": "http://pypi.internal/simple"}
    with pytest.raises(cfg.ConfigError, match="not a file"):
        cfg.load_config(None, env={"OFFLOAD_SANDBOX_CA_BUNDLE": str(tmp_path / "missing.pem")})
    assert cfg.load_config(None, env={"OFFLOAD_SANDBOX_CA_BUNDLE": ""}).get("sandbox.ca_bundle") == ""


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def own_ca(tmp_path, repo) -> Path:
    """A CA of this test's own, a server certificate for localhost it signed (committed to the
    repository with its key), and a bundle of this host's CAs plus that one."""
    where = tmp_path / "pki"
    where.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=Offload Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=where)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost", cwd=where)
    (where / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
                               "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n"
                               "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext", cwd=where)
    for name in ("server.pem", "server.key"):
        (repo / name).write_bytes((where / name).read_bytes())
    bundle = where / "bundle.pem"
    bundle.write_bytes(Path(cfg.host_ca_bundle()).read_bytes() + (where / "ca.pem").read_bytes())
    return bundle


# A TLS server on the sandbox's loopback with the certificate the test's CA signed, then three
# clients that trust what the environment says: OpenSSL, Python's ssl, Node.js.
TRUST = """set -e
openssl verify server.pem
openssl s_server -quiet -www -accept 127.0.0.1:8443 -cert server.pem -key server.key >/dev/null 2>&1 &
trap 'kill $!' EXIT
for _ in $(seq 50); do python3 -c "import socket; socket.create_connection(('127.0.0.1', 8443))" 2>/dev/null && break; sleep 0.1; done
python3 -c "import urllib.request; print('python', urllib.request.urlopen('https://localhost:8443/').status)"
node -e "require('https').get('https://localhost:8443/', r => { console.log('node', r.statusCode); r.resume() })
  .on('error', e => { console.log('node', e.code); process.exit(1) })"
"""


def test_a_ca_of_ones_own_in_the_bundle_is_trusted_inside(backend, sandbox_of, own_ca):
    trusting = sandbox_of(backend, ca_bundle=str(own_ca))
    output = run(trusting, TRUST)
    assert "server.pem: OK" in output and "python 200" in output and "node 200" in output
    assert str(own_ca.parent) not in run(trusting, "cat /proc/self/mountinfo")  # bound from a copy
    assert run(trusting, "echo $SSL_CERT_FILE $REQUESTS_CA_BUNDLE $PIP_CERT $NODE_EXTRA_CA_CERTS $GIT_SSL_CAINFO"
               ).split() == [CA_PATH] * 5

    without = sandbox_of(backend, ca_bundle="")
    result = without.run(["sh", "-c", TRUST])
    assert result.exit_code != 0 and "unable to get local issuer certificate" in result.output, result.output
    assert run(without, f'echo "[$SSL_CERT_FILE]"; test ! -e {CA_PATH} && echo absent').split() == ["[]", "absent"]


@pytest.fixture
def busybox(docker_engine, tmp_path):
    name = f"offload-test-busybox:{uuid.uuid4().hex[:8]}"
    yield import_busybox(docker_engine, tmp_path / "busybox-root", name,
                         ["ENV GREETING=hello PATH=/bin", "USER 0", "WORKDIR /srv", 'ENTRYPOINT ["/bin/false"]'])
    docker_engine.images.remove(name, force=True)


@pytest.mark.docker
def test_an_image_without_python_or_git_gets_offloads_own(docker_engine, busybox, sandbox_of):
    sandbox = sandbox_of("docker", image=busybox, env={"EXTRA": "1"})
    output = run(sandbox, 'echo "$GREETING $EXTRA $PATH"; id -u; command -v python3 || echo no-python3; '
                          "git --version; git log --oneline | wc -l")
    greeting, uid, python, git_version, commits = output.splitlines()
    assert greeting == "hello 1 /bin:/opt/offload/bin"  # the image's ENV, its PATH first
    assert uid == "1000" and python == "no-python3" and git_version.startswith("git version")
    assert commits == "1"
    sandbox.write_file("made.txt", b"made\n")
    assert sandbox.commit("made a file")
    mounts = run(sandbox, "cat /proc/self/mountinfo")  # the lent tools come through the layer
    assert str(rootfs().parent) not in mounts and str(rootfs().name) not in mounts, mounts
    assert run(sandbox, "touch /opt/offload/root/x 2>&1 || echo refused").strip().endswith("refused")
    # doctor's check: nothing missing where Offload lends its tools, both named where it cannot
    assert missing(docker_engine, busybox, local=True) == []
    assert missing(docker_engine, busybox, local=False) == ["git", "python3 3.9 or newer"]


@pytest.mark.docker
def test_offload_never_builds_over_an_image_it_did_not_build(docker_engine, busybox):
    assert is_ours(docker_engine, busybox) is False
    before = docker_engine.images.get(busybox).id
    with pytest.raises(SandboxError, match="did not build"):
        build_image(docker_engine, busybox, log=lambda line: None)
    assert docker_engine.images.get(busybox).id == before


@pytest.mark.docker
def test_doctor_checks_a_users_image_by_running_it_and_never_offers_to_rebuild_it(docker_engine, busybox,
                                                                                      tmp_path):
    proc = offload_cli("doctor", "--json", env={"OFFLOAD_SANDBOX_IMAGE": busybox})
    (image,) = [c for c in json.loads(proc.stdout) if c["check"] == "image"]
    assert image["ok"] and "your own image" in image["detail"], image

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "data.txt").write_text("no shell here\n")
    subprocess.run(["tar", "-C", str(tmp_path / "empty"), "-cf", str(tmp_path / "empty.tar"), "."], check=True)
    shell_less = f"offload-test-noshell:{uuid.uuid4().hex[:8]}"
    docker_engine.api.import_image_from_file(str(tmp_path / "empty.tar"), repository=shell_less.split(":")[0],
                                             tag=shell_less.split(":")[1])
    try:
        proc = offload_cli("doctor", "--json", env={"OFFLOAD_SANDBOX_IMAGE": shell_less})
        (image,) = [c for c in json.loads(proc.stdout) if c["check"] == "image"]
        assert not image["ok"] and "lacks a POSIX shell at /bin/sh" in image["detail"], image
        assert image["fix"] == f"add a POSIX shell at /bin/sh to {shell_less}"  # never: build over it
        assert not docker_engine.containers.list(ignore_removed=True, all=True,
                                                 filters={"ancestor": shell_less})
    finally:
        docker_engine.images.remove(shell_less, force=True)


@pytest.fixture
def setup_images(docker_engine, tmp_path):
    """The setup images this test's cache made go at its end, after its sandboxes."""
    yield
    remove_setup_images(docker_engine, tmp_path / "cache")


@pytest.mark.docker
def test_setup_runs_in_an_image_with_nothing_but_a_shell(busybox, setup_images, sandbox_of, tmp_path):
    sandbox = sandbox_of("docker", image=busybox, setup='mkdir -p deps && echo made > deps/lib.txt '
                                                     '&& echo "$GREETING" > "$HOME/greeting" '
                                                     '&& cat /proc/self/mountinfo > deps/mounts.txt')
    assert run(sandbox, 'cat deps/lib.txt "$HOME/greeting"; git status --porcelain').split() == ["made", "hello"]
    mounts = run(sandbox, "cat deps/mounts.txt")  # what setup saw: the lent toolset names no path of the host's
    assert " /opt/offload/root " in mounts, mounts
    for text in [*host_strings(tmp_path), str(rootfs())]:
        assert text not in mounts, mounts


def test_image_build_without_docker_makes_bubblewraps_root_filesystem():
    if rootfs() is None:
        part_missing("the base image's root filesystem is missing: run `offload image build`")
    proc = offload_cli("image", "build", env={"OFFLOAD_SANDBOX_DOCKER_HOST": "unix:///nonexistent/docker.sock"})
    assert proc.returncode == 0, proc.stderr
    assert f"no Docker engine, so no image; the root filesystem of bubblewrap's sandboxes is up to date at {rootfs()}" \
        in proc.stdout
    proc = offload_cli("image", "build", env={"OFFLOAD_SANDBOX_DOCKER_HOST": "unix:///nonexistent/docker.sock",
                                              "OFFLOAD_SANDBOX_BACKEND": "docker"})
    assert proc.returncode != 0 and "no Docker engine answers" in proc.stderr


@pytest.mark.docker
def test_an_engine_that_cannot_bind_this_hosts_files_gets_the_ca_bundle_copied_in(docker_engine, own_ca, repo,
                                                                                    tmp_path):
    manager = SandboxManager(SandboxConfig(backend="docker", ca_bundle=str(own_ca)), tmp_path / "cache",
                             owner=f"offload-test-{uuid.uuid4().hex[:8]}")
    try:
        sandbox = manager.create(manager.snapshot(repo), local=False)  # as on a remote engine
        assert "server.pem: OK" in run(sandbox, "openssl verify server.pem")
    finally:
        manager.close()


@pytest.mark.docker
def test_a_build_removes_the_root_filesystems_of_older_recipes_only(docker_engine):
    if rootfs() is None:
        part_missing("the base image's root filesystem is missing: run `offload image build`")
    images = rootfs().parent
    older = images / "rootfs-0123456789abcdef"  # what an earlier recipe left, a GB in real life
    (older / "usr/bin").mkdir(parents=True)
    (older / "usr/bin/python3").write_text("")
    lines = []
    assert build_image(docker_engine, log=lines.append) == "up to date"
    assert not older.exists() and rootfs() is not None, lines
    assert lines == ["removing rootfs-0123456789abcdef, the root filesystem of an older recipe"]
    lines.clear()
    build_image(docker_engine, log=lines.append)  # the current ones (every flavour's) stay
    assert lines == [] and rootfs() is not None


GO = "offload-base:trixie-go"


@pytest.fixture(scope="session")
def go_flavour(docker_engine) -> str:
    """The base image's Go flavour and its root filesystem, built once (a few minutes the first time)."""
    build_image(docker_engine, GO, log=lambda line: None)
    return GO


def test_a_flavour_adds_its_toolchain_on_both_backends(backend, go_flavour, sandbox_of):
    program = 'package main\nimport "fmt"\nfunc main() { fmt.Println("hello from go") }\n'
    sandbox = sandbox_of(backend, image=go_flavour)
    sandbox.write_file("main.go", program.encode())
    assert run(sandbox, "go run main.go").strip() == "hello from go"
    assert int(run(sandbox, "node -p process.versions.node").split(".")[0]) >= 20  # the base's, as before
    lean = sandbox_of(backend)
    assert lean.run(["sh", "-c", "command -v go"]).exit_code != 0  # the default stays without it
    with pytest.raises(cfg.ConfigError, match="no flavour cobol; the flavours are go, rust, java"):
        cfg.load_config(None, env={"OFFLOAD_SANDBOX_IMAGE": "offload-base:trixie-cobol"})
