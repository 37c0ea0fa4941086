"""The change comes home intact and safe, on both backends: what a hostile sandbox or a messy
repository does to the way back, through the real `offload run` / `diff` / `apply`.

Everything a sandbox says is attacker-controlled; a script in the task's prompt (the model
stand-in's `run-the-script` scenario) plays the attacker or the messy project.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offload.sandbox.errors import SandboxError
from offload.sandbox.result import RefusedChange
from tests.changes import changes_of
from tests.conftest import git, make_repo, offload_cli
from tests.test_sandbox_backends import backend, make_manager  # noqa: F401 (fixtures)


def run_script(repo: Path, fake_model, backend: str, script: str) -> dict:
    """A task whose model runs `script` in its sandbox; the finished task's record."""
    env = {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "test-key",
           "OFFLOAD_MODEL_NAME": "run-the-script", "OFFLOAD_SANDBOX_BACKEND": backend}
    proc = offload_cli("run", f"Run this:\n```sh\n{script}\n```\n", "--repo", str(repo), "--json", env=env,
                       timeout=900)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events and events[-1]["type"] == "result", proc.stderr
    return events[-1]["record"]


# ---- a hostile sandbox ----------------------------------------------------------------------

CRAFT = r'''
import hashlib, os, subprocess, sys, zlib
def obj(kind, body):
    data = f"{kind} {len(body)}".encode() + b"\0" + body
    oid = hashlib.sha1(data).hexdigest()
    path = f".git/objects/{oid[:2]}/{oid[2:]}"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(zlib.compress(data))
    return oid
def tree(*entries):
    return obj("tree", b"".join(m + b" " + n + b"\0" + bytes.fromhex(o) for m, n, o in entries))
name = bytes.fromhex(sys.argv[1])
payload = tree((b"100644", b"config", obj("blob", b"[core]\n\tfsmonitor = touch /tmp/pwned\n")))
root = tree((b"40000", name, payload))
head = subprocess.check_output(["git", "rev-parse", "HEAD"]).decode().strip()
commit = obj("commit", f"tree {root}\nparent {head}\nauthor a <a@a> 0 +0000\ncommitter a <a@a> 0 +0000\n\nx\n".encode())
subprocess.check_call(["git", "update-ref", "HEAD", commit])
'''

# Tree entry names git's own tools refuse to make but a sandbox can write as raw objects: the
# index entry `d/../../x` of a symlinked `d` becomes trees named "..", and the rest reach `.git`.
CRAFTED = [b"..", b".", b".git", b".GIT", b"git~1", b".g\xe2\x80\x8cit", b".git ", b""]


def test_crafted_git_objects_are_refused_whole_with_the_reason(make_manager, sample_repo):
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo))
    base = sandbox.snapshot.base
    for name in CRAFTED:
        sandbox.write_file("calc.py", b"def add(a, b):\n    return a + b\n")  # an honest change beside it
        crafted = sandbox.run(["python3", "-c", CRAFT, name.hex()])
        assert crafted.exit_code == 0, crafted.output
        with pytest.raises(SandboxError) as refused:  # the host's git refuses it, or the sandbox's own chokes
            changes_of(sandbox)
        assert isinstance(refused.value, RefusedChange) or name == b"", (name, refused.value)
        sandbox.git("reset", "-q", "--hard", base)


def test_a_submodule_in_the_change_is_refused_by_name(make_manager, sample_repo):
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(sample_repo))
    made = sandbox.run(["sh", "-c", "git init -q vendored && cd vendored && echo x > x && git add x && "
                                    "git -c user.name=a -c user.email=a@a commit -qm x"])  # a clone inside
    assert made.exit_code == 0, made.output
    with pytest.raises(RefusedChange, match="'vendored' is a submodule"):
        changes_of(sandbox)


def test_a_refused_change_fails_the_task_keeps_its_history_and_writes_nothing(backend, fake_model, sample_repo,
                                                                              isolated_dirs):
    script = f"cat > /tmp/craft.py <<'EOF'\n{CRAFT}\nEOF\nsed -i 's/a - b/a + b/' calc.py\n" \
             f"python3 /tmp/craft.py {b'..'.hex()}"
    record = run_script(sample_repo, fake_model, backend, script)
    assert record["state"] == "failed" and "refused" in record["reason"] and "hasDotdot" in record["reason"]
    shown = offload_cli("show", record["id"], "--json", cwd=sample_repo)
    assert "craft.py" in shown.stdout  # the evidence stays
    applied = offload_cli("apply", record["id"], cwd=sample_repo)
    assert applied.returncode != 0 and "return a - b" in (sample_repo / "calc.py").read_text()
    assert git(sample_repo, "status", "--porcelain") == ""
    task = Path(isolated_dirs["XDG_STATE_HOME"]) / "offload" / "tasks" / record["id"]
    assert not list(task.glob("results/*"))  # nothing of the refused pack is kept


# ---- bytes, modes and symlinks ----------------------------------------------------------------

MESSY = r"""
python3 -m venv --without-pip env && rm -f env/.gitignore  # Python 3.13's venv ignores itself; older ones do not
ln -s /etc/passwd passwd-link
ln -s calc.py calc-link.py
python3 -c "import sys; sys.stdout.buffer.write(bytes(range(256)) * 16)" > blob.bin
printf 'caf\351\n' >> latin1.txt
chmod +x tool.sh
printf '#!/bin/sh\necho hi\n' > new.sh && chmod 755 new.sh
printf 'no final newline' > tail.txt
: > empty.txt
printf 'one\r\ntwo\r\n' > crlf.txt
git mv old-name.txt new-name.txt
rm gone.txt
sed -i 's/a - b/a + b/' calc.py
"""


def messy_repo(path: Path) -> Path:
    repo = make_repo(path)
    (repo / "latin1.txt").write_bytes(b"na\xefve\n")
    (repo / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (repo / "old-name.txt").write_text("renamed\n" * 20)
    (repo / "gone.txt").write_text("bye\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "messy")
    return repo


def test_bytes_modes_and_symlinks_arrive_exactly_and_outward_symlinks_never(backend, fake_model, tmp_path):
    repo = messy_repo(tmp_path / "repo")
    record = run_script(repo, fake_model, backend, MESSY)
    assert record["state"] == "finished", record["reason"]
    diff = offload_cli("diff", record["id"], cwd=repo).stdout
    assert "Binary files /dev/null and b/blob.bin differ" in diff and "new mode 100755" in diff
    assert "rename from old-name.txt" in diff and "+/etc/passwd" in diff  # shown, though never applied

    applied = offload_cli("apply", record["id"], cwd=repo)
    assert applied.returncode == 0, applied.stderr
    assert "skipped    passwd-link" in applied.stdout and "outside the repository" in applied.stdout
    assert (repo / "blob.bin").read_bytes() == bytes(range(256)) * 16
    assert (repo / "latin1.txt").read_bytes() == b"na\xefve\ncaf\xe9\n"
    assert os.access(repo / "tool.sh", os.X_OK) and os.access(repo / "new.sh", os.X_OK)
    assert not os.access(repo / "calc.py", os.X_OK)
    assert (repo / "tail.txt").read_bytes() == b"no final newline" and (repo / "empty.txt").read_bytes() == b""
    assert (repo / "crlf.txt").read_bytes() == b"one\r\ntwo\r\n"
    assert os.readlink(repo / "calc-link.py") == "calc.py"
    assert not os.path.lexists(repo / "passwd-link") and not os.path.lexists(repo / "env" / "bin" / "python3")  # -> /usr/bin/python3
    assert (repo / "env" / "pyvenv.cfg").is_file()  # the venv's other files come back like any file
    assert not (repo / "old-name.txt").exists() and (repo / "new-name.txt").read_text() == "renamed\n" * 20
    assert not (repo / "gone.txt").exists() and "return a + b" in (repo / "calc.py").read_text()
    leftovers = [p for p in repo.rglob(".offload-*")]
    assert leftovers == []


def test_apply_never_follows_a_symlink_of_the_checkout_and_writes_all_or_nothing(backend, fake_model, tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / ".git" / "info" / "exclude").write_text("data\n")  # ignored here, not in the sandbox
    record = run_script(repo, fake_model, backend,
                        "sed -i 's/a - b/a + b/' calc.py && mkdir -p data && echo evil > data/payload && "
                        "echo new > docs")
    assert record["state"] == "finished", record["reason"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (repo / "data").symlink_to(elsewhere)  # the user's ignored data directory lives elsewhere
    refused = offload_cli("apply", record["id"], cwd=repo)
    assert refused.returncode != 0 and "data is a symlink in your checkout" in refused.stderr
    assert list(elsewhere.iterdir()) == [] and "return a - b" in (repo / "calc.py").read_text()

    (repo / "data").unlink()
    (repo / "docs").mkdir()  # a directory where the task has a file
    (repo / "docs" / "keep.md").write_text("mine\n")
    refused = offload_cli("apply", record["id"], cwd=repo)
    assert refused.returncode != 0 and "docs is a directory" in refused.stderr
    assert "return a - b" in (repo / "calc.py").read_text() and not (repo / "data").exists()

    (repo / "docs" / "keep.md").unlink()
    (repo / "docs").rmdir()
    assert offload_cli("apply", record["id"], cwd=repo).returncode == 0
    assert (repo / "data" / "payload").read_text() == "evil\n" and (repo / "docs").read_text() == "new\n"


# ---- real repositories --------------------------------------------------------------------------

def test_a_crlf_repository_applies_cleanly_with_its_line_endings(backend, fake_model, tmp_path):
    repo = make_repo(tmp_path / "repo")
    (repo / ".gitattributes").write_text("*.py text eol=crlf\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "crlf")
    for name in ("calc.py", "test_calc.py"):  # checked out again with the attribute: CRLF on disk
        (repo / name).unlink()
    git(repo, "checkout", "--", ".")
    assert b"\r\n" in (repo / "calc.py").read_bytes()
    record = run_script(repo, fake_model, backend, "sed -i 's/a - b/a + b/' calc.py")
    assert record["state"] == "finished", record["reason"]
    applied = offload_cli("apply", record["id"], cwd=repo)
    assert applied.returncode == 0, applied.stderr
    text = (repo / "calc.py").read_bytes()
    assert b"return a + b\r\n" in text and text.count(b"\n") == text.count(b"\r\n")
    assert git(repo, "status", "--porcelain") == " M calc.py\n"


def test_a_file_name_that_is_not_utf8_goes_in_and_comes_back(backend, fake_model, tmp_path):
    repo = make_repo(tmp_path / "repo")
    name = os.fsdecode(b"caf\xe9.txt")
    (repo / name).write_text("one\n")
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "latin-1 name")
    record = run_script(repo, fake_model, backend, "echo two >> caf*.txt && printf 'x\\n' > \"$(printf 'ni\\361o')\"")
    assert record["state"] == "finished", record["reason"]
    applied = subprocess.run([sys.executable, "-m", "offload.server.cli", "apply", record["id"]], cwd=repo,
                             capture_output=True)  # the names printed are not UTF-8 either
    assert applied.returncode == 0, applied.stderr
    assert (repo / name).read_text() == "one\ntwo\n" and (repo / os.fsdecode(b"ni\xf1o")).read_text() == "x\n"


# ---- no size cliffs, no half applies -----------------------------------------------------------

BIG = """
mkdir -p gen && cd gen
python3 - <<'EOF'
import os
for i in range(20000):
    d = f"d{i // 500}"
    os.makedirs(d, exist_ok=True)
    with open(f"{d}/f{i}.txt", "w") as f:
        f.write(f"file {i}\\n")
with open("big.bin", "wb") as f:
    for i in range(80):
        f.write(bytes([i]) * (1 << 20))
EOF
"""


@pytest.mark.docker
def test_a_20000_file_change_and_an_80_mb_file_arrive_whole_and_survive_a_kill_mid_apply(docker_engine, fake_model,
                                                                                         tmp_path):
    repo = make_repo(tmp_path / "repo")
    record = run_script(repo, fake_model, "docker", BIG)
    assert record["state"] == "finished", record["reason"]
    assert len(record["changes"]) == 20001
    diff = offload_cli("diff", record["id"], cwd=repo).stdout
    assert diff.count("diff --git") == 20001 and "Binary files /dev/null and b/gen/big.bin differ" in diff

    # killed in the middle of writing, the apply leaves whole files only, and the next one finishes it
    apply = subprocess.Popen([sys.executable, "-m", "offload.server.cli", "apply", record["id"]], cwd=repo,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while not any((repo / "gen").glob("d1*/.offload-*")) and apply.poll() is None:
        time.sleep(0.01)
    os.kill(apply.pid, signal.SIGKILL)
    assert apply.wait() == -signal.SIGKILL  # killed while writing, not after
    for path in (repo / "gen").rglob("f*.txt"):
        assert path.read_text() == f"file {path.stem[1:]}\n"
    finished = offload_cli("apply", record["id"], cwd=repo)
    assert finished.returncode == 0, finished.stderr
    files = list((repo / "gen").rglob("f*.txt"))
    assert len(files) == 20000 and all(p.read_text() == f"file {p.stem[1:]}\n" for p in files)
    big = (repo / "gen" / "big.bin")
    assert big.stat().st_size == 80 << 20 and stat.S_IMODE(big.stat().st_mode) & 0o111 == 0
    with open(big, "rb") as f:
        assert all(f.read(1 << 20) == bytes([i]) * (1 << 20) for i in range(80))
    assert not list(repo.rglob(".offload-*"))


def test_a_submodule_is_in_the_sandbox_and_changes_inside_it_come_back(backend, fake_model, tmp_path):
    library = make_repo(tmp_path / "library")
    (library / "lib.txt").write_text("library v1\n")
    git(library, "add", "-A")
    git(library, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "lib")
    repo = make_repo(tmp_path / "repo")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(library), "vendor/library")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "submodule")
    (repo / "vendor" / "library" / "lib.txt").write_text("library v1, with my local fix\n")  # uncommitted inside
    record = run_script(repo, fake_model, backend,
                        "grep -q 'my local fix' vendor/library/lib.txt && echo 'patched' >> vendor/library/lib.txt "
                        "&& sed -i 's/a - b/a + b/' calc.py")
    assert record["state"] == "finished", record["reason"]
    assert {c["path"] for c in record["changes"]} == {"calc.py", "vendor/library/lib.txt"}
    assert offload_cli("apply", record["id"], cwd=repo).returncode == 0
    assert (repo / "vendor" / "library" / "lib.txt").read_text() == "library v1, with my local fix\npatched\n"
    assert (repo / "vendor" / "library" / ".git").is_file()  # still the submodule's own checkout
    assert git(repo / "vendor" / "library", "status", "--porcelain") == " M lib.txt\n"
