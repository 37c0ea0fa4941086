"""What a cached setup costs a task, printed beside the goal.

    python bench/setup_cache.py [-n RUNS] [--files N]

A task whose `sandbox.setup` result is cached should start about as fast as one without setup:
the cache key is computed from the snapshot's git index, and the cached workspace and home are
one more lower layer each. Measured on each backend from `SandboxManager.create` to the answer
of a command reading a file the setup made, for a sandbox without setup and for one whose setup
(N files in an untracked `node_modules/`, a file in home) is cached. The setup's one run is
printed too. Exits non-zero when the goal is missed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sandbox_ready import ready_ms  # noqa: E402
from offload.sandbox.manager import SandboxConfig, SandboxManager  # noqa: E402
from offload.sandbox.setup import IMAGE  # noqa: E402

GOAL_EXTRA_MS = 50.0  # p50, a cached setup over no setup


def make_repo(path: Path) -> Path:
    path.mkdir()
    (path / "package.json").write_text('{"name": "bench"}\n')
    (path / "index.js").write_text("module.exports = 1\n")
    env = ["-c", "user.name=Bench", "-c", "user.email=bench@example.com"]
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], [*env, "commit", "-q", "-m", "files"]):
        subprocess.run(["git", "-C", str(path), *argv], check=True)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=15)
    parser.add_argument("--files", type=int, default=5000)
    args = parser.parse_args()
    script = (f"mkdir -p node_modules && for i in $(seq {args.files}); do echo $i > node_modules/m$i.js; done "
              "&& echo ready > ~/.setup-done")
    missed = False
    print(f"{'backend':<12} {'no setup p50':>13} {'cached p50':>11} {'extra':>8} {'goal':>8}  first setup run")
    for backend in ("docker", "bubblewrap"):
        with tempfile.TemporaryDirectory(prefix="offload-bench-") as tmp:
            repo = make_repo(Path(tmp) / "repo")
            plain = SandboxManager(SandboxConfig(backend=backend), Path(tmp) / "cache", owner="offload-bench")
            snapshot = plain.snapshot(repo)
            without = ready_ms(plain, snapshot, args.runs, ("cat", "index.js"))
            setup = SandboxManager(SandboxConfig(backend=backend, setup=script), Path(tmp) / "cache", owner="offload-bench")
            start = time.perf_counter()
            setup.destroy(setup.create(snapshot).id)
            first = time.perf_counter() - start
            cached = ready_ms(setup, snapshot, args.runs, ("sh", "-c", "cat node_modules/m1.js ~/.setup-done"))
            extra = statistics.median(cached) - statistics.median(without)
            missed |= extra > GOAL_EXTRA_MS
            print(f"{backend:<12} {statistics.median(without):>10.0f} ms {statistics.median(cached):>8.0f} ms "
                  f"{extra:>5.0f} ms {GOAL_EXTRA_MS:>5.0f} ms  {first:.1f} s ({args.files} files)"
                  + ("  MISSED" if extra > GOAL_EXTRA_MS else ""))
            if backend == "docker":
                client = setup.engines().engines[0].client
                for image in client.images.list(name=IMAGE, filters={"label": "offload.setup"}):
                    if (Path(tmp) / "cache" / "setup" / image.labels["offload.setup"]).exists():
                        client.images.remove(image.id, force=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
