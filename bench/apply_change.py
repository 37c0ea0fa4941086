"""Applying a large change: time and peak memory of `offload apply`, beside `git apply` of the
same change in the same run.

    python bench/apply_change.py

Two changes, each made by a real task (the model stand-in runs a script in a bubblewrap
sandbox) on a repository of 2,000 files: 20,000 new files in 40 directories, and one 100 MB
file. `offload apply` runs as its own process; its peak RSS is the kernel's count for that
process (wait4). `git apply` gets the same change as a binary diff made by git from the task's
result repository, applied to a fresh copy of the same checkout. Exits non-zero when a goal is
missed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fakemodel import FakeModel, load_scenarios  # noqa: E402

GOAL_RSS_MB = 200
CHANGES = {
    "20,000 files": "python3 -c \"\nimport os\nfor i in range(20000):\n    os.makedirs(f'gen/d{i // 500}', "
                    "exist_ok=True)\n    open(f'gen/d{i // 500}/f{i}.txt', 'w').write(f'file {i}\\\\n' * 20)\n\"",
    "one 100 MB file": "head -c 104857600 /dev/urandom > big.bin",
}


def repo_of(path: Path) -> Path:
    """A checkout of 2,000 small committed files."""
    for i in range(2000):
        (path / f"src/m{i // 100}").mkdir(parents=True, exist_ok=True)
        (path / f"src/m{i // 100}/f{i}.py").write_text(f"VALUE = {i}\n" * 10)
    env = {**os.environ, "GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b"}
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "init"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True, env=env)
    return path


def measured(argv: list[str], cwd: Path, env: dict, stdin=None) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of one process."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr.read().decode(errors='replace')}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> int:
    missed = False
    print(f"{'change':<18} {'offload apply':>22} {'git apply':>22}   goal (peak RSS)")
    with FakeModel(scenarios=load_scenarios("tests.scenarios")) as model, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "XDG_STATE_HOME": f"{tmp}/state", "XDG_CACHE_HOME": f"{tmp}/cache",
               "XDG_CONFIG_HOME": f"{tmp}/config", "OPENAI_BASE_URL": model.base_url, "OPENAI_API_KEY": "bench",
               "OFFLOAD_MODEL_NAME": "run-the-script", "OFFLOAD_SANDBOX_BACKEND": "bubblewrap"}
        cli = [sys.executable, "-m", "offload.server.cli"]
        for name, script in CHANGES.items():
            repo = repo_of(Path(tmp) / name.replace(" ", "-").replace(",", ""))
            run = subprocess.run([*cli, "run", f"Run this:\n```sh\n{script}\n```\n", "--repo", str(repo), "--json"],
                                 env=env, capture_output=True, text=True)
            record = json.loads(run.stdout.splitlines()[-1])["record"]
            assert record["state"] == "finished", run.stderr
            copy = Path(f"{repo}-git-apply")
            shutil.copytree(repo, copy, symlinks=True)
            results = Path(tmp) / "state" / "offload" / "tasks" / record["id"] / "results"
            (result,) = results.iterdir()
            patch = Path(tmp) / "change.patch"
            with open(patch, "wb") as f:
                subprocess.run(["git", "-C", str(result), "diff-tree", "-p", "--binary", "refs/offload/base",
                                "refs/offload/result"], stdout=f, check=True)
            ours = measured([*cli, "apply", record["id"]], repo, env)
            with open(patch, "rb") as f:
                theirs = measured(["git", "apply", "-"], copy, env, stdin=f)
            same = subprocess.run(["diff", "-r", "-q", "-x", ".git", str(repo), str(copy)], capture_output=True)
            assert same.returncode == 0, same.stdout
            ok = ours[1] <= GOAL_RSS_MB
            missed |= not ok
            print(f"{name:<18} {ours[0]:8.2f} s {ours[1]:7.0f} MB  {theirs[0]:8.2f} s {theirs[1]:7.0f} MB"
                  f"   ≤ {GOAL_RSS_MB} MB {'ok' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
