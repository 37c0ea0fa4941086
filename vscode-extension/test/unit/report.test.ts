import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { CHECK_MARKS, checkLabel, checkText, findCitations, splitCitations, splitTesting } from "../../src/report";

describe("citations", () => {
  test("reads the forms the server accepts", () => {
    const found = findCitations("See calc.py:L4-L10, src/a/b.ts:12 and calc.py:L7, also x.py:3-5:2.");
    assert.deepEqual(found.map(({ path, start, end }) => [path, start, end]),
      [["calc.py", 4, 10], ["src/a/b.ts", 12, 12], ["calc.py", 7, 7], ["x.py", 3, 5]]);
  });

  test("ignores times, hosts and URLs", () => {
    assert.deepEqual(findCitations("at 12:30 on localhost:8000 or 127.0.0.1:80, http://h.io:8080/x"), []);
  });

  test("accepts a bare name when the line has an L", () => {
    assert.deepEqual(findCitations("Makefile:L3").map((c) => c.path), ["Makefile"]);
  });

  test("splits text into plain pieces and citations", () => {
    const pieces = splitCitations("Fixed `add` (calc.py:L4-L5).");
    assert.equal(pieces.length, 3);
    assert.equal(pieces[0], "Fixed `add` (");
    assert.deepEqual(pieces[1], { index: 13, text: "calc.py:L4-L5", path: "calc.py", start: 4, end: 5 });
    assert.equal(pieces[2], ").");
  });
});

describe("splitTesting", () => {
  test("takes the Testing section out of the message", () => {
    const message = "## Summary\n- Fixed it (calc.py:L4-L5).\n\n## Testing\n- ✅ `python3 -m unittest -q` passed\n\n## Notes\nnone";
    assert.deepEqual(splitTesting(message), {
      summary: "## Summary\n- Fixed it (calc.py:L4-L5).\n\n## Notes\nnone",
      testing: "## Testing\n- ✅ `python3 -m unittest -q` passed",
    });
  });

  test("a heading inside fenced code is code", () => {
    const message = "Answer\n```sh\n# testing things\necho\n```\nmore";
    assert.deepEqual(splitTesting(message), { summary: message, testing: "" });
  });
});

test("checkText drops the model's own mark", () => {
  assert.equal(checkText("✅ `python3 -m unittest -q` passed"), "`python3 -m unittest -q` passed");
  assert.equal(checkText("⚠️ (network) blocked"), "(network) blocked");
  assert.equal(checkText("pytest passed"), "pytest passed");
});

describe("chunk references", () => {
  test("[c3], [c3, c4] and (c5) are links to the log; c6 alone is a word", () => {
    const pieces = splitCitations("Tests pass [c3, c4] (c5), see calc.py:L4; c6 here");
    const refs = pieces.filter((p) => typeof p !== "string" && "chunk" in p).map((p) => (p as { chunk: string }).chunk);
    assert.deepEqual(refs, ["c3", "c4", "c5"]);
    assert.ok(pieces.some((p) => typeof p !== "string" && "path" in p && p.path === "calc.py"));
    assert.equal(pieces.map((p) => (typeof p === "string" ? p : p.text)).join(""), "Tests pass [c3, c4] (c5), see calc.py:L4; c6 here");
  });
});

describe("check marks", () => {
  test("only a proven pass gets ✔; the others say what they are", () => {
    assert.equal(CHECK_MARKS.passed, "✔");
    assert.notEqual(CHECK_MARKS.unverified, "✔");
    assert.deepEqual(["passed", "unverified", "not run", "dismissed"].map(checkLabel), ["", "unverified", "not run", "dismissed"]);
  });
});
