"""How long a task waits for its sandbox, printed beside the goals.

    python bench/sandbox_ready.py [-n RUNS] [--files N]

Ready means the repository is in the sandbox and its first command has answered: from
`SandboxManager.create` over a snapshot already in the cache to the answer of `true`. Measured
for a 10-file and a large (50,000 files by default) repository on each way a sandbox can be
had: claimed from the warm pool (`sandbox.warm`, refilled between tasks) on Docker and on
bubblewrap; started cold, on Docker with Offload's overlay over an idmapped bind of the snapshot
(this machine's engine), with the copy (what a remote engine gets) and on bubblewrap. Beside
them the naive way, measured in the same run: `docker run` per task with the repository piped
in as a tarball. Exits non-zero when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offload.sandbox.image import DEFAULT_IMAGE  # noqa: E402
from offload.sandbox.manager import SandboxConfig, SandboxManager  # noqa: E402

GOAL_WARM_MS = 150.0  # Docker, p50, a sandbox claimed from the warm pool
GOAL_COLD_MS = 600.0  # Docker, p50, a new container per task
GOAL_LARGE_EXTRA_MS = 50.0  # a large repository over a 10-file one, once its snapshot is cached
GOAL_BWRAP_MS = 30.0  # bubblewrap, p50, a sandbox claimed from the warm pool
# way: (sandbox settings, create() options); warm: claimed from a pool of one, refilled between tasks
WAYS = {
    "docker": {"warm": ({"warm": 1}, {}), "cold": ({}, {"local": True}), "copy": ({}, {"local": False})},
    "bubblewrap": {"warm": ({"warm": 1}, {}), "cold": ({}, {})},
}


def make_repo(path: Path, files: int) -> Path:
    """A git repository of `files` small files, 100 to a directory."""
    path.mkdir()
    for i in range(files):
        directory = path / f"pkg{i // 100:04d}"
        directory.mkdir(exist_ok=True)
        (directory / f"mod{i % 100:02d}.py").write_text(f"VALUE_{i} = {i}\n")
    env = ["-c", "user.name=Bench", "-c", "user.email=bench@example.com"]
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], [*env, "commit", "-q", "-m", "files"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True)
    return path


def ready_ms(manager: SandboxManager, snapshot, runs: int, check: tuple[str, ...] = ("true",),
             **create) -> list[float]:
    """Time to a first answer (of `check`) for `runs` sandboxes, one at a time, after one not counted."""
    times = []
    for i in range(runs + 1):
        while manager.config.warm and manager.warm_ready() < manager.config.warm:
            time.sleep(0.01)  # the pool refills between tasks
        os.sync()  # the repositories and copies just written must not be flushed during a measurement
        start = time.perf_counter()
        sandbox = manager.create(snapshot, **create)
        result = sandbox.run(list(check))
        elapsed = (time.perf_counter() - start) * 1000
        manager.destroy(sandbox.id)
        assert result.exit_code == 0, result.output
        if i:
            times.append(elapsed)
    return times


def naive_ms(repo: Path, runs: int) -> list[float]:
    """`docker run` per task, the repository piped in as a tarball and unpacked, then `true`."""
    times = []
    for _ in range(runs):
        os.sync()
        start = time.perf_counter()
        tar = subprocess.Popen(["tar", "-C", str(repo), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["docker", "run", "--rm", "-i", "--network", "none", DEFAULT_IMAGE, "sh", "-c",
                        "mkdir /tmp/w && tar -x -C /tmp/w && cd /tmp/w && true"], stdin=tar.stdout, check=True)
        tar.wait()
        times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--files", type=int, default=50_000)
    args = parser.parse_args()
    p50 = {}
    with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp:
        repos = {"10 files": make_repo(Path(tmp, "small"), 10),
                 f"{args.files:,} files": make_repo(Path(tmp, "large"), args.files)}
        for backend, ways in WAYS.items():
            for way, (settings, create) in ways.items():
                manager = SandboxManager(SandboxConfig(backend=backend, **settings), Path(tmp, "cache"),
                                         owner="offload-bench")
                manager.prewarm()
                try:
                    for size, repo in repos.items():
                        times = ready_ms(manager, manager.snapshot(repo), args.runs, **create)
                        p50[backend, way, size] = statistics.median(times)
                        print(f"{backend:<10} {way:<8} {size:>13}: p50 {p50[backend, way, size]:8.1f} ms  "
                              f"p95 {statistics.quantiles(times, n=20)[-1]:8.1f} ms", flush=True)
                finally:
                    manager.close()
        for size, repo in repos.items():
            times = naive_ms(repo, args.runs)
            p50["naive", size] = statistics.median(times)
            print(f"{'docker run':<10} {'naive':<8} {size:>13}: p50 {p50['naive', size]:8.1f} ms", flush=True)
    small, large = repos
    checks = [
        *((f"Docker warm ready, {size} (p50)", p50["docker", "warm", size], GOAL_WARM_MS) for size in repos),
        ("Docker cold ready, 10 files (p50)", p50["docker", "cold", small], GOAL_COLD_MS),
        (f"Docker cold, {large} over 10 files (p50)",
         p50["docker", "cold", large] - p50["docker", "cold", small], GOAL_LARGE_EXTRA_MS),
        *((f"bubblewrap warm ready, {size} (p50)", p50["bubblewrap", "warm", size], GOAL_BWRAP_MS) for size in repos),
    ]
    print()
    missed = False
    for name, value, goal in checks:
        met = value <= goal
        missed |= not met
        print(f"{name:<46} {value:8.1f} ms   goal <= {goal:.0f} ms   {'met' if met else 'MISSED'}")
    for size in repos:
        print(f"{'bubblewrap cold ready, ' + size + ' (p50)':<46} {p50['bubblewrap', 'cold', size]:8.1f} ms   "
              "(no goal: a task gets a warm one)")
    print()
    for size in repos:
        naive = p50["naive", size]
        print(f"naive `docker run` with a copy, {size:>13}: {naive:8.1f} ms = "
              f"{naive / p50['docker', 'warm', size]:.1f}x Docker warm, "
              f"{naive / p50['docker', 'cold', size]:.1f}x Docker cold, "
              f"{naive / p50['bubblewrap', 'warm', size]:.1f}x bubblewrap warm")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
