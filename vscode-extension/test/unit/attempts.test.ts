import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { attemptRows } from "../../src/attempts";
import { applyEvent, applySummary, describe as describeTask } from "../../src/tasks";

const ID = "20250102-030405-abcdef";

// A best-of-3 task as the server summarises it: attempt 2 chosen, attempt 3 failed without a change.
const RESULTS = [
  { attempt: 2, state: "finished", reason: "", passed: 1, failed: 0, diffLines: 2, changes: [{ path: "calc.py", status: "modified" }],
    cost_usd: 0.0123 },
  { attempt: 1, state: "finished", reason: "", passed: 0, failed: 1, diffLines: 14, changes: 2, cost_usd: null },
  { attempt: 3, state: "failed", reason: "the model endpoint failed", passed: null, failed: null, diffLines: 0, changes: [],
    cost_usd: 0 },
];

describe("best-of-N", () => {
  test("the Tasks view says which attempt of how many", () => {
    let task = applySummary(undefined, { taskId: ID, kind: "code", state: "running", attempts: 3, attempt: null });
    assert.equal(describeTask(task, task.started! + 5), "running · 3 attempts · 5s");
    task = applySummary(task, { taskId: ID, state: "finished", attempt: 2, attemptResults: RESULTS,
      changes: [{ path: "calc.py", status: "modified" }] });
    assert.equal(describeTask(task, 0), "finished · attempt 2 of 3");
    assert.equal(task.attemptResults.length, 3);
  });

  test("a single attempt says nothing about attempts", () => {
    const task = applySummary(undefined, { taskId: ID, kind: "ask", state: "finished", attempts: 1, attempt: 1 });
    assert.equal(describeTask(task, 0), "finished");
    assert.equal(describeTask(applySummary(undefined, { taskId: ID, kind: "ask", state: "finished" }), 0), "finished");
  });

  test("a summary without attempt fields keeps what was known; a null attempt resets it", () => {
    let task = applySummary(undefined, { taskId: ID, state: "finished", attempts: 3, attempt: 2, attemptResults: RESULTS });
    task = applySummary(task, { taskId: ID, state: "finished", discarded: true });
    assert.deepEqual([task.attempts, task.attempt, task.attemptResults.length], [3, 2, 3]);
    task = applySummary(task, { taskId: ID, state: "queued", attempt: null });
    assert.equal(task.attempt, null);
  });

  test("the task page lists each attempt in order with its checks and change size", () => {
    assert.deepEqual(attemptRows(RESULTS, 2, "finished"), [
      { attempt: 1, chosen: false, title: "Attempt 1", outcome: "finished", checks: "✘ 1", change: "14 lines in 2 files", cost: "",
        canApply: true },
      { attempt: 2, chosen: true, title: "Attempt 2 (chosen)", outcome: "finished", checks: "✔ 1", change: "2 lines in 1 file",
        cost: "$0.0123", canApply: true },
      { attempt: 3, chosen: false, title: "Attempt 3", outcome: "failed: the model endpoint failed", checks: "no checks run",
        change: "no change", cost: "", canApply: false },
    ]);
  });

  test("applying another attempt makes it the chosen one, with its files", () => {
    let task = applySummary(undefined, { taskId: ID, kind: "code", state: "finished", attempts: 3, attempt: 2,
      attemptResults: RESULTS, changes: RESULTS[0].changes as { path: string; status: string }[] });
    task = applyEvent(task, ID, { t: 9, type: "attempt.chosen", chosen: 3 });
    assert.deepEqual([task.attempt, task.changes], [3, []]);
    assert.equal(describeTask(task, 0), "finished · no changes · attempt 3 of 3");
  });

  test("nothing can be applied before the task ends", () => {
    assert.ok(attemptRows(RESULTS, null, "running").every((r) => !r.canApply && !r.chosen));
  });
});
