"""Tasks on projects shaped like real ones, end to end from the command line, in the default image
on both backends: a Python project whose tests need a package `sandbox.setup` installs (a wheel
built here, installed offline), a Node.js project that needs node ≥ 20; and, on Docker, a task in
a user's own image that has neither python3 nor git."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.conftest import make_repo, offload_cli, part_missing
from tests.fakemodel import FakeModel, apply_patch, load_scenarios, say, scenario, shell
from tests.scenarios import report
from tests.test_sandbox_backends import BACKENDS


@scenario("check-fix-check")
def check_fix_check(req):
    """Runs the check the prompt names (a ```check block), which must fail on the project's bug and
    not for want of a tool or package; applies the prompt's ```patch block; runs the check again."""
    check = re.search(r"```check\n(.*?)\n```", req.prompt, re.S).group(1).split()
    patch = re.search(r"```patch\n(.*?)```", req.prompt, re.S).group(1)
    out = yield shell(check)
    assert "Exit code: 0\n" not in out, out
    assert not re.search(r"ModuleNotFoundError|not a function|not found|No such file", out), out
    out = yield apply_patch(patch)
    assert "Success" in out, out
    out = yield shell(check)
    status = "passed" if "Exit code: 0\n" in out else "failed"
    yield say(report(["Fixed the bug the check found."], [(" ".join(check), status, out)]))


@pytest.fixture
def model():
    with FakeModel(scenarios=load_scenarios(__name__)) as fake:
        yield fake
    assert not fake.errors, fake.errors


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    request.getfixturevalue("docker_engine" if request.param == "docker" else "bubblewrap")
    return request.param


def run_task(model, repo: Path, check: str, patch: str, **env: str):
    prompt = f"Make the check pass.\n```check\n{check}\n```\n```patch\n{patch}```\n"
    return offload_cli("run", prompt, "--repo", str(repo), "--json", env={
        "OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "test-key", "OFFLOAD_MODEL_NAME": "check-fix-check",
        **env})


def finished(proc) -> dict:
    assert proc.returncode == 0, proc.stderr + proc.stdout[-3000:]
    record = json.loads(proc.stdout.splitlines()[-1])["record"]
    assert record["state"] == "finished", record
    return record


def outputs(model) -> list[str]:
    return [m for r in model.requests for m in json.dumps(r.body).split("Exit code: ")[1:]]


def wheel(directory: Path, name: str, version: str, module: str) -> Path:
    """A pure-Python wheel holding one module, built by hand (no build tools, no network)."""
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": module,
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(text.encode())}\n" for path, text in files.items()) + f"{info}/RECORD,,\n"
    path = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name_, text in {**files, f"{info}/RECORD": record}.items():
            archive.writestr(name_, text)
    return path


PYTHON_PATCH = """*** Begin Patch
*** Update File: app.py
@@
-    return greet(name.lower())
+    return greet(name)
*** End Patch
"""


def test_a_python_project_whose_tests_need_a_package_setup_installs(backend, model, tmp_path):
    source = tmp_path / "source"
    (source / "wheels").mkdir(parents=True)
    wheel(source / "wheels", "greetlib", "1.0", "def greet(name):\n    return f'Hello, {name}!'\n")
    (source / "app.py").write_text("from greetlib import greet\n\n\ndef welcome(name):\n    return greet(name.lower())\n")
    (source / "test_app.py").write_text("import unittest\n\nfrom app import welcome\n\n\nclass AppTest(unittest.TestCase):\n"
                                        "    def test_welcome(self):\n        self.assertEqual(welcome('Ada'), 'Hello, Ada!')\n")
    (source / "AGENTS.md").write_text("## Checks\n- `python3 -m unittest -q` — all tests must pass.\n")
    repo = make_repo(tmp_path / "repo", source)

    proc = run_task(model, repo, "python3 -m unittest -q", PYTHON_PATCH, OFFLOAD_SANDBOX_BACKEND=backend,
                    OFFLOAD_SANDBOX_SETUP="python3 -m pip install --no-index --find-links wheels greetlib")

    finished(proc)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    assert any("Successfully installed greetlib-1.0" in json.dumps(e) for e in events if e.get("type") == "setup")
    runs = outputs(model)
    assert any(o.startswith("1") and "AssertionError" in o and "Hello, ada!" in o for o in runs)
    assert any(o.startswith("0") and "OK" in o for o in runs)


NODE_PATCH = """*** Begin Patch
*** Update File: rank.js
@@
-  return scores.toSorted((a, b) => a - b);
+  return scores.toSorted((a, b) => b - a);
*** End Patch
"""


def test_a_node_project_that_needs_node_20(backend, model, tmp_path):
    source = tmp_path / "source"
    (source / "test").mkdir(parents=True)
    (source / "package.json").write_text(json.dumps({
        "name": "rank", "version": "1.0.0", "type": "module", "engines": {"node": ">=20"},
        "scripts": {"test": "node --test"}}))
    # Array.prototype.toSorted and import.meta.dirname came with Node.js 20
    (source / "rank.js").write_text("export function ranked(scores) {\n  return scores.toSorted((a, b) => a - b);\n}\n"
                                    "export const here = import.meta.dirname;\n")
    (source / "test" / "rank.test.js").write_text(
        "import { test } from 'node:test';\nimport assert from 'node:assert/strict';\n"
        "import { ranked, here } from '../rank.js';\n\n"
        "test('best first', () => assert.deepEqual(ranked([1, 3, 2]), [3, 2, 1]));\n"
        "test('knows where it is', () => assert.ok(here.endsWith('/workspace')));\n")
    (source / "AGENTS.md").write_text("## Checks\n- `npm test` — all tests must pass.\n")
    repo = make_repo(tmp_path / "repo", source)

    finished(run_task(model, repo, "npm test", NODE_PATCH, OFFLOAD_SANDBOX_BACKEND=backend))

    runs = outputs(model)
    assert any(o.startswith("1") and "# fail 1" in o for o in runs)
    assert any(o.startswith("0") and "# pass 2" in o for o in runs)


@pytest.fixture
def busybox_image(docker_engine, tmp_path):
    """A user's image with a POSIX shell and nothing else: busybox, static, from Debian's
    busybox-static package; its ENV names a variable of its own."""
    yield import_busybox(docker_engine, tmp_path / "busybox-root", "offload-test-busybox:e2e", ["ENV GREETING=hello"])
    docker_engine.images.remove("offload-test-busybox:e2e", force=True)


def import_busybox(client, root: Path, name: str, changes: list[str]) -> str:
    busybox = Path("/bin/busybox")
    if not busybox.exists():
        part_missing("/bin/busybox is missing: apt-get install -y busybox-static")
    (root / "bin").mkdir(parents=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    applets = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            (root / "bin" / applet).symlink_to("busybox")
    tarball = root.parent / f"{root.name}.tar"
    subprocess.run(["tar", "-C", str(root), "-cf", str(tarball), "."], check=True)
    repository, _, tag = name.partition(":")
    client.api.import_image_from_file(str(tarball), repository=repository, tag=tag, changes=changes)
    return name


SHELL_PATCH = """*** Begin Patch
*** Update File: greeting.txt
@@
-helo
+hello
*** End Patch
"""


@pytest.mark.docker
def test_a_task_in_an_image_without_python_or_git(busybox_image, model, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    (source / "greeting.txt").write_text("helo\n")
    (source / "check.sh").write_text('test "$(cat greeting.txt)" = "$GREETING"\n')
    repo = make_repo(tmp_path / "repo", source)

    record = finished(run_task(model, repo, "sh check.sh", SHELL_PATCH, OFFLOAD_SANDBOX_BACKEND="docker",
                               OFFLOAD_SANDBOX_IMAGE=busybox_image))

    assert [c["path"] for c in record["changes"]] == ["greeting.txt"]
    diff = offload_cli("diff", record["id"], cwd=repo)
    assert "-helo\n+hello" in diff.stdout, diff.stderr
