"""The agent harness's own cost per step, printed beside its goal.

    python bench/agent_step.py [-n CONVERSATIONS]

A step is one model call and the tool calls it asks for. Its overhead is everything but the
model's and the commands' own time: the loop, tool dispatch, the sandbox channel, patches read
and written, context upkeep and the event log (a real TaskStore). It is the step's wall time
minus the model call as the client measured it (HTTP, SDK parsing) minus each command's
duration as the in-sandbox runner reported it. The model is the stand-in, the sandbox real
Docker. Exits non-zero when the goal is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from offload.sandbox.manager import SandboxConfig, SandboxManager  # noqa: E402
from offload.server.agent.loop import run_agent  # noqa: E402
from offload.server.agent.model import ModelClient  # noqa: E402
from offload.server.tasks.store import TaskStore  # noqa: E402
from tests.conftest import make_repo  # noqa: E402
from tests.fakemodel import FakeModel, apply_patch, say, shell, update_plan  # noqa: E402

GOAL_MS = 5.0
FORWARD = "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a + b\n*** End Patch"
BACKWARD = FORWARD.replace("-    return a - b\n+    return a + b", "-    return a + b\n+    return a - b")


def working(req):
    """Ten steps of the usual mix (reads, runs, a plan, two patches that cancel out), then a report."""
    yield update_plan([("look", "in_progress"), ("fix", "pending")])
    yield shell(["cat", "calc.py"])
    yield shell(["grep", "-n", "def", "calc.py", "test_calc.py"])
    yield apply_patch(FORWARD)
    yield shell(["python3", "-c", "import calc; print(calc.add(2, 3))"])
    yield shell(["ls", "-la"])
    yield apply_patch(BACKWARD)
    yield shell(["git", "status", "--short"])
    yield shell(["echo", "done"])
    yield update_plan([("look", "completed"), ("fix", "completed")])
    final = "## Summary\n- Nothing changed in the end (calc.py:L4-L5).\n\n## Testing\n- `echo done` passed [c9]"
    yield say(final)
    yield say(final)  # reminded of the sample's required check: the harness runs it


def overheads(events: list[tuple[float, str, dict]]) -> list[tuple[float, float, float]]:
    """(overhead, model, commands) in ms for each step that a next step follows."""
    steps, current = [], None
    for t, kind, data in events:
        if kind == "model.reply":
            start = t - data["duration"]
            if current is not None:
                wall = start - current["start"]
                steps.append((wall - current["model"] - current["commands"], current["model"], current["commands"]))
            current = {"start": start, "model": data["duration"], "commands": 0.0}
        elif kind == "tool.result" and current is not None:
            current["commands"] += data.get("run_duration", 0.0)
    return [(o * 1000, m * 1000, c * 1000) for o, m, c in steps]


async def conversation(sandbox, fm: FakeModel, api: str, stream: bool, store: TaskStore, n: int) -> list:
    events: list[tuple[float, str, dict]] = []

    def emit(kind: str, data: dict) -> None:
        store.append(f"bench-{api}-{stream}-{n}", kind, data)
        events.append((time.perf_counter(), kind, data))

    store.create({"id": f"bench-{api}-{stream}-{n}"})
    model = ModelClient(fm.base_url, "sk-bench", "bench", api=api, stream=stream, timeout=30, max_retries=0)
    try:
        result = await run_agent(sandbox, model, "Look around.", emit, threading.Event())
    finally:
        await model.close()
    assert result.outcome == "completed", result.reason
    return overheads(events)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20, help="conversations per API mode (10 steps each)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        repo = make_repo(Path(tmp) / "calc")
        store = TaskStore(Path(tmp) / "state")
        manager = SandboxManager(SandboxConfig(), Path(tmp) / "cache", owner="offload-bench")
        sandbox = manager.create(manager.snapshot(repo), {"offload.bench": "agent_step"})
        rows = []
        try:
            with FakeModel(default=working) as fm:
                for api, stream in (("chat", False), ("chat", True), ("responses", False), ("responses", True)):
                    asyncio.run(conversation(sandbox, fm, api, stream, store, -1))  # warm up
                    samples = [s for n in range(args.n)
                               for s in asyncio.run(conversation(sandbox, fm, api, stream, store, n))]
                    rows.append((f"{api}{' streamed' if stream else ''}", samples))
        finally:
            manager.close()
    every = [s for _, samples in rows for s in samples]
    print(f"agent step overhead: {len(every)} steps ({args.n} conversations × 9 measured steps × {len(rows)} modes)")
    for label, samples in rows + [("all", every)]:
        over = sorted(o for o, _, _ in samples)
        p95 = over[int(0.95 * (len(over) - 1))]
        print(f"  {label:<20} p50 {statistics.median(over):6.2f} ms  p95 {p95:6.2f} ms   "
              f"(model p50 {statistics.median(m for _, m, _ in samples):5.2f} ms, "
              f"commands p50 {statistics.median(c for _, _, c in samples):5.2f} ms)")
    p50 = statistics.median(o for o, _, _ in every)
    met = p50 <= GOAL_MS
    print(f"  harness overhead per step, p50: {p50:.2f} ms   goal ≤ {GOAL_MS:g} ms   {'ok' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
