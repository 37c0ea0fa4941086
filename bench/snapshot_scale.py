"""Snapshots of a repository shaped like a real monorepo: a task's first command, cold and after a
one-file edit, beside `cp -a` and `git clone --local` of the same repository in the same run.

    python bench/snapshot_scale.py [--backend docker|bubblewrap]

The repository is generated: 26,000 files in nested packages (mostly small sources, some large
ones, some binaries), 160 MB, and a history of 1,000 commits with a tag every 100 (git
fast-import). Measured: from nothing to a sandbox's first command answered (snapshot, sandbox,
`git describe` run in it), and of that the sandbox's part (from the snapshot taken to the answer):
the rest, the snapshot, is held to `git clone --local`; then the same after one uncommitted edit;
and how much the cache grew for that edit (`du`, which counts a file linked twice once). Exits
non-zero when a goal is missed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offload.sandbox.manager import SandboxConfig, SandboxManager  # noqa: E402

FILES, COMMITS = 26_000, 1_000


def generate(repo: Path) -> None:
    """The repository, through one fast-import stream."""
    rng = random.Random(7)
    paths = []
    blobs = []
    for i in range(FILES):
        path = f"pkg{i % 40}/mod{i % 400}/file{i}.{'bin' if i % 500 == 0 else 'py'}"
        if i % 500 == 0:
            data = rng.randbytes(600_000)
        elif i % 100 == 0:
            data = (f"# large generated module {i}\n" + "VALUE = 'x' * 80\n" * 6000).encode()
        else:
            data = (f"# module {i}\n" + "def f(x):\n    return x + 1\n" * rng.randint(60, 160)).encode()
        paths.append(path)
        blobs.append(data)
    out = bytearray()
    for n, data in enumerate(blobs, 1):
        out += b"blob\nmark :%d\ndata %d\n" % (n, len(data)) + data + b"\n"
    out += b"commit refs/heads/main\ncommitter Dev <dev@example.com> 1700000000 +0000\ndata 7\ninitial\n"
    for n, path in enumerate(paths, 1):
        out += b"M 100644 :%d %s\n" % (n, path.encode())
    for c in range(1, COMMITS):
        path = paths[rng.randrange(FILES)]
        text = f"# change {c}\n".encode()
        out += (b"commit refs/heads/main\ncommitter Dev <dev@example.com> %d +0000\ndata %d\nchange %d\n"
                % (1700000000 + c, len(str(c)) + 7, c))
        out += b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(text), text)
        if c % 100 == 0:
            out += b"tag v%d\nfrom refs/heads/main\ntagger Dev <dev@example.com> %d +0000\ndata 3\ntag\n" % (
                c // 100, 1700000000 + c)
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "fast-import", "--quiet"], input=bytes(out), check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "-f", "main"], check=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True).stdout.split()[0])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", default="docker", choices=["docker", "bubblewrap"])
    parser.add_argument("--rounds", type=int, default=3, help="cold starts, each beside a clone (medians)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        repo = Path(tmp) / "monorepo"
        print(f"generating {FILES} files and {COMMITS} commits…", file=sys.stderr)
        generate(repo)
        size = du(repo) - du(repo / ".git")
        sandbox_part: list[float] = []

        def first_command(manager: SandboxManager) -> None:
            snapshot = manager.snapshot(repo)
            start = time.perf_counter()
            sandbox = manager.create(snapshot)
            described = sandbox.run(["git", "describe", "--tags"]).output.strip()
            assert described.startswith("v9"), described
            sandbox_part.append(time.perf_counter() - start)
            manager.destroy(sandbox.id)

        def measure(fn) -> float:
            subprocess.run(["sync"])  # none pays for the writeback of the one before
            return timed(fn)

        # Rounds interleave the naive ways with a cold start on an empty cache: the disk's pace
        # drifts within a minute, and each figure is the median of its rounds.
        cache = Path(tmp) / "cache"
        cps, clones, colds, snapshots = [], [], [], []
        for _ in range(args.rounds):
            cps.append(measure(lambda: subprocess.run(["cp", "-a", str(repo), f"{tmp}/cp"], check=True)))
            clones.append(measure(lambda: subprocess.run(["git", "clone", "-q", "--local", str(repo), f"{tmp}/clone"],
                                                         check=True)))
            for directory in (f"{tmp}/cp", f"{tmp}/clone", cache):
                shutil.rmtree(directory, ignore_errors=True)
            manager = SandboxManager(SandboxConfig(backend=args.backend), cache, owner="offload-bench")
            try:
                colds.append(measure(lambda: first_command(manager)))
            finally:
                manager.close()
            snapshots.append(colds[-1] - sandbox_part[-1])
        manager = SandboxManager(SandboxConfig(backend=args.backend), cache, owner="offload-bench")
        try:  # the last round's cache: the edit's snapshot links its files
            before = du(Path(tmp) / "cache")
            with open(repo / "pkg1/mod1/file1.py", "a") as f:
                f.write("# one uncommitted line\n")
            edited = measure(lambda: first_command(manager))
            growth = du(Path(tmp) / "cache") - before
        finally:
            manager.close()
    cp, clone, cold, snapshot = (statistics.median(v) for v in (cps, clones, colds, snapshots))
    goals = [("cold: the snapshot", snapshot, clone, snapshot <= clone),
             ("after a one-file edit", edited, 1.0, edited <= 1.0)]
    print(f"repository: {FILES} files, {size / 1e6:.0f} MB of files, {COMMITS} commits ({args.backend}), "
          f"medians of {args.rounds} rounds")
    print(f"cp -a: {cp:.2f} s   git clone --local: {clone:.2f} s ({', '.join(f'{c:.2f}' for c in clones)})")
    print(f"cold, to the first command   {cold:6.2f} s   (the sandbox, over the snapshot: "
          f"{statistics.median(sandbox_part[:-1]):.2f} s; the snapshots: {', '.join(f'{c:.2f}' for c in snapshots)})")
    for name, value, goal, ok in goals:
        print(f"{name:<28} {value:6.2f} s   goal ≤ {goal:.2f} s   {'ok' if ok else 'MISSED'}")
    print(f"cache growth for the edit     {growth / 1e6:6.2f} MB  goal ≤ 1 MB   {'ok' if growth <= 1e6 else 'MISSED'}")
    return 0 if all(ok for *_, ok in goals) and growth <= 1e6 else 1


if __name__ == "__main__":
    sys.exit(main())
