import assert from "node:assert/strict";
import { test } from "node:test";
import { commandText, entriesOf, runsOf } from "../../src/runs";

const EVENTS = [
  { t: 1, type: "state", state: "running" },
  { t: 2, type: "model.reply", step: 1, text: "", input_tokens: 10, output_tokens: 2 },
  { t: 2, type: "tool.call", id: "a", name: "shell", arguments: JSON.stringify({ command: ["python3", "-m", "unittest", "-q"] }) },
  { t: 3, type: "tool.result", id: "a", name: "shell", exit_code: 1, duration: 0.5, chunk: "c1",
    output: "Chunk: c1\nExit code: 1\nWall time: 0.5 seconds\nOutput:\nFAILED (failures=1)\n" },
  { t: 4, type: "tool.call", id: "b", name: "shell", arguments: { command: ["apply_patch", "*** Begin Patch\n*** Update File: calc.py\n-    return a - b\n+    return a + b\n*** End Patch"] } },
  { t: 4, type: "tool.result", id: "b", name: "shell", chunk: "c2", output: "Chunk: c2\nDone!" },
  { t: 5, type: "checks", passed: false, checks: [{ check: "python3 -m unittest", status: "unverified", reason: "no run after the last edit" }] },
  { t: 6, type: "model.reply", step: 2, text: "## Summary\nFixed add [c1]." },
  { t: 7, type: "state", state: "finished" },
  { t: 8, type: "followup", prompt: "Also document add" },
  { t: 9, type: "model.reply", step: 3, text: "## Summary\nDocumented add." },
  { t: 10, type: "state", state: "finished" },
];

test("each run keeps its own prompt, final message and checks", () => {
  const runs = runsOf(EVENTS, "Fix add");
  assert.deepEqual(runs.map((r) => [r.number, r.prompt, r.message]),
    [[1, "Fix add", "## Summary\nFixed add [c1]."], [2, "Also document add", "## Summary\nDocumented add."]]);
  assert.equal(runs[0].checks[0].status, "unverified");
  assert.deepEqual(runs[1].checks, []);
});

test("the log reads as commands with their exit codes and outputs, patches as diffs, checks with their status", () => {
  const entries = entriesOf(runsOf(EVENTS, "Fix add")[0].events);
  assert.deepEqual(entries.map((e) => e.kind), ["line", "step", "command", "patch", "checks", "step", "line"]);
  const command = entries[2];
  assert.ok(command.kind === "command");
  assert.deepEqual([command.command, command.exit, command.chunk, command.output],
    ["python3 -m unittest -q", 1, "c1", "FAILED (failures=1)\n"]);
  const patch = entries[3];
  assert.ok(patch.kind === "patch");
  assert.deepEqual(patch.lines, ["*** Update File: calc.py", "-    return a - b", "+    return a + b"]);
  assert.equal(patch.result, "Done!");
});

test("commands are quoted as a shell reads them", () => {
  assert.equal(commandText(["grep", "-n", "def add", "calc.py"]), "grep -n 'def add' calc.py");
});
