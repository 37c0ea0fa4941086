import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { citationArgument, columnBesidePage } from "../../src/citation";

describe("a citation clicked on the task page", () => {
  test("goes to offload.openCitation with the task and the cited lines of its result", () => {
    assert.deepEqual(citationArgument("t1", { path: "calc.py", start: 4, end: 10 }),
      { taskId: "t1", path: "calc.py", line: 4, endLine: 10 });
    assert.deepEqual(citationArgument("t1", { path: "calc.py", start: 7, end: 7 }), { taskId: "t1", path: "calc.py", line: 7, endLine: 7 });
    assert.deepEqual(citationArgument("t1", { path: "calc.py", start: 7, end: 3 }).endLine, 7);
  });

  test("a malformed one is an error that says what came", () => {
    assert.throws(() => citationArgument("t1", { path: "calc.py", start: 0, end: 2 }), /not a citation.*"start":0/);
    assert.throws(() => citationArgument("t1", { path: "", start: 1, end: 2 }), /not a citation/);
    assert.throws(() => citationArgument("t1", { path: "a", start: Number.NaN, end: 2 }), /not a citation/);
  });

  test("the cited file opens beside the page, not over it; elsewhere where the editor opens it", () => {
    assert.equal(columnBesidePage([{ viewColumn: 1, isActive: false }, { viewColumn: 2, isActive: true }], true), 1);
    assert.equal(columnBesidePage([{ viewColumn: 1, isActive: true }, { viewColumn: 2, isActive: false }], true), 2);
    assert.equal(columnBesidePage([{ viewColumn: 1, isActive: true }], true), -2);
    assert.equal(columnBesidePage([{ viewColumn: 1, isActive: false }, { viewColumn: 2, isActive: true }], false), undefined);
  });
});
