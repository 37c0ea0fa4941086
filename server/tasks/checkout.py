"""Writing an accepted change into the user's checkout: never outside it, never half of it.

Every path is walked from the repository root one directory at a time through file descriptors
opened with O_NOFOLLOW, so a symlink in the checkout (an ignored `data -> /elsewhere`) is never
followed: writing through it is a clash, reported before anything is written. Nothing is
written into `.git`. Each file is written whole beside its target and renamed over it (mode
kept), and a multi-file apply is journalled: the journal is written before the first temporary
file and says which phase the apply reached, so an apply killed at any instant is finished (or,
before its files were all written, undone) by the next one — the checkout never keeps a
truncated file.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import stat
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO


class CheckoutError(Exception):
    """A path of the change cannot be written safely (a symlink or a file in its way)."""


@dataclass(frozen=True)
class Entry:
    """What a path holds: a file (its bytes and permission bits) or a symlink (its target).
    `source`, when given, writes a large file's bytes instead of `data`."""

    data: bytes
    mode: int = 0o644
    symlink: bool = False
    source: Callable[[BinaryIO], None] | None = None

    def digest(self) -> str:
        return hashlib.sha256((b"l" if self.symlink else b"f") + self.data).hexdigest()


@dataclass(frozen=True)
class Write:
    """One path's new state (None: delete it) and the state it must still be in when written."""

    path: str
    entry: Entry | None
    expect: str | None  # Entry.digest() of the current entry, None when absent


def _parts(path: str) -> list[str]:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) \
            or any(p.lower() == ".git" for p in parts):
        raise CheckoutError(f"{path!r} is not a path Offload writes into a checkout")
    return parts


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KEEP_DIRS = 256  # directory descriptors kept open for the next path (well under any fd limit)


class Checkout:
    """The user's checkout at `root`, read and written without following symlinks. Directory
    descriptors are kept while it is open (`with Checkout(root) as c:`): 20,000 paths cost a
    few hundred opens, not 100,000."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._dirs: OrderedDict[tuple[str, ...], int] = OrderedDict()

    def __enter__(self) -> Checkout:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        while self._dirs:
            os.close(self._dirs.popitem()[1])

    def _dir(self, parts: tuple[str, ...], create: bool = False) -> int | None:
        """The directory `parts` below the root as a descriptor the cache owns; None when it is
        missing (and not `create`). A component that is a symlink or a file raises CheckoutError."""
        if parts in self._dirs:
            self._dirs.move_to_end(parts)
            return self._dirs[parts]
        if not parts:
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            parent = self._dir(parts[:-1], create)
            if parent is None:
                return None
            try:
                try:
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
                except FileNotFoundError:
                    if not create:
                        return None
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(parts[-1], 0o777, dir_fd=parent)
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent)
            except OSError as e:
                if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                kind = "a symlink" if stat.S_ISLNK(os.lstat(parts[-1], dir_fd=parent).st_mode) else "a file"
                raise CheckoutError(f"{'/'.join(parts)} is {kind} in your checkout; "
                                    "Offload does not write through it") from None
        self._dirs[parts] = fd
        while len(self._dirs) > _KEEP_DIRS:
            os.close(self._dirs.popitem(last=False)[1])
        return fd

    def _forget(self, parts: tuple[str, ...]) -> None:
        if (fd := self._dirs.pop(parts, None)) is not None:
            os.close(fd)

    def read(self, path: str) -> Entry | None:
        """What `path` holds now; None when absent; CheckoutError when it is a directory or
        lies behind a symlink."""
        *dirs, name = _parts(path)
        fd = self._dir(tuple(dirs))
        if fd is None:
            return None
        try:
            st = os.lstat(name, dir_fd=fd)
        except FileNotFoundError:
            return None
        if stat.S_ISLNK(st.st_mode):
            return Entry(os.fsencode(os.readlink(name, dir_fd=fd)), symlink=True)
        if not stat.S_ISREG(st.st_mode):
            raise CheckoutError(f"{path} is a {'directory' if stat.S_ISDIR(st.st_mode) else 'special file'} "
                                "in your checkout; the task has a file there")
        file = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        with open(file, "rb") as f:
            return Entry(f.read(), stat.S_IMODE(os.fstat(f.fileno()).st_mode))

    def apply(self, writes: list[Write], journal: Path) -> None:
        """Write every path or none: temporary files first (after the journal names them), then
        renames. A path whose state moved since it was planned stops the apply before any rename."""
        with _locked(journal):
            self._recover(journal)
            tag = uuid.uuid4().hex[:12]
            entries = [{"path": w.path, "tmp": f".offload-{tag}-{n}" if w.entry else None, "expect": w.expect}
                       for n, w in enumerate(writes)]
            _save(journal, {"phase": "writing", "entries": entries})
            for w, e in zip(writes, entries):
                if _digest(self.read(w.path)) != w.expect:
                    self._undo(entries)
                    journal.unlink()
                    raise CheckoutError(f"{w.path} changed while the change was being applied; nothing was applied")
                if w.entry is not None:
                    self._write_tmp(w.path, e["tmp"], w.entry)
            _syncfs(self._dir(()))  # every temporary file on disk before the journal lets renames begin
            _save(journal, {"phase": "renaming", "entries": entries})
            self._rename(entries)
            journal.unlink()

    def recover(self, journal: Path) -> list[str]:
        """Finish (or undo) an apply that was killed; the paths it could not finish, with why."""
        with _locked(journal):
            return self._recover(journal)

    def _recover(self, journal: Path) -> list[str]:
        try:
            state = json.loads(journal.read_text())
        except FileNotFoundError:
            return []
        except ValueError:  # killed while the journal itself was written: no temporary file exists yet
            journal.unlink()
            return []
        if state["phase"] == "writing":
            self._undo(state["entries"])
            skipped = []
        else:
            skipped = self._rename(state["entries"])
        journal.unlink()
        return skipped

    def _write_tmp(self, path: str, tmp: str, entry: Entry) -> None:
        *dirs, _ = _parts(path)
        fd = self._dir(tuple(dirs), create=True)
        if entry.symlink:
            os.symlink(os.fsdecode(entry.data), tmp, dir_fd=fd)
            return
        file = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=fd)
        with open(file, "wb") as f:
            if entry.source is not None:
                entry.source(f)
            else:
                f.write(entry.data)
            os.fchmod(f.fileno(), entry.mode)

    def _rename(self, entries: list[dict]) -> list[str]:
        """Put every temporary file in place (or delete); a path the user changed since is left
        as it is and named."""
        skipped = []
        for e in entries:
            *dirs, name = _parts(e["path"])
            try:
                fd = self._dir(tuple(dirs))
            except CheckoutError as err:
                skipped.append(f"{e['path']}: {err}")
                continue
            if fd is None:
                if e["expect"] is not None:
                    skipped.append(f"{e['path']}: its directory is gone")
                continue
            current = _digest(self.read(e["path"]))
            if e["tmp"] is not None and not _exists(fd, e["tmp"]) or e["tmp"] is None and current is None:
                continue  # done before the kill
            if current != e["expect"]:
                skipped.append(f"{e['path']}: you changed it after the apply was interrupted")
                if e["tmp"] is not None:
                    os.unlink(e["tmp"], dir_fd=fd)
                continue
            if e["tmp"] is not None:
                os.rename(e["tmp"], name, src_dir_fd=fd, dst_dir_fd=fd)
            elif current is not None:
                os.unlink(name, dir_fd=fd)
                self._prune(tuple(dirs))
        return skipped

    def _undo(self, entries: list[dict]) -> None:
        for e in entries:
            if e["tmp"] is None:
                continue
            *dirs, _ = _parts(e["path"])
            with contextlib.suppress(CheckoutError, OSError):
                if (fd := self._dir(tuple(dirs))) is not None:
                    os.unlink(e["tmp"], dir_fd=fd)

    def _prune(self, dirs: tuple[str, ...]) -> None:
        """Remove the directories a deletion left empty, deepest first, as git does."""
        while dirs:
            parent = self._dir(dirs[:-1])
            if parent is None:
                return
            try:
                os.rmdir(dirs[-1], dir_fd=parent)
            except OSError:
                return
            self._forget(dirs)
            dirs = dirs[:-1]


def _digest(entry: Entry | None) -> str | None:
    return None if entry is None else entry.digest()


def _exists(fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=fd)
        return True
    except FileNotFoundError:
        return False


def _syncfs(fd: int) -> None:
    """Flush the checkout's filesystem once (one fsync per file costs minutes on 20,000 files)."""
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) == 0:
            return
    except (OSError, AttributeError):
        pass
    os.sync()


def _save(journal: Path, state: dict) -> None:
    tmp = journal.with_name(f".{journal.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, journal)


@contextlib.contextmanager
def _locked(journal: Path):
    """One apply of a task at a time, across processes (the CLI and an editor's server)."""
    journal.parent.mkdir(parents=True, exist_ok=True)
    with open(journal.with_name(f".{journal.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
