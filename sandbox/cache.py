"""The cache's bound: least recently used entries go first, never one in use.

Two kinds of entry share one bound, `sandbox.snapshot_cache`: the snapshots under
`<cache>/snapshots/` (a tree's materialisations count as one) and the setup results under
`<cache>/setup/<key>/`. Each records its size when it is made (neither changes afterwards) and
its directory's mtime is touched on every use. After a new one is made, the oldest are evicted
until the cache fits, skipping the one just made, those a live sandbox of this cache uses (its
labels name the tree or the setup), those used in the last minute (a sandbox is about to start
over them) and a setup result whose key is locked (being made or looked up). A lock file
serialises eviction with taking and loading snapshots, so a snapshot found in the cache stays
until it is used.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from . import layer, owner

SIZE_FILE = "offload-size"  # inside a materialisation's .git: its size in bytes
GRACE = 60.0  # seconds a just-used snapshot is kept whatever its age
_STALE = 3600.0  # a half-made materialisation this old was left by a process that died


@contextmanager
def locked(snapshots: Path) -> Iterator[None]:
    """Hold the cache's lock (between processes and threads alike: one open file each)."""
    snapshots.mkdir(parents=True, exist_ok=True)
    with open(snapshots / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record_size(path: Path, into: Path | None = None) -> None:
    """Write the size of the entry at `path` into `into` (by default its .git), before it is published."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if st.st_nlink == 1 or not st.st_mode & 0o170000 == 0o100000:  # linked files cost the cache nothing
                total += st.st_blocks * 512
    ((into or path / ".git") / SIZE_FILE).write_text(str(total))


def _size(size_file: Path) -> int:
    try:
        return int(size_file.read_text())
    except (OSError, ValueError):
        return 0


def _mtime(path: Path, default: float) -> float:
    """The mtime of `path`, or `default` when it is gone: a half-made materialisation is removed by
    its maker without the lock, so it may vanish between the listing and the look."""
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return default


def in_use(cache_dir: Path) -> set[str]:
    """The trees and the setup results (as `setup:<key>`) live sandboxes of this cache use."""
    live = [labels for _, labels in layer.directories(cache_dir) if not owner.dead(labels)]
    return {labels["offload.tree"] for labels in live if "offload.tree" in labels} | \
        {f"setup:{labels['offload.setup']}" for labels in live if "offload.setup" in labels}


def _setup_busy(setup: Path, key: str) -> bool:
    """Whether the setup of `key` is being made or looked up now (its lock is held)."""
    try:
        with open(setup / ".locks" / key, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(f, fcntl.LOCK_UN)
        return False
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True


def _entries(cache_dir: Path, now: float, doomed: list[Path]) -> dict[str, list[tuple[Path, Path]]]:
    """The cache's entries by name (a tree, or `setup:<key>`): their directories with their size
    files. Leftovers found on the way (a dead maker's half-made copy, an evicted one) go to `doomed`."""
    entries: dict[str, list[tuple[Path, Path]]] = {}
    for root, prefix in ((Path(cache_dir) / "snapshots", ""), (Path(cache_dir) / "setup", "setup:")):
        for entry in root.iterdir() if root.is_dir() else []:
            if entry.name.startswith(".evicted-") or \
                    prefix == "" and entry.name.startswith(".new-") and now - _mtime(entry, now) > _STALE:
                doomed.append(entry)  # a setup's unfinished results are the sweep's (setup.sweep)
            elif entry.is_dir() and not entry.name.startswith("."):
                name = prefix + (entry.name if prefix else entry.name.split(".")[0])
                size_file = entry / SIZE_FILE if prefix else entry / ".git" / SIZE_FILE
                if prefix and not size_file.exists() and (entry / "setup.json").exists():
                    record_size(entry, entry)  # a result made before results recorded their size
                entries.setdefault(name, []).append((entry, size_file))
    return entries


def evict(cache_dir: Path, limit: int, keep: str | None = None) -> list[str]:
    """Evict least recently used snapshots and setup results until the cache holds at most `limit`
    bytes; returns the names evicted (trees, and `setup:<key>`)."""
    busy, now, doomed, evicted = in_use(cache_dir), time.time(), [], []
    with locked(Path(cache_dir) / "snapshots"):
        entries = _entries(cache_dir, now, doomed)
        total = sum(_size(size_file) for paths in entries.values() for _, size_file in paths)
        used = {name: max(_mtime(path, now) for path, _ in paths) for name, paths in entries.items()}
        for name in sorted(entries, key=used.__getitem__):
            if total <= limit:
                break
            if name == keep or name in busy or now - used[name] < GRACE or \
                    name.startswith("setup:") and _setup_busy(Path(cache_dir) / "setup", name[len("setup:"):]):
                continue
            for path, size_file in entries[name]:
                total -= _size(size_file)
                gone = path.parent / f".evicted-{uuid.uuid4().hex[:8]}"
                os.rename(path, gone)  # out of sight at once; deleted outside the lock
                doomed.append(gone)
            evicted.append(name)
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return evicted
