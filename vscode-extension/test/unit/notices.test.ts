import assert from "node:assert/strict";
import { test } from "node:test";
import { fromServer, notice } from "../../src/notices";
import { type Task, applySummary } from "../../src/tasks";

const running = applySummary(undefined, { taskId: "t1", kind: "code", state: "running", prompt: "Make the failing test pass\n\nContext: calc.py" });
const ended = (state: string, more: object = {}): Task => applySummary(running, { taskId: "t1", state, ...more });

test("a finished task with changes offers Review and Show Task", () => {
  assert.deepEqual(notice(running, ended("finished", { changes: [{ path: "calc.py", status: "modified" }] })), {
    level: "info", text: "Offload: “Make the failing test pass” finished: 1 file changed, ready for review",
    actions: ["Review", "Show Task"],
  });
});

test("a finished task without changes says so", () => {
  assert.equal(notice(running, ended("finished"))?.text, "Offload: “Make the failing test pass” finished with no changes");
});

test("a failure names its reason; one about the model offers its settings", () => {
  const dead = notice(running, ended("failed", { reason: "the model endpoint http://127.0.0.1:9/v1 is unreachable: connection refused" }));
  assert.equal(dead?.level, "error");
  assert.match(dead!.text, /failed: the model endpoint .* connection refused$/);
  assert.deepEqual(dead?.actions, ["Open Settings", "Retry", "Show Task"]);
  assert.deepEqual(notice(running, ended("failed", { reason: "the sandbox ran out of disk" }))?.actions, ["Retry", "Show Task"]);
});

test("no news: a task seen only after it ended, one still running, a cancelled one, an Ask", () => {
  assert.equal(notice(undefined, ended("finished")), undefined);
  assert.equal(notice(ended("finished"), ended("finished")), undefined);
  assert.equal(notice(running, ended("running")), undefined);
  assert.equal(notice(running, ended("cancelled")), undefined);
  const ask = applySummary(undefined, { taskId: "a", kind: "ask", state: "running", prompt: "Why?" });
  assert.equal(notice(ask, applySummary(ask, { taskId: "a", state: "finished" })), undefined);
});

test("the server's own news of a task's end is recognised, other messages are not", () => {
  assert.ok(fromServer("Offload: “Make the failing test pass” finished: 1 change(s) to review"));
  assert.ok(fromServer("Offload: “Fix it” failed: the model endpoint is unreachable"));
  assert.ok(!fromServer("Offload: the editor failed to apply the change: timeout"));
});
