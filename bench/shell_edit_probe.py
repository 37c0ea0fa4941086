"""What finding the files a shell command changed costs, on the monorepo of `snapshot_scale.py`.

    python bench/shell_edit_probe.py [--backend bubblewrap|docker] [-n LOOKS]

After every command the model runs, the tools ask git which files of the workspace it changed
(`tools.WorkspaceProbe`: `git add -A` into a private index that trusts unchanged files' size
and mtime, then `git write-tree`, and `git diff-tree` when the tree moved), so that an edit made
by `sed -i` or a formatter counts as one. Measured in a real sandbox over the generated
repository of 26,000 files: the first look of a task (it copies the real index), a look after a
command that changed nothing (p50 and p95 over N), a look after a command that changed one file
(`sed -i`, p50), beside the naive ways in the same sandbox: a full `git status`, and hashing every
file (a hand-written walk). Goal: a look ≤ 50 ms. Exits non-zero when the goal is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from snapshot_scale import FILES, generate  # noqa: E402

from offload.sandbox.manager import SandboxConfig, SandboxManager  # noqa: E402
from offload.server.agent.tools import Tools  # noqa: E402

GOAL_MS = 50.0
HASH_ALL = "find . -path ./.git -prune -o -type f -print0 | xargs -0 sha1sum > /dev/null"


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="bubblewrap", choices=["docker", "bubblewrap"])
    parser.add_argument("-n", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        repo = Path(tmp) / "monorepo"
        print(f"generating {FILES} files…", file=sys.stderr)
        generate(repo)
        manager = SandboxManager(SandboxConfig(backend=args.backend), Path(tmp) / "cache", owner="offload-bench")
        try:
            sandbox = manager.create(manager.snapshot(repo))
            probe = Tools(sandbox, False, lambda call_id, chunk: None, threading.Event()).probe

            def run(script: str) -> None:
                assert sandbox.run(["bash", "-c", script], timeout=600).exit_code == 0, script

            first = timed(probe.changed)
            unchanged = [timed(lambda: probe.changed() and None) for _ in range(args.n)]
            edited = []
            for i in range(max(5, args.n // 5)):
                run(f"sed -i '1s/.*/# edit {i}/' pkg1/mod1/file1.py")
                found: list[str] = []
                edited.append(timed(lambda: found.extend(probe.changed())))
                assert found == ["pkg1/mod1/file1.py"], (i, found)
            status = statistics.median(timed(lambda: run("git status --porcelain > /dev/null")) for _ in range(5))
            hashed = statistics.median(timed(lambda: run(HASH_ALL)) for _ in range(3))
        finally:
            manager.close()
    p50, p95 = statistics.median(unchanged), statistics.quantiles(unchanged, n=20)[-1]
    after_edit = statistics.median(edited)
    ok = p50 <= GOAL_MS and after_edit <= GOAL_MS
    print(f"repository: {FILES} files ({args.backend})")
    print(f"first look of a task (copies the index)   {first:8.1f} ms")
    print(f"look after a command, nothing changed     p50 {p50:6.1f} ms  p95 {p95:6.1f} ms   goal ≤ {GOAL_MS:g} ms   "
          f"{'ok' if p50 <= GOAL_MS else 'MISSED'}")
    print(f"look after a command that changed a file  p50 {after_edit:6.1f} ms               goal ≤ {GOAL_MS:g} ms   "
          f"{'ok' if after_edit <= GOAL_MS else 'MISSED'}")
    print(f"naive: full `git status`                  p50 {status:6.1f} ms ({status / p50:.1f}×)")
    print(f"naive: hashing every file                 p50 {hashed:6.1f} ms ({hashed / p50:.0f}×)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
