"""Commands through the in-sandbox runner, and many sandboxes alive at once, beside the naive way.

    python bench/sandbox_commands.py [-n COMMANDS] [--sandboxes N]

1. Overhead per command: `true` run through a sandbox's runner (one channel kept open, a process
   group per command), p50 over N commands, on Docker and on bubblewrap; beside it the naive way
   on Docker, one `exec_run` per command, measured in the same run. Goal: p50 ≤ 2 ms.
2. N sandboxes alive at once (default 16) on Docker: all created at once from one snapshot, then
   each answers a command while all are alive; the time until all are ready, each one's command
   latency while the others live. Beside it the naive way:
   N `docker run` containers with the repository copied into each.

Exits non-zero when a goal is missed.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import docker as docker_sdk  # noqa: E402

from offload.sandbox.image import DEFAULT_IMAGE  # noqa: E402
from offload.sandbox.manager import COMMAND_ENV, SandboxConfig, SandboxManager  # noqa: E402
from tests.conftest import make_repo  # noqa: E402

COMMAND_GOAL_MS = 2.0


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def per_command(manager: SandboxManager, snapshot, n: int) -> list[float]:
    sandbox = manager.create(snapshot)
    try:
        sandbox.run(["true"])  # warm: the first command pays for the runner's first fork
        times = []
        for _ in range(n):
            start = time.perf_counter()
            result = sandbox.run(["true"])
            times.append(time.perf_counter() - start)
            assert result.exit_code == 0
        return times
    finally:
        manager.destroy(sandbox.id)


def naive_exec(client, n: int) -> list[float]:
    """One `exec_run` per command, the way most agent harnesses drive a container."""
    container = client.containers.run(DEFAULT_IMAGE, ["sleep", "infinity"], detach=True, network_mode="none",
                                      user="1000:1000", remove=True)
    try:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            exit_code, _ = container.exec_run(["true"], environment=COMMAND_ENV)
            times.append(time.perf_counter() - start)
            assert exit_code == 0
        return times
    finally:
        container.remove(force=True)


def alive_at_once(manager: SandboxManager, snapshot, count: int) -> tuple[float, list[float]]:
    """Create `count` sandboxes at once; when all are up, time one command in each."""
    start = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        sandboxes = list(pool.map(lambda _: manager.create(snapshot), range(count)))
    ready = time.perf_counter() - start
    try:
        latencies = []
        for sandbox in sandboxes:
            t = time.perf_counter()
            result = sandbox.run(["python3", "-c", "print(open('calc.py').read().count('def'))"])
            latencies.append(time.perf_counter() - t)
            assert result.exit_code == 0 and result.output.strip() == "2", result.output
        return ready, latencies
    finally:
        with ThreadPoolExecutor(count) as pool:
            list(pool.map(lambda s: manager.destroy(s.id), sandboxes))


def naive_alive(client, repo: Path, count: int) -> float:
    """`docker run` per sandbox with the repository copied in, all at once, until each answers."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(repo, arcname="workspace")
    data = buffer.getvalue()

    def one(_):
        c = client.containers.run(DEFAULT_IMAGE, ["sleep", "infinity"], detach=True, network_mode="none",
                                  remove=True)
        c.put_archive("/", data)
        assert c.exec_run(["true"]).exit_code == 0
        return c

    start = time.perf_counter()
    with ThreadPoolExecutor(count) as pool:
        containers = list(pool.map(one, range(count)))
    elapsed = time.perf_counter() - start
    with ThreadPoolExecutor(count) as pool:
        list(pool.map(lambda c: c.remove(force=True), containers))
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=500, help="commands per measurement")
    parser.add_argument("--sandboxes", type=int, default=16, help="sandboxes alive at once")
    args = parser.parse_args()
    missed = False
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp) / "calc")
        docker = SandboxManager(SandboxConfig(backend="docker"), Path(tmp) / "cache", owner="bench")
        bwrap = SandboxManager(SandboxConfig(backend="bubblewrap"), Path(tmp) / "cache", owner="bench")
        snapshot = docker.snapshot(repo)
        client = docker_sdk.from_env()

        print(f"Overhead per command (`true`, p50 of {args.n}):")
        runner_docker = statistics.median(per_command(docker, snapshot, args.n))
        runner_bwrap = statistics.median(per_command(bwrap, snapshot, args.n))
        naive = statistics.median(naive_exec(client, max(50, args.n // 10)))
        for name, figure in (("Docker, through the runner", runner_docker),
                             ("bubblewrap, through the runner", runner_bwrap)):
            ok = figure * 1000 <= COMMAND_GOAL_MS
            missed |= not ok
            print(f"  {name:<32} {ms(figure):>10}   goal ≤ {COMMAND_GOAL_MS} ms  {'met' if ok else 'MISSED'}"
                  f"   naive exec_run {ms(naive)} ({naive / figure:.0f}× slower)")

        print(f"\n{args.sandboxes} sandboxes alive at once (Docker):")
        ready, latencies = alive_at_once(docker, snapshot, args.sandboxes)
        naive_ready = naive_alive(client, repo, args.sandboxes)
        print(f"  all {args.sandboxes} ready in {ready:.2f} s ({ready / args.sandboxes * 1000:.0f} ms each, "
              f"amortised); naive docker run + copy: {naive_ready:.2f} s (naive / ours = {naive_ready / ready:.2f})")
        print(f"  a command in each while all live: p50 {ms(statistics.median(latencies))}, "
              f"max {ms(max(latencies))}; all {len(latencies)} answered")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
