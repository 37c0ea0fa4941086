"""A task's change as a branch of the user's repository, ready for `git push` and a pull request.

The branch is one commit on top of the commit that was checked out when the task started,
holding the task's changed files as the task left them. Nothing else of the repository moves:
the working tree, the index and HEAD stay as they are; the task's blobs go into the object store
(`index-pack`), the tree is built in a temporary index, and only the new branch's ref is written.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from offload.sandbox.result import ChangedFile

ZERO = "0" * 40


class BranchError(Exception):
    """The branch cannot be made or pushed; the message says why and what to do."""


def _git(root: Path, *args: str, input: bytes | None = None, env: dict | None = None) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], input=input, capture_output=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        raise BranchError(f"git {args[0]} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout.decode(errors="surrogateescape").strip()


def default_name(record: dict) -> str:
    """`offload/<a few words of the prompt>-<the task's short id>`."""
    words = re.sub(r"[^a-z0-9]+", "-", record["prompt"].splitlines()[0].lower()).strip("-")[:40].rstrip("-")
    return f"offload/{words or 'task'}-{record['id'][-6:]}"


def make_branch(record: dict, changes: list[ChangedFile], name: str) -> str:
    """Create branch `name` holding the task's change on top of its starting commit; its commit id."""
    root, head = Path(record["repo"]), record.get("head")
    if not (root / ".git").exists():
        raise BranchError(f"{root} is not a git repository: a branch needs one")
    if not changes:
        raise BranchError(f"task {record['id']} changed nothing: there is nothing to put on a branch")
    if subprocess.run(["git", "check-ref-format", "--branch", name], capture_output=True).returncode != 0:
        raise BranchError(f"{name!r} is not a valid branch name")
    if subprocess.run(["git", "-C", str(root), "rev-parse", "--verify", "-q", f"refs/heads/{name}"],
                      capture_output=True).returncode == 0:
        raise BranchError(f"branch {name} exists already; name another: offload branch {record['id']} NAME")
    blobs = "\n".join(c.result_oid for c in changes if c.result_oid) + "\n"
    pack = subprocess.run(["git", "-C", str(changes[0].repo), "pack-objects", "--stdout", "-q"],
                          input=blobs.encode(), capture_output=True, check=True).stdout
    _git(root, "index-pack", "--stdin", "--fix-thin", input=pack)
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        _git(root, "read-tree", *([head] if head else ["--empty"]), env=env)
        entries = b"".join(
            (f"{c.result_mode} {c.result_oid}\t" if c.result_oid else f"0 {ZERO}\t").encode()
            + os.fsencode(c.path) + b"\0" for c in changes)
        _git(root, "update-index", "-z", "--index-info", input=entries, env=env)
        tree = _git(root, "write-tree", env=env)
    identity = {} if _git_ok(root, "config", "user.email") else {
        "GIT_AUTHOR_NAME": "Offload", "GIT_AUTHOR_EMAIL": "offload@localhost",
        "GIT_COMMITTER_NAME": "Offload", "GIT_COMMITTER_EMAIL": "offload@localhost"}
    commit = _git(root, "commit-tree", tree, *(["-p", head] if head else []), "-F", "-",
                  input=message(record).encode(), env=identity)
    _git(root, "update-ref", f"refs/heads/{name}", commit, "")  # "": only if it does not exist yet
    return commit


def _git_ok(root: Path, *args: str) -> bool:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True).returncode == 0


def title(record: dict) -> str:
    first = record["prompt"].strip().splitlines()[0] if record["prompt"].strip() else "Offload task"
    return first if len(first) <= 72 else first[:71] + "…"


def message(record: dict) -> str:
    """The commit message and pull request body: the prompt, then the task's Summary and Testing."""
    body = (record.get("message") or "").strip()
    return f"{title(record)}\n\n{body}\n\nOffload task {record['id']}\n" if body else \
        f"{title(record)}\n\nOffload task {record['id']}\n"


def open_pull_request(record: dict, name: str, remote: str = "origin") -> tuple[str, list[list[str]]]:
    """Push the branch and open a pull request with `gh` when it is installed and logged in.
    Returns what happened, in words, and the commands left for the user to run (if any)."""
    root = Path(record["repo"])
    body = message(record).split("\n", 2)[2] if "\n\n" in message(record) else ""
    create = ["gh", "pr", "create", "--head", name, "--title", title(record), "--body", body]
    push = ["git", "push", "-u", remote, name]
    if not _git_ok(root, "remote", "get-url", remote):
        return f"branch {name} is ready; the repository has no remote {remote!r} to push it to", [push, create]
    pushed = subprocess.run(push, cwd=root, capture_output=True, text=True)
    if pushed.returncode != 0:
        raise BranchError(f"git push failed: {pushed.stderr.strip()}")
    if shutil.which("gh") is None:
        return f"pushed {name} to {remote}; gh is not installed: open the pull request with", [create]
    if subprocess.run(["gh", "auth", "status"], cwd=root, capture_output=True).returncode != 0:
        return f"pushed {name} to {remote}; gh is not logged in (gh auth login), then run", [create]
    made = subprocess.run(create, cwd=root, capture_output=True, text=True)
    if made.returncode != 0:
        raise BranchError(f"gh pr create failed: {(made.stderr or made.stdout).strip()}")
    return f"opened a pull request: {made.stdout.strip()}", []
