"""A sandbox's change, brought home as git objects and checked before anything reads it.

Everything that comes out of a sandbox is attacker-controlled. So the change does not travel as
paths and bytes relayed by the runner: git in the sandbox writes a pack of the commits made on
top of the base, the host's own git indexes it with `--strict` (git's fsck: no `.`, `..`, empty
or `.git` names in any spelling git knows, sane modes, well-formed objects) into a bare
repository of the task's, and every entry of the diff is checked again here (no gitlinks, no
paths into `.git`). Only then are the changed files listed, each by its blob ids and modes; their
bytes are read from that repository on demand, exactly, whatever their size or encoding.

The result repository is self-contained for what review and apply need: while indexing it
borrows the snapshot's objects (an alternate), then copies in the base side of every changed path
(the trees along it and its blob) and drops the alternate, so an evicted snapshot breaks nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import SandboxError

ZERO = re.compile(r"^0+$")
OID = re.compile(r"^[0-9a-f]{40}([0-9a-f]{24})?$")
FILE, EXECUTABLE, SYMLINK, TREE, GITLINK = "100644", "100755", "120000", "040000", "160000"
BLOB_MODES = (FILE, EXECUTABLE, SYMLINK)
LARGE = 4 << 20  # bytes: a larger file is reviewed whole, as a binary one is
# Characters HFS+ ignores in names: ".g\u200cit" is ".git" there (git's fsck knows them too).
_HFS_IGNORED = dict.fromkeys([*range(0x200C, 0x2010), *range(0x202A, 0x202F), *range(0x206A, 0x2070), 0xFEFF])


class RefusedChange(SandboxError):
    """The sandbox's change failed validation; nothing of it may be used."""


@dataclass(eq=False)
class ChangedFile:
    """One changed path of a task's result: both sides by blob id and mode (None when absent).
    `base` and `result` read the bytes from the result repository — as the user's checkout would
    have them when `worktree` is its git work tree (line endings, filters: .gitattributes and
    core.autocrlf honoured), else exactly as git stores them."""

    path: str  # os.fsdecode of git's bytes: a name that is not UTF-8 round-trips to the same bytes
    status: str  # "added" | "modified" | "deleted"
    base_mode: str | None = None
    result_mode: str | None = None
    base_oid: str | None = None
    result_oid: str | None = None
    repo: Path | None = None
    worktree: Path | None = None
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def base(self) -> bytes | None:
        return self._blob(self.base_oid)

    @property
    def result(self) -> bytes | None:
        return self._blob(self.result_oid)

    @property
    def symlink(self) -> bool:
        return SYMLINK in (self.base_mode, self.result_mode)

    @property
    def binary(self) -> bool:
        """As git decides: a NUL byte in the first 8000 bytes of either side."""
        return any(b"\0" in self._info(oid)[1] for oid in (self.base_oid, self.result_oid) if oid)

    @property
    def large(self) -> bool:
        """Too large to review line by line (LARGE bytes): taken or left whole, never held twice."""
        return any(self._info(oid)[0] > LARGE for oid in (self.base_oid, self.result_oid) if oid)

    def _info(self, oid: str) -> tuple[int, bytes]:
        """A blob's size and first 8000 bytes, read without holding the rest."""
        key = ("info", oid)
        if key not in self._cache:
            head = _Head()
            _reader(self.repo, None).read(oid, "", head)
            self._cache[key] = head.size, bytes(head.data)
        return self._cache[key]

    def _blob(self, oid: str | None) -> bytes | None:
        if oid is None:
            return None
        if oid not in self._cache:
            if len(self._cache) >= 6:  # both sides and their heads at most: big files stay bounded
                self._cache.clear()
            filtered = self.worktree if not self.symlink else None
            self._cache[oid] = read_blob(self.repo, oid, self.path, filtered)
        return self._cache[oid]

    def copy_result(self, out: BinaryIO) -> None:
        """Stream the result's bytes (as `result` has them) into `out`, without holding them."""
        _reader(self.repo, None if self.symlink else self.worktree).read(self.result_oid, self.path, out)

    def as_dict(self) -> dict:
        return {"path": self.path, "status": self.status, "base_mode": self.base_mode,
                "result_mode": self.result_mode, "base_oid": self.base_oid, "result_oid": self.result_oid}


def _git(repo: Path, *args: str, stdin=None, input: bytes | None = None, env: dict | None = None,
         check: str | None = None) -> bytes:
    proc = subprocess.run(["git", "-C", str(repo), *args], input=input, stdin=stdin, capture_output=True,
                          env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", **(env or {})})
    if proc.returncode != 0:
        raise (RefusedChange if check == "refuse" else SandboxError)(
            f"{check if check and check != 'refuse' else 'git ' + args[0]} failed: "
            f"{proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def read_blob(repo: Path, oid: str, path: str | None = None, worktree: Path | None = None) -> bytes:
    """A blob of `repo`; with `worktree`, as a checkout of that work tree would write it at `path`."""
    return _reader(repo, worktree).read(oid, path or "")


class _Head:
    """A sink that keeps a stream's first bytes and counts the rest."""

    def __init__(self, keep: int = 8000) -> None:
        self.data, self.size, self.keep = bytearray(), 0, keep

    def write(self, chunk: bytes) -> None:
        if len(self.data) < self.keep:
            self.data += chunk[: self.keep - len(self.data)]
        self.size += len(chunk)


class _BlobReader:
    """One `git cat-file --batch` process reading many blobs: a process per file would cost
    minutes on a 20,000-file change. With a work tree, a file whose attributes or config ask for
    a conversion (line endings, a filter, an encoding) is read through git's own checkout
    conversion there (`cat-file --filters`, LFS pointers kept as pointers), the rest as stored."""

    ATTRIBUTES = ("text", "eol", "filter", "ident", "working-tree-encoding")

    def __init__(self, repo: Path, worktree: Path | None) -> None:
        self.repo, self.worktree = repo, worktree
        self.proc = subprocess.Popen(["git", "-C", str(repo), "cat-file", "--batch"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()
        self.attributes = None
        self.convert_all = False
        self.known: dict[str, bool] = {}  # path -> whether a checkout converts it
        self.pending = bytearray()
        if worktree is not None:
            autocrlf = subprocess.run(["git", "-C", str(worktree), "config", "--type=bool", "core.autocrlf"],
                                      capture_output=True, text=True).stdout.strip()
            self.convert_all = autocrlf == "true"
            self.attributes = subprocess.Popen(
                ["git", "-C", str(worktree), "check-attr", "--stdin", "-z", *self.ATTRIBUTES],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)

    def _converted(self, path: str) -> bool:
        """Whether a checkout at `path` would change the blob's bytes."""
        if self.convert_all:
            return True
        if path not in self.known:
            self.attributes.stdin.write(os.fsencode(path) + b"\0")
            self.attributes.stdin.flush()
            wanted = 3 * len(self.ATTRIBUTES)  # path, attribute, value for each
            while self.pending.count(b"\0") < wanted:
                if not (chunk := self.attributes.stdout.read1(1 << 16)):
                    raise SandboxError("git check-attr ended early")
                self.pending += chunk
            *fields, rest = self.pending.split(b"\0", wanted)
            self.pending = bytearray(rest)
            self.known[path] = any(v not in (b"unspecified", b"unset") for v in fields[2::3])
        return self.known[path]

    def read(self, oid: str, path: str, out: BinaryIO | None = None) -> bytes:
        with self.lock:
            if self.attributes is not None and path and self._converted(path):
                return self._filtered(oid, path, out)
            try:
                self.proc.stdin.write(oid.encode() + b"\n")
                self.proc.stdin.flush()
                header = self.proc.stdout.readline().split()
            except (OSError, ValueError) as e:
                raise SandboxError(f"reading {path or oid} from the task's result failed: {e}") from e
            if len(header) != 3 or header[1] != b"blob":
                raise SandboxError(f"the task's result has no blob {oid} for {path!r}")
            size, chunks = int(header[2]), []
            while size:
                chunk = self.proc.stdout.read(min(size, 1 << 20))
                if not chunk:
                    raise SandboxError(f"reading {path or oid} from the task's result broke off")
                size -= len(chunk)
                out.write(chunk) if out is not None else chunks.append(chunk)
            self.proc.stdout.read(1)  # the newline after the contents
            return b"".join(chunks)

    def _filtered(self, oid: str, path: str, out: BinaryIO | None) -> bytes:
        env = {**os.environ, "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(self.repo / "objects"), "GIT_LFS_SKIP_SMUDGE": "1"}
        proc = subprocess.run(["git", "-C", str(self.worktree), "cat-file", "--filters", f"--path={path}", oid],
                              capture_output=True, env=env)
        if proc.returncode != 0:
            raise SandboxError(f"converting {path} as your checkout would failed: "
                               f"{proc.stderr.decode(errors='replace').strip()}")
        if out is not None:
            out.write(proc.stdout)
            return b""
        return proc.stdout

    def close(self) -> None:
        for proc in filter(None, (self.proc, self.attributes)):
            proc.stdin.close()
            proc.wait()


_readers: OrderedDict[tuple, _BlobReader] = OrderedDict()
_readers_lock = threading.Lock()


def _reader(repo: Path, worktree: Path | None) -> _BlobReader:
    """A reader per (result, work tree), the few most recent kept running."""
    key = (str(repo), str(worktree) if worktree else None)
    with _readers_lock:
        reader = _readers.get(key)
        if reader is None or reader.proc.poll() is not None:
            reader = _readers[key] = _BlobReader(repo, worktree)
        _readers.move_to_end(key)
        while len(_readers) > 8:
            _readers.popitem(last=False)[1].close()
        return reader


def unsafe_path(path: bytes) -> str | None:
    """Why a path from the sandbox must not be written into a checkout, or None when it may."""
    if not path or path.startswith(b"/"):
        return "an empty or absolute path"
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            return f"a {part.decode() or 'empty'!r} component"
        name = unicodedata.normalize("NFC", part.decode("utf-8", "replace")).translate(_HFS_IGNORED).lower()
        # Windows drops trailing dots and spaces, and knows ".git" by its short name too
        if name.rstrip(". ") in (".git", "git~1") or name.startswith(".git:"):
            return "a .git component"
    return None


def receive(pack_writer: Callable[[Path], str], base: str, snapshot_git: Path, dest: Path) -> list[ChangedFile]:
    """Make `dest` the task's result repository and list the change in it.

    `pack_writer(path)` writes the sandbox's pack there and returns the commit the sandbox names
    as its result; `base` is the snapshot's base commit, found in `snapshot_git` (a .git dir)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    _git(dest, "init", "-q", "--bare")
    alternates = dest / "objects" / "info" / "alternates"
    alternates.write_text(f"{snapshot_git / 'objects'}\n")
    incoming = dest / "incoming.pack"
    try:
        head = pack_writer(incoming).strip()
        if not OID.match(head):
            raise RefusedChange(f"the sandbox named {head[:80]!r} as its result, not a commit id")
        if head == base:
            return _finish(dest, snapshot_git, base, head, [])
        with open(incoming, "rb") as pack:
            _git(dest, "index-pack", "--strict", "--fix-thin", "--stdin", stdin=pack, check="refuse")
        kind = _git(dest, "cat-file", "-t", head, check="refuse").strip()
        if kind != b"commit":
            raise RefusedChange(f"the sandbox's result {head[:12]} is a {kind.decode(errors='replace')}, not a commit")
        entries = list(_diff(dest, base, head))
    finally:
        incoming.unlink(missing_ok=True)
    changes, base_side = checked_changes(dest, entries)
    return _finish(dest, snapshot_git, base, head, changes, base_side)


def checked_changes(repo: Path, entries: list[tuple]) -> tuple[list[ChangedFile], set[str]]:
    """The changed files of diff entries (see `_diff`), each checked, and the base-side objects
    they need; RefusedChange on the first entry that is not a file, executable or symlink at a
    safe path."""
    changes, base_side = [], set()
    for old_mode, new_mode, old_oid, new_oid, status, path in entries:
        for mode in {old_mode, new_mode} - {None}:
            if mode not in (*BLOB_MODES, TREE):
                what = "a submodule (gitlink)" if mode == GITLINK else f"mode {mode}"
                raise RefusedChange(f"{os.fsdecode(path)!r} is {what}; only files, executables and symlinks "
                                    "come back from a sandbox")
        if reason := unsafe_path(path):
            raise RefusedChange(f"the change holds a path with {reason}: {path[:200]!r}")
        if old_oid:
            base_side.add(old_oid)
        if TREE in (old_mode, new_mode):
            continue
        changes.append(ChangedFile(
            os.fsdecode(path), {"A": "added", "D": "deleted"}.get(status, "modified"),
            old_mode, new_mode, old_oid, new_oid, repo))
    return changes, base_side


def list_changes(repo: Path) -> list[ChangedFile]:
    """The checked change between a result repository's base and result refs."""
    return checked_changes(repo, list(_diff(repo, "refs/offload/base", "refs/offload/result")))[0]


def from_files(dest: Path, files: list[tuple[str, bytes | None, bytes | None]]) -> list[ChangedFile]:
    """Make `dest` a result repository holding both sides of each changed file (`path`, base bytes,
    result bytes; None where the side is absent), as an older Offload recorded a change (no modes:
    regular files); the change is checked as one from a sandbox is."""
    dest.mkdir(parents=True)
    _git(dest, "init", "-q", "--bare")
    identity = {"GIT_AUTHOR_NAME": "Offload", "GIT_AUTHOR_EMAIL": "offload@localhost",
                "GIT_COMMITTER_NAME": "Offload", "GIT_COMMITTER_EMAIL": "offload@localhost"}
    commits: list[str] = []
    for side in (1, 2):
        index = {"GIT_INDEX_FILE": str(dest / f"index-{side}")}
        entries = b"".join(b"100644 " + _git(dest, "hash-object", "-w", "--stdin", input=f[side]).strip() + b"\t"
                           + os.fsencode(f[0]) + b"\0" for f in files if f[side] is not None)
        _git(dest, "update-index", "-z", "--index-info", input=entries, env=index, check="refuse")
        tree = _git(dest, "write-tree", env=index).decode().strip()
        parent = ["-p", commits[0]] if commits else []
        commits.append(_git(dest, "commit-tree", tree, *parent, "-m", "recorded change",
                            env=identity).decode().strip())
        (dest / f"index-{side}").unlink(missing_ok=True)
    _git(dest, "update-ref", "refs/offload/base", commits[0])
    _git(dest, "update-ref", "refs/offload/result", commits[1])
    changes = list_changes(dest)
    if left_out := sorted({f[0] for f in files} - {c.path for c in changes}):  # update-index skips bad paths
        raise RefusedChange(f"the change holds paths git refuses: {', '.join(map(repr, left_out[:5]))}")
    return changes


def _finish(dest: Path, snapshot_git: Path, base: str, head: str, changes: list[ChangedFile],
            base_side: set[str] = frozenset()) -> list[ChangedFile]:
    """Copy the base side of the change in from the snapshot (trusted: the host made it), then
    stand alone."""
    wanted = "\n".join(sorted(base_side | {base, f"{base}^{{tree}}"})) + "\n"
    oids = _git(snapshot_git, "cat-file", "--batch-check=%(objectname)", input=wanted.encode())
    pack = _git(snapshot_git, "pack-objects", "--stdout", "-q", input=oids)
    _git(dest, "index-pack", "--stdin", input=pack)
    (dest / "objects" / "info" / "alternates").unlink()
    _git(dest, "update-ref", "refs/offload/base", base)
    _git(dest, "update-ref", "refs/offload/result", head)
    return changes


def _diff(repo: Path, base: str, head: str) -> Iterator[tuple]:
    """Raw diff entries between two commits, trees along the way included (-t), paths as bytes."""
    out = _git(repo, "diff-tree", "-r", "-t", "-z", "--no-renames", "--raw", base, head, check="refuse")
    fields = out.split(b"\0")
    for meta, path in zip(fields[0::2], fields[1::2]):
        old_mode, new_mode, old_oid, new_oid, status = meta.lstrip(b":").decode().split(" ")
        yield (None if ZERO.match(old_mode) else old_mode, None if ZERO.match(new_mode) else new_mode,
               None if ZERO.match(old_oid) else old_oid, None if ZERO.match(new_oid) else new_oid,
               status[:1], path)


def diff_text(repo: Path, out: Path) -> None:
    """The change as a readable patch (renames found, binary files summarised by git), streamed
    to `out` without holding it in memory."""
    with open(out, "wb") as f:
        proc = subprocess.run(["git", "-C", str(repo), "diff-tree", "-p", "-M", "--no-color", "--no-ext-diff",
                               "--no-textconv", "refs/offload/base", "refs/offload/result"],
                              stdout=f, stderr=subprocess.PIPE, env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"})
    if proc.returncode != 0:
        raise SandboxError(f"git diff-tree failed: {proc.stderr.decode(errors='replace').strip()}")
