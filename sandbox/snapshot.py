"""Workspace snapshots: the repository as it is on disk, frozen into an immutable cache.

A snapshot is HEAD plus uncommitted and untracked-not-ignored files. It is taken through a
temporary index, so the user's index, working tree and refs never change (git only gains
unreferenced blob and tree objects). The snapshot is materialised once per tree into
`<cache>/snapshots/<tree>/`: a git repository whose single commit (the *base*) holds that
tree, so sandboxes can start from it and diff against it. Sandboxes' layers live in the same cache,
owned by the sandbox user's uid, often another local account's; so the cache is `private`: no other
account may enter it. The cache is bounded by `evict` (cache.py).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import cache
from .cache import evict, locked
from .errors import SandboxError

# Fixed identity and date: the same tree always gives the same base commit.
_BASE_ENV = {
    "GIT_AUTHOR_NAME": "Offload",
    "GIT_AUTHOR_EMAIL": "offload@localhost",
    "GIT_COMMITTER_NAME": "Offload",
    "GIT_COMMITTER_EMAIL": "offload@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00+0000",
    "GIT_COMMITTER_DATE": "2000-01-01T00:00:00+0000",
}


@dataclass(frozen=True)
class Snapshot:
    """A materialised workspace: `path` is a git work tree whose HEAD is `base`."""

    root: Path  # the user's repository (or plain directory) root
    subdir: str  # where the task points, relative to root ("" for the root)
    tree: str  # git tree id of the snapshot
    base: str  # commit id of the base commit inside `path`
    path: Path  # the cached work tree
    head: str | None = None  # the commit checked out in the user's repository when it was taken

    def base_file(self, rel: str) -> bytes | None:
        """A file's content at the base, or None when the base lacks it."""
        proc = subprocess.run(
            ["git", "-C", str(self.path), "cat-file", "blob", f"{self.base}:{rel}"],
            capture_output=True,
        )
        return proc.stdout if proc.returncode == 0 else None


def _git(args: list[str], cwd: Path, env: dict | None = None, stdin: bytes | None = None) -> str:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(["git", *args], cwd=cwd, env=full_env, input=stdin, capture_output=True)
    if proc.returncode != 0:
        raise SandboxError(f"git {' '.join(args[:2])} failed in {cwd}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode(errors="surrogateescape").strip()  # file names need not be UTF-8


def private(directory: str | os.PathLike) -> Path:
    """`directory`, made if need be, that only this user may enter (0700). It holds snapshots and
    sandboxes' writable layers, owned by the sandbox user's uid: on many machines another local
    account's, which must neither read the next task's input nor change it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise SandboxError(f"{directory} belongs to another account; Offload keeps its cache in a directory of its own")
    os.chmod(directory, 0o700)
    return directory


def find_root(directory: Path) -> tuple[Path, bool]:
    """The repository root containing `directory` and whether it is a git repository.

    Git is asked once per directory; its answer is reused while the nearest `.git` above the
    directory is still the one at that root (a `git init` in between, or the repository gone,
    asks again). Every task an editor starts asks this first, and a git process takes 5 to
    25 ms on a busy machine: the editor's command waits for none of it the second time."""
    directory = Path(directory)
    known = _roots.get(directory)
    if known is not None and _nearest_git(directory) == (known[0] if known[1] else None):
        return known
    proc = subprocess.run(
        ["git", "-C", str(directory), "rev-parse", "--show-toplevel"], capture_output=True, text=True
    )
    found = (Path(proc.stdout.strip()).resolve(), True) if proc.returncode == 0 else (directory.resolve(), False)
    _roots[directory] = found
    return found


_roots: dict[Path, tuple[Path, bool]] = {}


def _nearest_git(directory: Path) -> Path | None:
    """The nearest directory at or above `directory` holding a `.git` (a repository or a worktree's file)."""
    for candidate in (directory.resolve(), *directory.resolve().parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def take_snapshot(directory: str | os.PathLike, cache_dir: str | os.PathLike, limit: int | None = None) -> Snapshot:
    """Snapshot `directory` (inside a git repository or not) and materialise it in the cache;
    a new one evicts the least recently used others until the cache holds `limit` bytes."""
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise SandboxError(f"not a directory: {directory}")
    root, is_git = find_root(directory)
    subdir = os.path.relpath(directory, root)
    subdir = "" if subdir == "." else subdir
    snapshots = private(private(cache_dir) / "snapshots")
    tree = _tree_of_repo(root) if is_git else None
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", "HEAD^{commit}"],
                          capture_output=True, text=True).stdout.strip() or None if is_git else None
    with tempfile.TemporaryDirectory(dir=snapshots, prefix=".new-") as tmp:
        work = Path(tmp) / "work"
        _git(["init", "-q", "-b", "main", str(work)], cwd=Path(tmp))
        copied = linked = False
        if tree is None:
            tree = _tree_from_directory(root, work)
        elif _submodules(root, tree):
            tree, copied = _with_submodules(root, work, tree), True
        name = f"{tree}-{head[:12]}" if head else tree  # the base commit sits on HEAD: both name it
        final, made = snapshots / name, False

        last = snapshots / f".last-{hashlib.sha256(os.fsencode(root)).hexdigest()[:16]}"

        def materialise() -> None:
            nonlocal linked
            linked = linked or (head is not None and not copied and _link_history(root, work))
            if is_git and not copied and not linked:
                _copy_objects(root, work, tree)
            _check_out(work, tree, head if linked else None, _previous(last) if linked else None)

        if not final.exists():  # renamed into place whole, so existing means complete
            materialise()  # the slow part, outside the lock
        with locked(snapshots):
            if not final.exists():
                if not (work / ".git" / cache.SIZE_FILE).exists():  # evicted between the look and the lock
                    materialise()
                os.rename(work, final)
                made = True
            os.utime(final)  # recency for cache eviction
            last.with_suffix(".tmp").write_text(name)
            os.replace(last.with_suffix(".tmp"), last)
    if made and limit is not None:
        evict(cache_dir, limit, keep=name)
    base = _git(["rev-parse", "HEAD"], cwd=final)
    return Snapshot(root=root, subdir=subdir, tree=name, base=base, path=final, head=head)


def _tree_of_repo(root: Path) -> str:
    """Write the working tree through a temporary index; its tree id names the snapshot."""
    index = Path(_git(["rev-parse", "--path-format=absolute", "--git-path", "index"], cwd=root))
    with tempfile.TemporaryDirectory() as tmp:
        tmp_index = Path(tmp) / "index"
        if index.exists():
            shutil.copyfile(index, tmp_index)  # stat cache: only changed files are hashed
        env = {"GIT_INDEX_FILE": str(tmp_index)}
        _git(["add", "-A", "."], cwd=root, env=env)
        return _git(["write-tree"], cwd=root, env=env)


def _copy_objects(root: Path, work: Path, tree: str) -> None:
    """Copy the objects of `tree` from the user's repository into `work`."""
    objects = _git(["rev-list", "--objects", tree], cwd=root)
    pack = subprocess.run(
        ["git", "pack-objects", "--stdout", "-q"], cwd=root, input=(objects + "\n").encode(errors="surrogateescape"),
        capture_output=True
    )
    if pack.returncode != 0:
        raise SandboxError(f"git pack-objects failed: {pack.stderr.decode(errors='replace')}")
    _git(["index-pack", "--stdin"], cwd=work, stdin=pack.stdout)


def _link_history(root: Path, work: Path) -> bool:
    """Give `work` the user's object store — every commit, tree and blob — by hard links, as
    `git clone --local` does: no bytes copied, and git never rewrites an object file, so
    neither side can change the other's. The tags and branches come along (branches as
    `origin/*`), so `git log`, `git blame` and `git describe` work in the sandbox. False where
    the store can't be linked (another filesystem, objects borrowed from alternates): then the
    snapshot holds its tree only."""
    common = Path(_git(["rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=root))
    source, target = common / "objects", work / ".git" / "objects"
    if (source / "info" / "alternates").exists():
        return False
    try:
        for directory, _, files in os.walk(source):
            relative = os.path.relpath(directory, source)
            if relative.split(os.sep)[0] == "info":
                continue
            os.makedirs(target / relative, exist_ok=True)
            for file in files:
                if not file.startswith("tmp"):
                    os.link(Path(directory) / file, target / relative / file)
    except OSError:
        shutil.rmtree(target)
        _git(["init", "-q"], cwd=work)  # an empty object store again
        return False
    if (common / "shallow").exists():
        shutil.copyfile(common / "shallow", work / ".git" / "shallow")
    refs = _git(["for-each-ref", "--format=%(objectname) %(refname)", "refs/tags", "refs/heads"], cwd=root)
    lines = [line.replace(" refs/heads/", " refs/remotes/origin/", 1) for line in refs.splitlines()]
    (work / ".git" / "packed-refs").write_text("".join(f"{line}\n" for line in lines), errors="surrogateescape")
    return True


def _submodules(repo: Path, tree: str) -> list[str]:
    """The paths of `tree`'s submodules that are checked out in `repo`."""
    listing = _git(["ls-tree", "-r", "-z", tree], cwd=repo)
    found = []
    for entry in filter(None, listing.split("\0")):
        meta, path = entry.split("\t", 1)
        if meta.startswith("160000 ") and (repo / path / ".git").exists():
            found.append(path)
    return found


def _with_submodules(repo: Path, work: Path, tree: str) -> str:
    """`tree` with each checked-out submodule's gitlink replaced by a snapshot of its files (their
    objects copied into `work` too): the sandbox holds what the developer's checkout holds, and a
    change inside a submodule comes back as files of the checkout like any other."""
    _copy_objects(repo, work, tree)
    submodules = _submodules(repo, tree)
    if not submodules:
        return tree
    index = work / ".git" / f"index-{tree}"
    env = {"GIT_INDEX_FILE": str(index)}
    _git(["read-tree", tree], cwd=work, env=env)
    for path in submodules:
        inner = _with_submodules(repo / path, work, _tree_of_repo(repo / path))
        _git(["update-index", "--force-remove", "--", path], cwd=work, env=env)
        _git(["read-tree", f"--prefix={path}/", inner], cwd=work, env=env)
    combined = _git(["write-tree"], cwd=work, env=env)
    index.unlink()
    return combined


def _tree_from_directory(root: Path, work: Path) -> str:
    """Hash a plain directory straight into `work`'s object store."""
    env = {"GIT_DIR": str(work / ".git"), "GIT_WORK_TREE": str(root)}
    _git(["add", "-A", "."], cwd=root, env=env)
    tree = _git(["write-tree"], cwd=root, env=env)
    (work / ".git" / "index").unlink()
    return tree


def _previous(last: Path) -> Path | None:
    """The last snapshot made of the same repository, while it is still cached."""
    try:
        previous = last.with_name(last.read_text().strip() or ".none")
    except OSError:
        return None
    return previous if (previous / ".git" / cache.SIZE_FILE).exists() else None


def _check_out(work: Path, tree: str, head: str | None = None, previous: Path | None = None) -> None:
    """Make `tree` the base commit of `work` and populate its files. With the user's history
    (`head`), the base is HEAD itself when nothing is uncommitted — `git describe` then says
    what it says in the developer's checkout — and otherwise a commit of the uncommitted work
    on top of HEAD. From a `previous` snapshot of the repository, only what differs is written."""
    # Snapshots are never written, so their files may be shared; git trusts their size and mtime.
    # A split index puts the entries in a shared file the next snapshot links: it writes the few that differ.
    for key, value in (("core.trustctime", "false"), ("core.checkStat", "minimal"), ("core.splitIndex", "true")):
        _git(["config", key, value], cwd=work)
    if previous is None or not _check_out_from(work, tree, previous):
        _git(["read-tree", tree], cwd=work)
        # -u: the index keeps their stat; workers=0: a worker per core (git's parallel checkout)
        _git(["-c", "checkout.workers=0", "checkout-index", "-a", "-f", "-u"], cwd=work)
    if head is not None and _git(["rev-parse", f"{head}^{{tree}}"], cwd=work) == tree:
        commit = head
    else:
        commit = _git(["commit-tree", tree, *(["-p", head] if head else []), "-m", "Offload snapshot: "
                       "the uncommitted work" if head else "Offload snapshot"], cwd=work, env=_BASE_ENV)
    _git(["update-ref", "refs/heads/main", commit], cwd=work)
    _git(["config", "user.name", "Offload"], cwd=work)
    _git(["config", "user.email", "offload@localhost"], cwd=work)
    cache.record_size(work)


def _rebase_index(git_dir: Path) -> None:
    """Write a new shared index when the entries that differ from the linked one are many: a cold
    checkout's own files are racily clean in its index, so the first snapshot after it refreshes
    them all. The next snapshots link the new one and write only what differs."""
    shared = list(git_dir.glob("sharedindex.*"))
    if shared and (git_dir / "index").stat().st_size * 5 > min(p.stat().st_size for p in shared):
        _git(["update-index", "--split-index"], cwd=git_dir.parent)
        used = Path(_git(["rev-parse", "--shared-index-path"], cwd=git_dir.parent)).name
        for old in shared:
            if old.name != used:
                old.unlink()


def _check_out_from(work: Path, tree: str, previous: Path) -> bool:
    """Populate `work` by hard links to `previous`'s files, then let git replace those that differ
    (it unlinks a file before writing it, so `previous` never changes): a one-file edit costs one
    file, not a checkout of the repository. False, with `work` emptied again, when it can't."""
    try:  # `previous` may be evicted meanwhile: then a full checkout it is
        entries = [str(e) for e in previous.iterdir() if e.name != ".git"]
        if entries:
            linked = subprocess.run(["cp", "-al", "-t", str(work), *entries], capture_output=True, text=True)
            if linked.returncode != 0:
                raise SandboxError(linked.stderr.strip())
        shutil.copyfile(previous / ".git" / "index", work / ".git" / "index")
        for shared in (previous / ".git").glob("sharedindex.*"):
            os.link(shared, work / ".git" / shared.name)
        was = _git(["rev-parse", "HEAD^{tree}"], cwd=previous)
        _git(["read-tree", "-m", "-u", was, tree], cwd=work)
        _rebase_index(work / ".git")
        return True
    except (OSError, SandboxError):
        for entry in work.iterdir():
            if entry.name != ".git":
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        (work / ".git" / "index").unlink(missing_ok=True)
        return False


def load_snapshot(cache_dir: str | os.PathLike, tree: str, root: Path, subdir: str = "") -> Snapshot:
    """A snapshot taken earlier, still in the cache: a follow-up starts from the same base."""
    path = Path(cache_dir) / "snapshots" / tree
    with locked(path.parent):
        if not path.is_dir():
            raise SandboxError(f"the snapshot {tree[:12]} this task started from is no longer cached; start a new task")
        os.utime(path)
    subdir = "" if subdir in ("", ".") else subdir
    return Snapshot(root=root, subdir=subdir, tree=tree, base=_git(["rev-parse", "HEAD"], cwd=path), path=path)
