"""Sixteen tasks at once through the real language server: is the editor still served?

    python bench/tasks_16.py [-n TASKS] [--delay SECONDS]

`offload serve` runs over stdio, spoken to in raw JSON-RPC (tests/lsp_wire.py) like an editor
that declares VS Code's capabilities. It starts TASKS Code tasks at once, each in its own Docker
sandbox, against the model stand-in (in its own process, so that it takes no time from this
one's measuring) whose every reply takes DELAY seconds, so that the tasks overlap. While they
run, the "editor" keeps asking for code actions and running commands, and types in an open file. Then one task writes a 100-file, 5,000-line change and is applied.

Figures, each beside its goal:
- code action and command response time, p99, while the tasks run: ≤ 20 ms;
- the daemon's peak RSS, the language server's and its task worker's together (VmHWM in /proc):
  ≤ 300 MB;
- from `offload.code` to the task's first `$/progress`: ≤ 100 ms (p99 and max);
- `offload.apply` of the 100-file change, from the request to the `workspace/applyEdit` the
  server sends: ≤ 200 ms.

The stand-in editor keeps every message the server sends; its own garbage collector is paused
while it measures, so that its collection pauses are not charged to the server.

Exits non-zero when a goal is missed.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.conftest import git, make_repo  # noqa: E402
from tests.fakemodel import apply_patch, hang, say, scenario, shell  # noqa: E402
from tests.lsp_wire import StdioServer  # noqa: E402
from tests.scenarios import FIX_ADD, UNITTEST, report  # noqa: E402

FILES, LINES = 100, 50  # the wide change: every line of 100 files of 50 lines
GOALS = {"response": 20.0, "rss": 300.0, "progress": 100.0, "apply": 200.0}
CAPABILITIES = {  # what VS Code declares, as far as the server looks
    "window": {"workDoneProgress": True},
    "workspace": {"workspaceEdit": {"documentChanges": True, "resourceOperations": ["create", "rename", "delete"],
                                    "changeAnnotationSupport": {"groupsOnLabel": True}},
                  "codeLens": {"refreshSupport": True}},
    "textDocument": {"codeAction": {"codeActionLiteralSupport": {"codeActionKind": {"valueSet": ["quickfix"]}}}},
}
DELAY = float(os.environ.get("BENCH_MODEL_DELAY", "0.5"))  # read again by the stand-in's process


@scenario("bench")
def bench(req):
    """A task of the usual shape, each reply DELAY late; or, asked for it, the 100-file change."""
    if "every module" in req.prompt:
        out = yield shell(["bash", "-lc", "sed -i 's/value/VALUE/' pkg/*.py && git diff --shortstat"])
        assert f"{FILES} files changed" in out, out
        summary = f"## Summary\n- Renamed value in every module (pkg/mod_000.py:L1-L{LINES})."
        yield say(summary)
        return (yield say(summary))  # reminded of the sample's required check (the sed is an edit): the harness runs it
    for command in (["cat", "calc.py"], UNITTEST, ["grep", "-n", "def add", "calc.py"], ["ls", "-la"]):
        yield hang(DELAY)
        yield shell(command)
    yield hang(DELAY)
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    yield hang(DELAY)
    out = yield shell(UNITTEST)
    yield hang(DELAY)
    yield say(report(["Fixed `add` (calc.py:L4-L5)."], [(" ".join(UNITTEST), "passed" if "OK" in out else "failed")]))


def wide_repo(path: Path) -> Path:
    """The sample repository plus 100 modules of 50 lines each."""
    repo = make_repo(path)
    (repo / "pkg").mkdir()
    for n in range(FILES):
        (repo / "pkg" / f"mod_{n:03}.py").write_text(
            "".join(f"value_{k} = {n * LINES + k}  # value {k}\n" for k in range(LINES)))
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "modules")
    return repo


class RssSampler(threading.Thread):
    """The daemon's resident memory (the server's and its children's: the task worker), sampled
    from /proc every 50 ms; the kernel's peaks at the end."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stop = pid, [], threading.Event()

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text().split()
        return [self.pid, *map(int, children)]

    def status(self, field: str) -> float:
        """The sum over the daemon's processes of a /proc/<pid>/status field, in MB."""
        total = 0
        for pid in self.pids():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
        return total / 1024  # kB → MB

    def run(self) -> None:
        while not self.stop.wait(0.05):
            try:
                self.samples.append(self.status("VmRSS"))
            except OSError:
                return


def timed(server: StdioServer, method: str, params) -> tuple[float, dict]:
    started = time.monotonic()
    reply = server.call(method, params)
    assert "result" in reply, reply
    return (time.monotonic() - started) * 1000, reply["result"]


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def model_stand_in(delay: float) -> tuple[subprocess.Popen, str]:
    """tests/fakemodel.py serving this module's scenario in a process of its own; its base URL."""
    root = Path(__file__).resolve().parent
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakemodel", "--scenarios", Path(__file__).stem], stdout=subprocess.PIPE,
        text=True, cwd=root.parent,
        env={**os.environ, "PYTHONPATH": f"{root.parent}{os.pathsep}{root}", "BENCH_MODEL_DELAY": str(delay)})
    line = proc.stdout.readline()
    assert line.startswith("READY "), line
    return proc, line.split()[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=16, help="tasks at once")
    parser.add_argument("--delay", type=float, default=DELAY, help="seconds each model reply takes")
    args = parser.parse_args(argv)
    model, base_url = model_stand_in(args.delay)
    try:
        return run(args.n, args.delay, base_url)
    finally:
        model.terminate()
        model.wait()


def run(count: int, delay: float, base_url: str) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        env = {f"XDG_{d}_HOME": str(tmp_path / "xdg" / d.lower()) for d in ("STATE", "CACHE", "CONFIG")}
        env = {**env, "OPENAI_API_KEY": "sk-bench"}
        repo = wide_repo(tmp_path / "calc")
        calc = (repo / "calc.py").as_uri()
        with StdioServer(env=env) as server:
            sampler = RssSampler(server.proc.pid)
            sampler.start()
            server.initialize(repo, {"model": {"base_url": base_url, "name": "bench"},
                                     "tasks": {"concurrency": count}}, CAPABILITIES)
            server.notify("textDocument/didOpen", {"textDocument": {
                "uri": calc, "languageId": "python", "version": 1, "text": (repo / "calc.py").read_text()}})
            code_action = {"textDocument": {"uri": calc},
                           "range": {"start": {"line": 4, "character": 0}, "end": {"line": 4, "character": 10}},
                           "context": {"diagnostics": [{"range": {"start": {"line": 4, "character": 4},
                                                                  "end": {"line": 4, "character": 16}},
                                                        "message": "add() subtracts", "source": "pytest"}]}}
            timed(server, "textDocument/codeAction", code_action)  # warm up
            timed(server, "workspace/executeCommand", {"command": "offload.listTasks", "arguments": [{}]})

            # sixteen tasks at once, and the time from each command to its first progress
            gc.disable()
            started, ids, commands = time.monotonic(), [], []
            for n in range(count):
                sent = time.monotonic()
                ms, result = timed(server, "workspace/executeCommand", {
                    "command": "offload.code", "arguments": [{"prompt": f"Task {n}: make the failing test pass"}]})
                commands.append(ms)
                ids.append((result["taskId"], sent))
            progress = []
            for task_id, sent in ids:
                token = f"offload-{task_id}"
                server.wait_for(lambda m, t=token: m.get("method") == "$/progress" and m["params"]["token"] == t)
                arrived = next(t for t, m in server.messages
                               if m.get("method") == "$/progress" and m["params"]["token"] == token)
                progress.append((arrived - sent) * 1000)

            # the editor at work while they run
            actions, version = [], 1
            while True:
                tasks = timed(server, "workspace/executeCommand",
                              {"command": "offload.listTasks", "arguments": [{}]})
                commands.append(tasks[0])
                if all(t["state"] in ("finished", "failed", "cancelled") for t in tasks[1]["tasks"]):
                    break
                ms, result = timed(server, "textDocument/codeAction", code_action)
                assert result and "Offload: fix this" in [a["title"] for a in result], result
                actions.append(ms)
                shown = timed(server, "workspace/executeCommand",
                              {"command": "offload.showTask", "arguments": [{"taskId": ids[version % count][0]}]})
                commands.append(shown[0])
                version += 1
                server.notify("textDocument/didChange", {"textDocument": {"uri": calc, "version": version},
                                                         "contentChanges": [{"range": {
                                                             "start": {"line": 0, "character": 0},
                                                             "end": {"line": 0, "character": 0}}, "text": "#"}]})
                time.sleep(0.02)
            elapsed = time.monotonic() - started
            gc.enable()
            states = [t["state"] for t in tasks[1]["tasks"]]
            for t in tasks[1]["tasks"]:
                if t["state"] != "finished":
                    print(f"task {t['taskId']} {t['state']}: {t['reason']}")

            # the wide change, applied (the editor declines it, so it can be applied again)
            server.answers["workspace/applyEdit"] = lambda m: {"applied": False}
            wide = timed(server, "workspace/executeCommand", {"command": "offload.code", "arguments": [
                {"prompt": "Rename value in every module"}]})[1]["taskId"]
            while timed(server, "workspace/executeCommand", {"command": "offload.showTask", "arguments": [
                    {"taskId": wide}]})[1]["state"] not in ("finished", "failed", "cancelled"):
                time.sleep(0.1)
            applies, files = [], 0
            for _ in range(10):
                since = len(server.messages)
                sent = time.monotonic()
                reply = server.command("offload.apply", {"taskId": wide})
                assert "result" in reply, reply
                files = len(reply["result"]["files"])
                server.wait_for(lambda m: m.get("method") == "workspace/applyEdit", since=since)
                arrived = next(t for t, m in server.messages[since:] if m.get("method") == "workspace/applyEdit")
                applies.append((arrived - sent) * 1000)
                time.sleep(0.3)  # the decline is recorded before the next apply
            sampler.stop.set()
            peak = sampler.status("VmHWM")

    print(f"{count} tasks at once, model replies {delay:g} s late: {states.count('finished')}/{len(states)} "
          f"finished in {elapsed:.1f} s; {len(actions)} code actions and {len(commands)} commands meanwhile")
    rows = [
        ("code action response, p99", p99(actions), GOALS["response"], "ms"),
        ("command response, p99", p99(commands), GOALS["response"], "ms"),
        ("daemon peak RSS", peak, GOALS["rss"], "MB"),
        ("command to first $/progress, p99", p99(progress), GOALS["progress"], "ms"),
        (f"apply {files} files / {FILES * LINES} lines, median", statistics.median(applies), GOALS["apply"], "ms"),
    ]
    for label, value, goal, unit in rows:
        print(f"  {label:<42} {value:8.1f} {unit}   goal ≤ {goal:g} {unit}   {'ok' if value <= goal else 'MISSED'}")
    print(f"  (code action p50 {statistics.median(actions):.1f} ms, max {max(actions):.1f}; command p50 "
          f"{statistics.median(commands):.1f} ms, max {max(commands):.1f}; progress max {max(progress):.1f} ms; "
          f"RSS sampled max {max(sampler.samples):.0f} MB; apply max {max(applies):.1f} ms)")
    met = all(value <= goal for _, value, goal, _ in rows) and states.count("finished") == len(states)
    return 0 if met else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main(sys.argv[1:]))
