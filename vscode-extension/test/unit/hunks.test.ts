import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type Placed, type ServerHunk, applyDecision, hunkLines, hunkView, pendingIds, reviewViews } from "../../src/hunks";

// What `offload.showTask` lists for the scenario "fix-and-document" on examples/calc: the fix of
// `add` and a comment inserted above `return a * b` (server/tasks/review.py `Hunk.as_dict`).
const FIX: ServerHunk = { hunkId: "calc.py#1", path: "calc.py", baseStart: 4, removed: "    return a - b\n",
  added: "    return a + b\n", status: "pending" };
const COMMENT: ServerHunk = { hunkId: "calc.py#2", path: "calc.py", baseStart: 8, removed: "",
  added: "    # the product of a and b\n", status: "pending" };
const CALC = ['"""A tiny calculator with a bug for Offload to fix."""', "", "", "def add(a, b):", "    return a - b", "", "",
  "def multiply(a, b):", "    return a * b"];
const TASK = "20250102-030405-abcdef";

/** Where the server's diagnostics put the hunks when nobody edited the file. */
const AT_BASE: Placed[] = [{ taskId: TASK, hunkId: "calc.py#2", line: 8 }, { taskId: TASK, hunkId: "calc.py#1", line: 4 }];

function views(lines: string[], placed: Placed[], hunks: ServerHunk[] = [FIX, COMMENT]) {
  return reviewViews(placed, (id) => (id === TASK ? hunks : undefined), (i) => lines[i], lines.length);
}

describe("reviewViews", () => {
  test("tints the replaced lines and shows the proposed ones after them, top to bottom", () => {
    assert.deepEqual(views(CALC, AT_BASE), [
      { taskId: TASK, hunkId: "calc.py#1", removed: { start: 4, end: 4 }, added: { after: 4, first: "return a + b", more: 0 },
        hover: "-    return a - b\n+    return a + b" },
      { taskId: TASK, hunkId: "calc.py#2", removed: null, added: { after: 7, first: "# the product of a and b", more: 0 },
        hover: "+    # the product of a and b" },
    ]);
  });

  test("follows the server's new place for a hunk after the user adds lines above it", () => {
    const edited = ["import math", "", ...CALC];
    const moved = AT_BASE.map((p) => ({ ...p, line: p.line + 2 }));
    assert.deepEqual(views(edited, moved).map((v) => [v.hunkId, v.removed, v.added?.after]),
      [["calc.py#1", { start: 6, end: 6 }, 6], ["calc.py#2", null, 9]]);
  });

  test("shows nothing for a hunk whose lines the user changed (the server's diagnostic says so)", () => {
    const edited = CALC.map((l) => (l === "    return a - b" ? "    return b - a" : l));
    const overlapped = [{ taskId: TASK, hunkId: "calc.py#1", line: 0 }];
    assert.deepEqual(views(edited, overlapped), []);
    assert.deepEqual(views(edited, [{ ...overlapped[0], line: 4 }]), []);
  });

  test("skips hunks the task's list has decided, and tasks it does not know", () => {
    const decided = applyDecision([FIX, COMMENT], { type: "review", hunks: ["calc.py#1"], decision: "accepted" });
    assert.deepEqual(views(CALC, AT_BASE, decided).map((v) => v.hunkId), ["calc.py#2"]);
    assert.deepEqual(views(CALC, [{ ...AT_BASE[0], taskId: "another" }]), []);
  });

  test("a multi-line proposal shows its first line and how many follow", () => {
    const docstring = { ...FIX, added: '    """Sum of a and b."""\n    return a + b\n' };
    const [view] = views(CALC, [AT_BASE[1]], [docstring]);
    assert.deepEqual(view.added, { after: 4, first: '"""Sum of a and b."""', more: 1 });
  });

  test("a new file's lines go after its first line; a deleted file's lines are all tinted", () => {
    const created: ServerHunk = { hunkId: "new.txt#1", path: "new.txt", baseStart: 0, removed: "", added: "hello\nworld", status: "pending" };
    assert.deepEqual(hunkView(created, { taskId: TASK, hunkId: "new.txt#1", line: 0 }, () => "", 1)?.added,
      { after: 0, first: "hello", more: 1 });
    const deleted: ServerHunk = { hunkId: "old.txt#1", path: "old.txt", baseStart: 0, removed: "a\r\nb\r\n", added: "", status: "pending" };
    const view = hunkView(deleted, { taskId: TASK, hunkId: "old.txt#1", line: 0 }, (i) => ["a", "b"][i], 2);
    assert.deepEqual([view?.removed, view?.added], [{ start: 0, end: 1 }, null]);
  });

  test("a hunk reaching past the end of the document does not fit", () => {
    assert.equal(hunkView({ ...FIX, removed: "x\ny\n" }, { taskId: TASK, hunkId: FIX.hunkId, line: 0 }, () => "x", 1), null);
  });
});

describe("the task's hunk list", () => {
  test("pending hunks of a file, by the server's ids", () => {
    const other = { ...FIX, hunkId: "test_calc.py#1", path: "test_calc.py" };
    assert.deepEqual(pendingIds([FIX, COMMENT, other], "calc.py"), ["calc.py#1", "calc.py#2"]);
    assert.deepEqual(pendingIds([{ ...FIX, status: "rejected" }, COMMENT], "calc.py"), ["calc.py#2"]);
  });

  test("decisions arrive as review events; other events change nothing", () => {
    const list = [FIX, COMMENT];
    const rejected = applyDecision(list, { type: "review", hunks: ["calc.py#2"], decision: "rejected" });
    assert.deepEqual(rejected.map((h) => h.status), ["pending", "rejected"]);
    assert.equal(applyDecision(list, { type: "state", state: "finished" }), list);
    assert.equal(applyDecision(list, { type: "review", hunks: "calc.py#1", decision: "accepted" }), list);
  });

  test("hunkLines drops line ends and only the final empty piece", () => {
    assert.deepEqual(hunkLines("a\r\n\nb\n"), ["a", "", "b"]);
    assert.deepEqual(hunkLines("a"), ["a"]);
    assert.deepEqual(hunkLines(""), []);
  });
});
