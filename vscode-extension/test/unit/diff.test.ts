import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { parseUnifiedDiff, proposedText } from "../../src/diff";

// What `git diff --cached --binary BASE` printed in a sandbox: a deletion, two hunks of the
// scenario "fix-and-document" in one @@ range, and a new file without a final newline.
const DIFF = `diff --git a/README.md b/README.md
deleted file mode 100644
index 8090815..0000000
--- a/README.md
+++ /dev/null
@@ -1,2 +0,0 @@
-# calc
--- not a header: a removed line starting with two dashes
diff --git a/calc.py b/calc.py
index bfa5829..525fa6a 100644
--- a/calc.py
+++ b/calc.py
@@ -2,8 +2,9 @@
 
 
 def add(a, b):
-    return a - b
+    return a + b
 
 
 def multiply(a, b):
+    # the product of a and b
     return a * b
diff --git a/new.txt b/new.txt
new file mode 100644
index 0000000..9db7df0
--- /dev/null
+++ b/new.txt
@@ -0,0 +1,2 @@
+hello
+world
\\ No newline at end of file
`;

const CALC = '"""A tiny calculator with a bug for Offload to fix."""\n\n\ndef add(a, b):\n    return a - b\n\n\ndef multiply(a, b):\n    return a * b\n';

describe("parseUnifiedDiff", () => {
  const files = parseUnifiedDiff(DIFF);

  test("finds every file with its status", () => {
    assert.deepEqual(files.map((f) => [f.path, f.status]), [
      ["README.md", "deleted"], ["calc.py", "modified"], ["new.txt", "added"]]);
  });

  test("counts hunk lines instead of trusting prefixes", () => {
    assert.deepEqual(files[0].hunks[0].lines, ["-# calc", "--- not a header: a removed line starting with two dashes"]);
    assert.equal(files.length, 3);
  });

  test("reads the hunk header", () => {
    const { oldStart, oldLines, newStart, newLines } = files[1].hunks[0];
    assert.deepEqual([oldStart, oldLines, newStart, newLines], [2, 8, 2, 9]);
  });

  test("notes a missing final newline on the side it belongs to", () => {
    assert.equal(files[2].hunks[0].newEndsWithoutNewline, true);
    assert.equal(files[2].hunks[0].oldEndsWithoutNewline, undefined);
  });

  test("unquotes paths git quotes", () => {
    const [file] = parseUnifiedDiff('diff --git "a/caf\\303\\251.py" "b/caf\\303\\251.py"\n--- "a/caf\\303\\251.py"\n+++ "b/caf\\303\\251.py"\n@@ -1 +1 @@\n-a\n+b\n');
    assert.equal(file.path, "café.py");
  });

  test("takes the new name of a renamed file", () => {
    const [file] = parseUnifiedDiff("diff --git a/old.py b/new.py\nsimilarity index 100%\nrename from old.py\nrename to new.py\n");
    assert.deepEqual([file.path, file.status, file.hunks.length], ["new.py", "renamed", 0]);
  });

  test("is empty for an empty diff", () => {
    assert.deepEqual(parseUnifiedDiff(""), []);
  });
});

describe("proposedText", () => {
  const [deleted, calc, added] = parseUnifiedDiff(DIFF);
  const expected = CALC.replace("return a - b", "return a + b").replace("    return a * b", "    # the product of a and b\n    return a * b");

  test("applies the change to the file it was made from", () => {
    assert.equal(proposedText(CALC, calc), expected);
  });

  test("finds the hunks where the user's own edits moved them", () => {
    const edited = "import math\n\n" + CALC;
    assert.equal(proposedText(edited, calc), "import math\n\n" + expected);
  });

  test("keeps CRLF line endings", () => {
    assert.equal(proposedText(CALC.replace(/\n/g, "\r\n"), calc), expected.replace(/\n/g, "\r\n"));
  });

  test("builds a new file and honours its missing final newline", () => {
    assert.equal(proposedText("", added), "hello\nworld");
  });

  test("empties a deleted file", () => {
    assert.equal(proposedText("# calc\n", deleted), "");
  });

  test("says so when the file no longer has the lines the change replaces", () => {
    assert.throws(() => proposedText(CALC.replace("return a - b", "return b - a"), calc), /no longer fits the file/);
  });
});
