import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  applyEvent, applySummary, counts, countsText, describe as describeTask, formatElapsed, lastRunStart, reviewOf, reviewText,
  reviewable,
} from "../../src/tasks";

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
    assert.equal(describeTask(task, 500), "finished · no changes · 12s · 1.5k tokens · $0.0123");
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
    assert.match(describeTask(task, 0), /^finished · discarded/);
    task = applyEvent(task, ID, { t: 6, type: "state", state: "queued", reason: "follow-up" });
    assert.equal(task.discarded, false);
    assert.equal(task.ended, null);
  });

  test("an Ask is never reviewable", () => {
    const task = applySummary(undefined, { taskId: ID, kind: "ask", state: "finished", changes: [{ path: "a", status: "added" }] });
    assert.ok(!reviewable(task));
  });

  test("unknown events change nothing", () => {
    const task = applySummary(undefined, { taskId: ID, state: "running" });
    assert.deepEqual(applyEvent(task, ID, { type: "tool.output", chunk: "x" }), task);
  });

  test("counts running and finished tasks", () => {
    const states = ["queued", "preparing", "running", "finished", "finished", "failed", "cancelled"];
    const tasks = states.map((state, i) => applySummary(undefined, { taskId: `t${i}`, state }));
    assert.deepEqual(counts(tasks), { running: 3, finished: 2, failed: 1 });
    assert.equal(countsText(tasks), "3 running · 2 finished · 1 failed");
    assert.equal(countsText(tasks.slice(0, 4)), "3 running · 1 finished");
  });

  test("a follow-up's elapsed time counts from its own start", () => {
    let task = applyEvent(undefined, ID, { t: 100, type: "state", state: "queued" });
    task = applyEvent(task, ID, { t: 110, type: "state", state: "finished" });
    task = applyEvent(task, ID, { t: 500, type: "state", state: "queued", reason: "follow-up" });
    task = applyEvent(task, ID, { t: 501, type: "state", state: "running" });
    assert.equal(describeTask(task, 507), "running · 7s");
    task = applyEvent(task, ID, { t: 530, type: "state", state: "finished" });
    assert.equal(describeTask(task, 9999), "finished · no changes · 30s");
  });

  test("a task's log says when its last run began", () => {
    assert.equal(lastRunStart([{ t: 1, type: "state", state: "queued" }, { t: 5, type: "state", state: "finished" },
      { t: 9, type: "followup" }, { t: 9.5, type: "state", state: "queued" }, { t: 12, type: "state", state: "running" }]), 9.5);
    assert.equal(lastRunStart([]), null);
  });

  test("the view says how much is left to review, and offers Apply/Discard only while something is", () => {
    const changes = [{ path: "calc.py", status: "modified" }];
    let task = applySummary(undefined, { taskId: ID, kind: "code", state: "finished", changes, created: 0, updated: 3 });
    assert.equal(describeTask(task, 9), "finished · 3s"); // hunks not known yet: still offered
    assert.ok(reviewable(task));
    task = { ...task, review: reviewOf([{ status: "pending" }, { status: "accepted" }, { status: "pending" }]) };
    assert.equal(reviewText(task), "2 of 3 to review");
    assert.ok(reviewable(task));
    task = { ...task, review: reviewOf([{ status: "rejected" }, { status: "accepted" }]) };
    assert.equal(reviewText(task), "reviewed");
    assert.ok(!reviewable(task));
    const none = applySummary(undefined, { taskId: ID, kind: "code", state: "finished", changes: [] });
    assert.equal(reviewText(none), "no changes");
    assert.ok(!reviewable(none));
  });
});

test("formatElapsed", () => {
  assert.deepEqual([0, 59.4, 61, 3599, 3661].map(formatElapsed), ["0s", "59s", "1m 01s", "59m 59s", "1h 01m"]);
});
