import assert from "node:assert/strict";
import { describe, test } from "node:test";
import {
  LONG_CHANGE, type Placed, type ServerHunk, applyDecision, changeMarkdown, changeTitle, hunkAt, hunkLines, hunkView, isLong, nextSpot,
  pendingIds, reviewViews,
} from "../../src/hunks";

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
  test("tints the replaced lines and shows the whole change under them, top to bottom", () => {
    assert.deepEqual(views(CALC, AT_BASE), [
      { taskId: TASK, hunkId: "calc.py#1", removed: { start: 4, end: 4 }, anchor: 4, counts: { removed: 1, added: 1 },
        diff: "-    return a - b\n+    return a + b" },
      { taskId: TASK, hunkId: "calc.py#2", removed: null, anchor: 7, counts: { removed: 0, added: 1 },
        diff: "+    # the product of a and b" },
    ]);
  });

  test("follows the server's new place for a hunk after the user adds lines above it", () => {
    const edited = ["import math", "", ...CALC];
    const moved = AT_BASE.map((p) => ({ ...p, line: p.line + 2 }));
    assert.deepEqual(views(edited, moved).map((v) => [v.hunkId, v.removed, v.anchor]),
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

  test("a multi-line change shows every removed and every added line", () => {
    const rewrite = { ...COMMENT, hunkId: "calc.py#1", removed: "def multiply(a, b):\n    return a * b\n",
      added: "def multiply(a, b):\n    # the product of a and b\n    product = a * b\n    return product\n" };
    const [view] = views(CALC, [{ taskId: TASK, hunkId: "calc.py#1", line: 7 }], [rewrite]);
    assert.deepEqual([view.removed, view.anchor, view.counts], [{ start: 7, end: 8 }, 8, { removed: 2, added: 4 }]);
    assert.equal(changeMarkdown(view), "```diff\n-def multiply(a, b):\n-    return a * b\n+def multiply(a, b):\n"
      + "+    # the product of a and b\n+    product = a * b\n+    return product\n```");
  });

  test("a new file's lines go after its first line; a deleted file's lines are all tinted", () => {
    const created: ServerHunk = { hunkId: "new.txt#1", path: "new.txt", baseStart: 0, removed: "", added: "hello\nworld", status: "pending" };
    const made = hunkView(created, { taskId: TASK, hunkId: "new.txt#1", line: 0 }, () => "", 1);
    assert.deepEqual([made?.anchor, made?.diff], [0, "+hello\n+world"]);
    const deleted: ServerHunk = { hunkId: "old.txt#1", path: "old.txt", baseStart: 0, removed: "a\r\nb\r\n", added: "", status: "pending" };
    const view = hunkView(deleted, { taskId: TASK, hunkId: "old.txt#1", line: 0 }, (i) => ["a", "b"][i], 2);
    assert.deepEqual([view?.removed, view?.anchor, view?.diff], [{ start: 0, end: 1 }, 1, "-a\n-b"]);
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

describe("the whole change under a hunk", () => {
  const long = (n: number) => ({ diff: Array.from({ length: n }, (_, i) => `+line ${i + 1}`).join("\n"), counts: { removed: 0, added: n } });

  test("a long change keeps every line, folded at first, its title saying how many", () => {
    const view = long(LONG_CHANGE + 25);
    const body = changeMarkdown(view).split("\n");
    assert.equal(body.length, LONG_CHANGE + 25 + 2);
    assert.equal(body[LONG_CHANGE + 25], `+line ${LONG_CHANGE + 25}`);
    assert.ok(isLong(view));
    assert.equal(changeTitle(view, "Fix add"), `Offload: +${LONG_CHANGE + 25} −0 — Fix add · ${LONG_CHANGE + 25} lines, folded: expand to see them`);
    assert.ok(!isLong(long(LONG_CHANGE)));
    assert.equal(changeTitle({ counts: { removed: 1, added: 2 } }, "Fix add"), "Offload: +2 −1 — Fix add");
  });

  test("a line of backticks cannot end the block early", () => {
    const body = changeMarkdown({ diff: "-```\n+````js" });
    assert.ok(body.startsWith("`````diff\n") && body.endsWith("\n`````"), body);
  });
});

describe("the hunk at the cursor", () => {
  const placed: Placed[] = [{ taskId: TASK, hunkId: "calc.py#1", line: 4, end: 5 }, { taskId: TASK, hunkId: "calc.py#3", line: 10, end: 13 },
    { taskId: TASK, hunkId: "calc.py#2", line: 8, end: 8 }];

  test("is the one whose lines the cursor is on; none between hunks", () => {
    assert.equal(hunkAt(placed, 4)?.hunkId, "calc.py#1");
    assert.equal(hunkAt(placed, 12)?.hunkId, "calc.py#3");
    assert.equal(hunkAt(placed, 8)?.hunkId, "calc.py#2"); // a diagnostic covers one line at least
    assert.equal(hunkAt(placed, 5), undefined);
    assert.equal(hunkAt(placed, 13), undefined);
  });
});

describe("the next and previous change", () => {
  const A = "file:///repo/a.py";
  const B = "file:///repo/b.py";
  const C = "file:///repo/c.py";
  const spots = [{ file: B, line: 9 }, { file: A, line: 20 }, { file: B, line: 2 }, { file: A, line: 4 }, { file: C, line: 0 }];

  test("goes down the file, then to the next file's first, and round to the first file", () => {
    assert.deepEqual(nextSpot(spots, { file: A, line: 0 }, true), { file: A, line: 4 });
    assert.deepEqual(nextSpot(spots, { file: A, line: 4 }, true), { file: A, line: 20 });
    assert.deepEqual(nextSpot(spots, { file: A, line: 25 }, true), { file: B, line: 2 });
    assert.deepEqual(nextSpot(spots, { file: C, line: 0 }, true), { file: A, line: 4 });
  });

  test("backwards, up the file, then to the previous file's last, and round to the last file", () => {
    assert.deepEqual(nextSpot(spots, { file: B, line: 9 }, false), { file: B, line: 2 });
    assert.deepEqual(nextSpot(spots, { file: B, line: 2 }, false), { file: A, line: 20 });
    assert.deepEqual(nextSpot(spots, { file: A, line: 4 }, false), { file: C, line: 0 });
    assert.deepEqual(nextSpot(spots, { file: A, line: 10 }, false), { file: A, line: 4 }); // inside a hunk: to its start
  });

  test("wraps within the only file; from a file without any, to the next file that has one", () => {
    const one = [{ file: A, line: 4 }, { file: A, line: 20 }];
    assert.deepEqual(nextSpot(one, { file: A, line: 20 }, true), { file: A, line: 4 });
    assert.deepEqual(nextSpot(one, { file: A, line: 4 }, false), { file: A, line: 20 });
    assert.deepEqual(nextSpot(spots, { file: "file:///repo/abc.py", line: 3 }, true), { file: B, line: 2 });
    assert.deepEqual(nextSpot(one, { file: "", line: -1 }, false), { file: A, line: 20 });
    assert.equal(nextSpot([], { file: A, line: 0 }, true), undefined);
  });
});
