"""How long the `offload` verbs that only read or mark tasks take, printed beside the goal.

    python bench/cli_startup.py [-n RUNS] [--tasks N]

Wall time of the installed `offload` command, start to exit, for `--help`, `run --help`,
`tasks`, `show`, `show --log`, `diff` and `cancel`, over a state directory of N tasks (40 by
default) written through the task store, each with a real-sized event log and diff. Beside them,
in the same run: a bare `python -c pass`, and the old way: the same verb with the agent and the
sandbox manager (the model's and Docker's SDKs) imported first, as every verb used to. Exits
non-zero when a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offload.sandbox import owner  # noqa: E402
from offload.server.tasks.store import TaskStore  # noqa: E402

GOAL_MS = 150.0  # p50 wall, each verb that talks to no model and no sandbox
OLD_IMPORTS = "import offload.server.agent.loop, offload.sandbox.manager"


def make_state(state: Path, repo: Path, tasks: int) -> list[str]:
    """`tasks` finished tasks of `repo` and one running (owned by this process, so `cancel` finds it alive)."""
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    store = TaskStore(state / "offload")
    ids = []
    for n in range(tasks + 1):
        running = n == tasks
        task_id = f"20260101-0000{n:02d}-bench{n:02d}"
        store.create({
            "id": task_id, "kind": "code", "prompt": f"Task {n}\n\nContext: calc.py lines 1-9", "repo": str(repo),
            "directory": str(repo), "state": "running" if running else "finished", "reason": "", "created": n,
            "updated": n, "message": "## Summary\n- Fixed it (calc.py:L4-L5).\n\n## Testing\n- `make test` passed [c2]",
            "checks": [], "changes": [{"path": "calc.py", "status": "modified"}], "commit": None, "base": None,
            "steps": 8, "input_tokens": 9000, "output_tokens": 300, "owner": owner.current() if running else None,
            "attempts": 1})
        for step in range(1, 9):
            store.append(task_id, "model.reply", {"step": step, "text": "", "input_tokens": 1000, "output_tokens": 30,
                                                  "cost_usd": 0.0005, "calls": []})
            store.append(task_id, "tool.call", {"id": f"call{step}", "name": "shell",
                                                "arguments": json.dumps({"command": ["make", "test"]})})
            output = "".join(f"line {i} of the test run\n" for i in range(200))
            store.append(task_id, "tool.output", {"id": f"call{step}", "chunk": output})
            store.append(task_id, "tool.result", {"id": f"call{step}", "name": "shell", "chunk": f"c{step}",
                                                  "output": f"Chunk: c{step}\nExit code: 0\nOutput:\n{output}",
                                                  "exit_code": 0, "duration": 0.5})
        store.save_changes(task_id, [], "".join(f"--- a/f{i}.py\n+++ b/f{i}.py\n@@ -1 +1 @@\n-old\n+new\n"
                                                for i in range(50)))
        ids.append(task_id)
    return ids


def wall_ms(argv: list[str], runs: int, env: dict, cwd: Path) -> list[float]:
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        times.append((time.perf_counter() - start) * 1000)
    return times[1:]  # the first warms the page cache


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=40)
    args = parser.parse_args()
    offload = shutil.which("offload", path=str(Path(sys.executable).parent))
    if offload is None:
        sys.exit("no `offload` command beside this Python: install the package (scripts/install.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        ids = make_state(Path(tmp) / "state", repo, args.tasks)
        done, running = ids[0], ids[-1]
        env = {**os.environ, "XDG_STATE_HOME": str(Path(tmp) / "state"), "NO_COLOR": "1"}
        verbs = {"--help": ["--help"], "run --help": ["run", "--help"], "tasks": ["tasks"], "show": ["show", done],
                 "show --log": ["show", done, "--log"], "diff": ["diff", done], "cancel": ["cancel", running]}
        bare = statistics.median(wall_ms([sys.executable, "-c", "pass"], args.runs, env, repo))
        print(f"{args.runs} runs each, {args.tasks + 1} tasks; python -c pass: p50 {bare:.0f} ms\n")
        print(f"{'verb':<12} {'p50':>8} {'p95':>8}   {'old way p50':>11}   goal p50 ≤ {GOAL_MS:.0f} ms")
        missed = False
        for name, verb in verbs.items():
            times = sorted(wall_ms([offload, *verb], args.runs, env, repo))
            old = wall_ms([sys.executable, "-c", f"{OLD_IMPORTS}; import sys; from offload.server.cli import main; "
                           "sys.exit(main(sys.argv[1:]))", *verb], args.runs, env, repo)
            p50, p95 = statistics.median(times), times[int(0.95 * (len(times) - 1))]
            ok = p50 <= GOAL_MS
            missed |= not ok
            print(f"{name:<12} {p50:>5.0f} ms {p95:>5.0f} ms   {statistics.median(old):>8.0f} ms   "
                  f"{'met' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
