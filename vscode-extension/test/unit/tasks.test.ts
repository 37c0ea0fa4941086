import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { applyEvent, applySummary, counts, describe as describeTask, formatElapsed, reviewable } from "../../src/tasks";

const ID = "20250102-030405-abcdef";

describe("the task reducer", () => {
  test("a summary creates a task, with its start read from its id", () => {
    const task = applySummary(undefined, { taskId: ID, kind: "code", state: "queued", prompt: "Fix it", repo: "/r" });
    assert.equal(task.state, "queued");
    assert.equal(task.prompt, "Fix it");
    assert.equal(task.started, new Date(2025, 0, 2, 3, 4, 5).getTime() / 1000);
  });

  test("events drive the state, the elapsed time, tokens and cost", () => {
    let task = applyEvent(undefined, ID, { t: 100, type: "state", state: "queued" });
    task = applyEvent(task, ID, { t: 101, type: "state", state: "running", reason: "working" });
    task = applyEvent(task, ID, { t: 103, type: "model.reply", total_tokens: 1500, total_cost_usd: 0.0123 });
    assert.equal(describeTask(task, 105), "running · 5s · 1.5k tokens · $0.0123");
    task = applyEvent(task, ID, { t: 112, type: "state", state: "finished", reason: "the model finished" });
    assert.equal(describeTask(task, 500), "finished · 12s · 1.5k tokens · $0.0123");
    assert.equal(task.reason, "the model finished");
  });

  test("summaries keep what events taught and add the changes", () => {
    let task = applyEvent(undefined, ID, { t: 100, type: "state", state: "finished" });
    task = applySummary(task, { taskId: ID, kind: "code", state: "finished", changes: [{ path: "calc.py", status: "modified" }],
      input_tokens: 900, output_tokens: 100 });
    assert.equal(task.ended, 100);
    assert.equal(task.tokens, 1000);
    assert.ok(reviewable(task));
  });

  test("the server's timestamps win when it sends them", () => {
    const task = applySummary(undefined, { taskId: ID, state: "failed", created: 10, updated: 70, cost_usd: 0.5 });
    assert.equal(describeTask(task, 1000), "failed · 1m 00s · $0.5000");
  });

  test("a discarded task is no longer reviewable; a follow-up reopens it", () => {
    let task = applySummary(undefined, { taskId: ID, kind: "code", state: "finished", changes: [{ path: "a", status: "added" }] });
    task = applyEvent(task, ID, { t: 5, type: "discarded" });
    assert.ok(!reviewable(task));
    assert.match(describeTask(task, 0), /^finished, discarded/);
    task = applyEvent(task, ID, { t: 6, type: "state", state: "queued", reason: "follow-up" });
    assert.equal(task.discarded, false);
    assert.equal(task.ended, null);
  });

  test("an Ask is never reviewable", () => {
    const task = applySummary(undefined, { taskId: ID, kind: "ask", state: "finished", changes: [{ path: "a", status: "added" }] });
    assert.ok(!reviewable(task));
  });

  test("unknown events change nothing but the start", () => {
    const task = applySummary(undefined, { taskId: ID, state: "running" });
    assert.deepEqual(applyEvent(task, ID, { type: "tool.output", chunk: "x" }), task);
  });

  test("counts running and finished tasks", () => {
    const states = ["queued", "preparing", "running", "finished", "finished", "failed", "cancelled"];
    const tasks = states.map((state, i) => applySummary(undefined, { taskId: `t${i}`, state }));
    assert.deepEqual(counts(tasks), { running: 3, finished: 2 });
  });
});

test("formatElapsed", () => {
  assert.deepEqual([0, 59.4, 61, 3599, 3661].map(formatElapsed), ["0s", "59s", "1m 01s", "59m 59s", "1h 01m"]);
});
