"""The sandbox holds the repository's history: the user's commits, tags and branches, by hard
links to their object store (as `git clone --local` makes them), which the sandbox can read but
never change. Both backends, through the real `offload run` where a task is involved."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tests.conftest import git, make_repo, offload_cli
from tests.test_return_path import backend, run_script  # noqa: F401 (a fixture)
from tests.test_sandbox_backends import make_manager  # noqa: F401 (a fixture)

PROBE = "git describe --tags > described.txt; git log --format=%s > log.txt; git tag > tags.txt; " \
        "git branch -r > branches.txt; git blame -s calc.py > blamed.txt"


def history_repo(path: Path) -> Path:
    repo = make_repo(path)
    for n in range(3):
        (repo / "calc.py").write_text((repo / "calc.py").read_text() + f"# step {n}\n")
        git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-qam", f"step {n}")
    git(repo, "tag", "-a", "v1.2.0", "-m", "release")
    git(repo, "branch", "topic")
    return repo


def probed(repo: Path, fake_model, backend: str) -> dict[str, str]:
    record = run_script(repo, fake_model, backend, PROBE)
    assert record["state"] == "finished", record["reason"]
    assert offload_cli("apply", record["id"], cwd=repo).returncode == 0
    return {name: (repo / f"{name}.txt").read_text() for name in ("described", "log", "tags", "branches", "blamed")}


def test_log_blame_and_describe_see_the_users_history(backend, fake_model, tmp_path):
    repo = history_repo(tmp_path / "repo")
    seen = probed(repo, fake_model, backend)
    assert seen["described"] == "v1.2.0\n"  # nothing uncommitted: exactly what the checkout says
    assert seen["log"].split("\n")[:4] == ["step 2", "step 1", "step 0", "initial"]
    assert seen["tags"] == "v1.2.0\n" and "origin/topic" in seen["branches"] and "origin/main" in seen["branches"]
    assert len(seen["blamed"].splitlines()) == len((repo / "calc.py").read_text().splitlines())


def test_uncommitted_work_is_one_commit_on_top_of_the_users_head(backend, fake_model, tmp_path):
    repo = history_repo(tmp_path / "repo")
    (repo / "calc.py").write_text((repo / "calc.py").read_text() + "# mine, uncommitted\n")
    seen = probed(repo, fake_model, backend)
    assert seen["described"].startswith("v1.2.0-1-g")
    assert seen["log"].split("\n")[1:3] == ["step 2", "step 1"]


def test_the_sandbox_cannot_change_the_users_object_store(make_manager, tmp_path):
    repo = history_repo(tmp_path / "repo")
    objects = repo / ".git" / "objects"

    def digest() -> str:
        return hashlib.sha256(b"".join(p.read_bytes() for p in sorted(objects.rglob("*")) if p.is_file())).hexdigest()

    before = digest()
    manager = make_manager()
    sandbox = manager.create(manager.snapshot(repo))
    attack = sandbox.run(["sh", "-c", "find .git/objects -type f | while read f; do chmod u+w \"$f\"; "
                                      "echo junk >> \"$f\"; done; git gc -q --prune=now; true"])
    assert attack.exit_code == 0, attack.output
    assert digest() == before
    assert git(repo, "fsck", "--strict").strip() == "" or "dangling" in git(repo, "fsck", "--strict")
