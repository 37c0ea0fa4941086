"""`offload branch` and `offload pr`: a task's change as a branch of the user's repository, pushed
to a remote (a local bare repository here) with a pull request opened by `gh` — a stand-in on
PATH that records what it was asked — or, without gh, the commands printed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import git, offload_cli

pytestmark = pytest.mark.usefixtures("bubblewrap")

GH = """#!/bin/sh
printf '%s\\n' "$@" > "$GH_LOG.$1"
[ "$1 $2" = "pr create" ] && echo https://example.com/pr/1
exit 0
"""


@pytest.fixture
def finished(sample_repo, fake_model, tmp_path):
    """A finished fix of the sample, with a bare repository as its origin and untracked work beside."""
    remote = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    git(sample_repo, "remote", "add", "origin", str(remote))
    (sample_repo / "notes.txt").write_text("mine, untracked\n")
    env = {"OPENAI_BASE_URL": fake_model.base_url, "OPENAI_API_KEY": "k", "OFFLOAD_MODEL_NAME": "fix-failing-test",
           "OFFLOAD_SANDBOX_BACKEND": "bubblewrap"}
    proc = offload_cli("run", "Make the failing test pass", "--repo", str(sample_repo), "--json", env=env)
    record = json.loads(proc.stdout.splitlines()[-1])["record"]
    assert record["state"] == "finished", proc.stderr
    return record, remote


def test_branch_puts_the_change_on_the_starting_commit_and_touches_nothing_else(finished, sample_repo):
    record, _ = finished
    head, status = git(sample_repo, "rev-parse", "HEAD").strip(), git(sample_repo, "status", "--porcelain")
    made = offload_cli("branch", record["id"], "fix-add", cwd=sample_repo)
    assert made.returncode == 0, made.stderr
    assert "git push -u origin fix-add" in made.stdout
    assert git(sample_repo, "rev-parse", "fix-add^").strip() == head
    assert "return a + b" in git(sample_repo, "show", "fix-add:calc.py")
    assert git(sample_repo, "show", "--stat", "--format=%s%n%b", "fix-add").startswith("Make the failing test pass")
    assert git(sample_repo, "diff", "--name-only", head, "fix-add").split() == ["calc.py"]
    assert git(sample_repo, "rev-parse", "HEAD").strip() == head and git(sample_repo, "status", "--porcelain") == status
    assert "return a - b" in (sample_repo / "calc.py").read_text()
    again = offload_cli("branch", record["id"], "fix-add", cwd=sample_repo)
    assert again.returncode != 0 and "exists already" in again.stderr
    bad = offload_cli("branch", record["id"], "no..good", cwd=sample_repo)
    assert bad.returncode != 0 and "not a valid branch name" in bad.stderr


def test_pr_pushes_the_branch_and_opens_a_pull_request_with_gh(finished, sample_repo, tmp_path):
    record, remote = finished
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(GH)
    (bin_dir / "gh").chmod(0o755)
    log = tmp_path / "gh"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GH_LOG": str(log)}
    opened = offload_cli("pr", record["id"], cwd=sample_repo, env=env)
    assert opened.returncode == 0, opened.stderr
    assert "https://example.com/pr/1" in opened.stdout
    name = next(line for line in (Path(f"{log}.pr").read_text().splitlines()) if line.startswith("offload/"))
    assert git(remote, "rev-parse", name) == git(sample_repo, "rev-parse", name)
    asked = Path(f"{log}.pr").read_text().split("\n")
    assert asked[:4] == ["pr", "create", "--head", name] and "Make the failing test pass" in asked
    assert "## Summary" in Path(f"{log}.pr").read_text()


def test_pr_without_gh_pushes_and_prints_the_command(finished, sample_repo, tmp_path):
    record, remote = finished
    bin_dir = tmp_path / "bin"  # git only: no gh on this PATH
    bin_dir.mkdir()
    (bin_dir / "git").symlink_to(shutil.which("git"))
    opened = offload_cli("pr", record["id"], "my-fix", cwd=sample_repo, env={"PATH": str(bin_dir)})
    assert opened.returncode == 0, opened.stderr
    assert "gh is not installed" in opened.stdout and "gh pr create --head my-fix" in opened.stdout
    assert git(remote, "rev-parse", "my-fix") == git(sample_repo, "rev-parse", "my-fix")
