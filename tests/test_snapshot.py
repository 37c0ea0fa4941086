"""Snapshots take the workspace as it is on disk and never change the user's repository."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from offload.sandbox.snapshot import take_snapshot
from tests.conftest import git


def repo_state(repo: Path) -> tuple:
    """Everything a snapshot must leave alone: index bytes, refs, HEAD, working tree status."""
    index = hashlib.sha256((repo / ".git" / "index").read_bytes()).hexdigest()
    refs = git(repo, "for-each-ref")
    return index, refs, git(repo, "rev-parse", "HEAD"), git(repo, "status", "--porcelain", "--untracked-files=all"),\
        git(repo, "stash", "list")


def test_snapshot_holds_uncommitted_and_untracked_but_not_ignored(sample_repo, tmp_path):
    (sample_repo / ".gitignore").write_text("build/\n*.log\n")
    (sample_repo / "calc.py").write_text((sample_repo / "calc.py").read_text() + "# edited\n")
    git(sample_repo, "add", "calc.py")  # staged
    (sample_repo / "test_calc.py").write_text((sample_repo / "test_calc.py").read_text() + "# unstaged\n")
    (sample_repo / "new.py").write_text("x = 1\n")  # untracked
    (sample_repo / "build").mkdir()
    (sample_repo / "build" / "out.bin").write_text("ignored")
    (sample_repo / "debug.log").write_text("ignored")
    (sample_repo / "README.md").unlink()  # deleted, not staged
    before = repo_state(sample_repo)

    snap = take_snapshot(sample_repo, tmp_path / "cache")

    assert repo_state(sample_repo) == before
    files = sorted(p.relative_to(snap.path).as_posix() for p in snap.path.rglob("*") if ".git" not in p.parts)
    assert files == [".gitignore", "AGENTS.md", "calc.py", "new.py", "test_calc.py"]
    assert (snap.path / "calc.py").read_text().endswith("# edited\n")
    assert (snap.path / "test_calc.py").read_text().endswith("# unstaged\n")
    # inside, a git repository at the base commit with a clean status
    assert git(snap.path, "rev-parse", "HEAD").strip() == snap.base
    assert git(snap.path, "status", "--porcelain") == ""
    assert snap.base_file("new.py") == b"x = 1\n" and snap.base_file("missing.py") is None


def test_same_tree_reuses_the_cache_and_a_subdirectory_is_remembered(sample_repo, tmp_path):
    (sample_repo / "pkg").mkdir()
    (sample_repo / "pkg" / "mod.py").write_text("y = 2\n")
    first = take_snapshot(sample_repo, tmp_path / "cache")
    second = take_snapshot(sample_repo / "pkg", tmp_path / "cache")
    assert second.path == first.path and second.base == first.base
    assert second.subdir == "pkg" and first.subdir == ""


def test_a_plain_directory_without_git_can_be_snapshotted(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("hello\n")
    snap = take_snapshot(plain, tmp_path / "cache")
    assert (snap.path / "a.txt").read_text() == "hello\n"
    assert not (plain / ".git").exists()
    assert subprocess.run(["git", "-C", str(snap.path), "status", "--porcelain"],
                          capture_output=True, text=True).stdout == ""
