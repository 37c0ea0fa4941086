"""Snapshots take the workspace as it is on disk and never change the user's repository."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from offload.sandbox import cache
from offload.sandbox.errors import SandboxError
from offload.sandbox.manager import SandboxConfig, SandboxManager
from offload.sandbox.snapshot import find_root, load_snapshot, take_snapshot
from tests.conftest import git, make_repo
from tests.test_sandbox_backends import (  # noqa: F401  (fixtures)
    backend,
    make_manager,
)


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


def test_the_repository_root_is_found_again_when_a_repository_appears_or_goes(tmp_path):
    outer = tmp_path / "outer"
    inner = outer / "libs" / "inner"
    inner.mkdir(parents=True)
    assert find_root(inner) == (inner.resolve(), False)
    git(outer, "init", "-q")
    assert find_root(inner) == (outer.resolve(), True)  # the answer kept for `inner` is no longer true
    assert find_root(inner) == (outer.resolve(), True)
    git(inner, "init", "-q")
    assert find_root(inner) == (inner.resolve(), True)
    shutil.rmtree(inner / ".git")
    shutil.rmtree(outer / ".git")
    assert find_root(inner) == (inner.resolve(), False)


def test_a_plain_directory_without_git_can_be_snapshotted(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text("hello\n")
    snap = take_snapshot(plain, tmp_path / "cache")
    assert (snap.path / "a.txt").read_text() == "hello\n"
    assert not (plain / ".git").exists()
    assert subprocess.run(["git", "-C", str(snap.path), "status", "--porcelain"],
                          capture_output=True, text=True).stdout == ""


# --- the cache's bound ----------------------------------------------------------------------


def _age(cache_dir: Path, tree: str, seconds_ago: float) -> None:
    """Make a snapshot (and any copy of it) look last used `seconds_ago`."""
    when = time.time() - seconds_ago
    for path in (cache_dir / "snapshots").glob(f"{tree}*"):
        os.utime(path, (when, when))


def _size(cache_dir: Path, tree: str) -> int:
    return sum(int((p / ".git" / cache.SIZE_FILE).read_text()) for p in (cache_dir / "snapshots").glob(f"{tree}*"))


def _new_tree(repo: Path, cache_dir: Path, n: int, limit: int | None = None):
    (repo / "version.txt").write_text(f"{n}\n" * 2000)
    return take_snapshot(repo, cache_dir, limit)


def test_the_least_recently_used_snapshot_is_evicted_first(sample_repo, tmp_path):
    cache_dir = tmp_path / "cache"
    a, b, c = (_new_tree(sample_repo, cache_dir, n) for n in range(3))
    for age, snap in zip((300, 200, 100), (a, b, c)):
        _age(cache_dir, snap.tree, age)
    load_snapshot(cache_dir, a.tree, sample_repo)  # a follow-up used `a`: now the most recent
    _age(cache_dir, a.tree, 90)
    d = _new_tree(sample_repo, cache_dir, 3)
    total = sum(_size(cache_dir, s.tree) for s in (a, b, c, d))
    e = _new_tree(sample_repo, cache_dir, 4, limit=total + _size(cache_dir, d.tree) // 2)
    assert not b.path.exists()  # the oldest went, and only it
    assert all(s.path.exists() for s in (a, c, d, e))
    with pytest.raises(SandboxError, match="no longer cached; start a new task"):
        load_snapshot(cache_dir, b.tree, sample_repo)
    left = sorted(p.name for p in (cache_dir / "snapshots").iterdir() if p.name.startswith("."))
    assert [n for n in left if not n.startswith(".last-")] == [".lock"]  # nothing half-made, the pointers only


def test_a_snapshot_just_used_is_kept_even_over_the_bound(sample_repo, tmp_path):
    cache_dir = tmp_path / "cache"
    first = _new_tree(sample_repo, cache_dir, 0)
    second = _new_tree(sample_repo, cache_dir, 1, limit=0)
    assert first.path.exists() and second.path.exists()  # `first` is within its minute; `second` is new
    _age(cache_dir, first.tree, 120)
    _new_tree(sample_repo, cache_dir, 2, limit=0)
    assert not first.path.exists() and second.path.exists()


def test_a_snapshot_a_live_sandbox_uses_survives_eviction(make_manager, sample_repo, tmp_path):
    manager = make_manager(snapshot_cache="1")  # evict all it may
    used = manager.snapshot(sample_repo)
    sandbox = manager.create(used)
    (sample_repo / "calc.py").write_text("changed\n")
    unused = manager.snapshot(sample_repo)
    for snap in (used, unused):
        _age(manager.cache_dir, snap.tree, 600)
    (sample_repo / "calc.py").write_text("changed again\n")
    newest = manager.snapshot(sample_repo)
    assert used.path.exists() and newest.path.exists() and not unused.path.exists()
    assert b"def add" in sandbox.read_file("calc.py")  # its workspace is whole
    assert sandbox.run(["git", "status", "--porcelain"]).output == ""
    manager.destroy(sandbox.id)
    _age(manager.cache_dir, used.tree, 600)
    (sample_repo / "calc.py").write_text("once more\n")
    manager.snapshot(sample_repo)
    assert not used.path.exists()  # no longer in use: evicted, its Docker copy with it
    assert not list(manager.cache_dir.glob(f"snapshots/{used.tree}*"))


TAKE = """
import sys
from offload.sandbox.snapshot import take_snapshot
snap = take_snapshot(sys.argv[1], sys.argv[2], 0)
print(snap.tree, snap.base, snap.path)
"""


def test_concurrent_snapshots_of_one_tree_with_eviction_under_way_are_safe(sample_repo, tmp_path):
    cache_dir = tmp_path / "cache"
    olds = [_new_tree(sample_repo, cache_dir, n) for n in range(4)]
    for snap in olds:
        _age(cache_dir, snap.tree, 600)
    (sample_repo / "version.txt").write_text("shared\n")
    procs = [subprocess.Popen([sys.executable, "-c", TAKE, str(sample_repo), str(cache_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda _: take_snapshot(sample_repo, cache_dir, 0), range(4)))
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    results = {tuple(out.split()) for out, _ in outputs} | {(s.tree, s.base, str(s.path)) for s in threaded}
    assert len(results) == 1
    [(tree, base, path)] = results
    assert Path(path, "version.txt").read_text() == "shared\n"
    assert git(Path(path), "status", "--porcelain") == "" and git(Path(path), "rev-parse", "HEAD").strip() == base
    assert not any(s.path.exists() for s in olds)
    assert sorted(p.name for p in (cache_dir / "snapshots").iterdir() if not p.name.startswith(".last-")) == [
        ".lock", tree]


def test_a_half_made_snapshot_removed_while_eviction_lists_the_cache_is_passed_over(sample_repo, tmp_path,
                                                                                   monkeypatch):
    """Another task's unfinished materialisation is removed by its maker without the lock; one
    listed a moment before must not fail the eviction (nor the task that triggered it)."""
    cache_dir = tmp_path / "cache"
    old = _new_tree(sample_repo, cache_dir, 0)
    _age(cache_dir, old.tree, 600)
    listing = Path.iterdir

    def listed_then_gone(path):
        yield from listing(path)
        if path.name == "snapshots":
            yield path / ".new-gone"  # listed, then removed before it is looked at
    monkeypatch.setattr(Path, "iterdir", listed_then_gone)
    newest = _new_tree(sample_repo, cache_dir, 1, limit=0)
    assert newest.path.exists() and not old.path.exists()


def test_a_malformed_cache_bound_is_refused_before_anything_is_made(sample_repo, tmp_path):
    manager = SandboxManager(SandboxConfig(snapshot_cache="lots"), tmp_path / "cache")
    with pytest.raises(SandboxError, match="not a size: 'lots'"):
        manager.snapshot(sample_repo)
    assert not (tmp_path / "cache" / "snapshots").exists()


def test_a_new_snapshot_shares_the_files_its_repository_did_not_change(sample_repo, tmp_path):
    """After an edit, the next snapshot writes only what differs; the rest are links to the last
    snapshot's files, which never change (git unlinks a file before writing it)."""
    cache_dir = tmp_path / "cache"
    first = take_snapshot(sample_repo, cache_dir)
    (sample_repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (sample_repo / "test_calc.py").unlink()
    (sample_repo / "pkg").mkdir()
    (sample_repo / "pkg" / "new.py").write_text("x = 1\n")
    second = take_snapshot(sample_repo, cache_dir)
    assert second.path != first.path
    readme = [p.name for p in first.path.iterdir() if p.is_file() and p.name not in ("calc.py", "test_calc.py")]
    assert readme and all((first.path / n).stat().st_ino == (second.path / n).stat().st_ino for n in readme)
    assert (first.path / "calc.py").stat().st_ino != (second.path / "calc.py").stat().st_ino
    assert "a - b" in (first.path / "calc.py").read_text() and "a + b" in (second.path / "calc.py").read_text()
    assert (first.path / "test_calc.py").exists() and not (second.path / "test_calc.py").exists()
    assert (second.path / "pkg" / "new.py").read_text() == "x = 1\n"
    for snap in (first, second):
        assert git(snap.path, "status", "--porcelain") == ""


def test_a_one_file_edit_costs_the_cache_its_directories_not_an_index_of_every_file(tmp_path):
    source = tmp_path / "source"
    for d in range(50):
        (source / f"pkg{d}").mkdir(parents=True)
        for f in range(100):
            (source / f"pkg{d}" / f"module_{f}.py").write_text(f"VALUE = {d * 100 + f}\n")
    repo = make_repo(tmp_path / "repo", source)
    cache_dir = tmp_path / "cache"
    first = take_snapshot(repo, cache_dir)
    index = sum(p.stat().st_size for p in (first.path / ".git").glob("*index*"))  # its 5,000 entries
    time.sleep(1.1)  # the user edits later: files a second old are no longer racily clean for git
    for n in range(3):
        (repo / "pkg3" / "module_7.py").write_text(f"VALUE = 'edited {n}'\n")
        edited = take_snapshot(repo, cache_dir)
        assert (edited.path / "pkg3" / "module_7.py").read_text() == f"VALUE = 'edited {n}'\n"
        assert git(edited.path, "status", "--porcelain") == ""  # the index agrees with the files
        grew = int((edited.path / ".git" / cache.SIZE_FILE).read_text())
        if n:  # the first may write the entries once more: the cold checkout's own were racily clean
            assert grew < index, (n, grew, index)  # the entries are shared (a split index), not written again
