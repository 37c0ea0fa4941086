"""Task results for unit tests: real result repositories made with git, as a sandbox's would be."""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

from offload.sandbox.result import ChangedFile, diff_text, list_changes

ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
       "PATH": "/usr/local/bin:/usr/bin:/bin"}


def _commit(repo: Path, files: dict[str, tuple[bytes, str]], ref: str) -> None:
    """Commit exactly `files` (path → (bytes, git mode)) and point `ref` at it."""
    entries = []
    for path, (data, mode) in files.items():
        oid = subprocess.run(["git", "-C", str(repo), "hash-object", "-w", "--stdin"], input=data,
                             capture_output=True, check=True).stdout.decode().strip()
        entries.append(f"{mode} {oid}\t{path}")
    index = {"GIT_INDEX_FILE": str(repo / f"index-{ref.rsplit('/', 1)[1]}")}
    if entries:
        subprocess.run(["git", "-C", str(repo), "update-index", "--add", "--index-info"],
                       input="\n".join(entries).encode() + b"\n", check=True, env={**ENV, **index})
    tree = subprocess.run(["git", "-C", str(repo), "write-tree"], capture_output=True, check=True,
                          env={**ENV, **index}).stdout.decode().strip()
    commit = subprocess.run(["git", "-C", str(repo), "commit-tree", tree, "-m", ref], capture_output=True,
                            check=True, env=ENV).stdout.decode().strip()
    subprocess.run(["git", "-C", str(repo), "update-ref", ref, commit], check=True)


def result_repo(repo: Path, base: dict, result: dict) -> list[ChangedFile]:
    """A result repository at `repo` whose base and result hold the given files; its change.
    A file is `bytes` (mode 100644) or `(bytes, mode)`."""
    def norm(files: dict) -> dict:
        return {p: v if isinstance(v, tuple) else (v, "100644") for p, v in files.items()}

    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    _commit(repo, norm(base), "refs/offload/base")
    _commit(repo, norm(result), "refs/offload/result")
    return list_changes(repo)


def one_change(tmp: Path, path: str, base: bytes | None, result: bytes | None) -> ChangedFile:
    """A single changed file, added (no base), deleted (no result) or modified."""
    (change,) = result_repo(tmp / "result.git", {} if base is None else {path: base},
                            {} if result is None else {path: result})
    return change


def changes_of(sandbox) -> list[ChangedFile]:
    """A sandbox's change as the host receives it (sandbox.export into a result repository)."""
    return sandbox.export(Path(tempfile.mkdtemp(prefix="offload-result-", dir=_results())) / "result.git")


def diff_of(sandbox) -> str:
    """The readable diff of a sandbox's change, as the host makes it from the objects it received."""
    where = Path(tempfile.mkdtemp(prefix="offload-result-", dir=_results()))
    sandbox.export(where / "result.git")
    diff_text(where / "result.git", where / "diff.patch")
    return (where / "diff.patch").read_text(errors="replace")


@functools.cache
def _results() -> str:
    where = tempfile.mkdtemp(prefix="offload-test-results-")
    atexit.register(shutil.rmtree, where, True)
    return where
