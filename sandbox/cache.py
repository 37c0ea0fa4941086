"""The snapshot cache's bound: least recently used snapshots go first, never one in use.

Each materialisation under `<cache>/snapshots/` records its size when it is made (a snapshot
never changes afterwards), and its directory's mtime is touched on every use. After a new one
is made, the oldest are evicted until the cache fits `sandbox.snapshot_cache`, skipping the one
just made, those a live sandbox of this cache uses (its labels name the tree) and those used in
the last minute (a sandbox is about to start over them). A lock file serialises eviction with
taking and loading snapshots, so a snapshot found in the cache stays until it is used.
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


def record_size(path: Path) -> None:
    """Write the size of the materialisation at `path` into it (before it is published)."""
    total = 0
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if st.st_nlink == 1 or not st.st_mode & 0o170000 == 0o100000:  # linked files cost the cache nothing
                total += st.st_blocks * 512
    (path / ".git" / SIZE_FILE).write_text(str(total))


def _size(path: Path) -> int:
    try:
        return int((path / ".git" / SIZE_FILE).read_text())
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
    """The trees live sandboxes of this cache were started over."""
    return {labels["offload.tree"] for _, labels in layer.directories(cache_dir)
            if "offload.tree" in labels and not owner.dead(labels)}


def evict(cache_dir: Path, limit: int, keep: str | None = None) -> list[str]:
    """Evict least recently used snapshots until the cache holds at most `limit` bytes; returns
    the trees evicted."""
    snapshots = Path(cache_dir) / "snapshots"
    busy, now, doomed, evicted = in_use(cache_dir), time.time(), [], []
    with locked(snapshots):
        groups: dict[str, list[Path]] = {}
        for entry in snapshots.iterdir():
            if entry.name.startswith(".new-") and now - _mtime(entry, now) > _STALE or \
                    entry.name.startswith(".evicted-"):
                doomed.append(entry)
            elif entry.is_dir() and not entry.name.startswith("."):
                groups.setdefault(entry.name.split(".")[0], []).append(entry)
        total = sum(_size(p) for paths in groups.values() for p in paths)
        by_age = sorted(groups, key=lambda tree: max(p.stat().st_mtime for p in groups[tree]))
        for tree in by_age:
            if total <= limit:
                break
            if tree == keep or tree in busy or now - max(p.stat().st_mtime for p in groups[tree]) < GRACE:
                continue
            for path in groups[tree]:
                total -= _size(path)
                gone = snapshots / f".evicted-{uuid.uuid4().hex[:8]}"
                os.rename(path, gone)  # out of sight at once; deleted outside the lock
                doomed.append(gone)
            evicted.append(tree)
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return evicted
