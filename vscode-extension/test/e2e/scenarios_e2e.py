"""Scenarios of the VS Code end-to-end run, served by ``python -m tests.fakemodel`` beside
``tests.scenarios`` (this directory goes on PYTHONPATH)."""

import re

from tests.fakemodel import apply_patch, say, scenario, shell
from tests.scenarios import UNITTEST, output_text, report


@scenario("ask-diagram")
def ask_diagram(req):
    """An Ask answered with a citation and a Mermaid diagram: what the task page must render."""
    out = yield shell(["grep", "-n", "def add", "calc.py"])
    line = int(re.match(r"(\d+):", output_text(out)).group(1))
    yield say(f"`add` is defined at calc.py:L{line}-L{line + 1} and the tests call it:\n\n"
              "```mermaid\ngraph LR\n  test_calc --> add\n  test_calc --> multiply\n```\n")


@scenario("fix-and-rewrite")
def fix_and_rewrite(req):
    """Three hunks in two files: the fix of ``add`` (one line for one), ``multiply`` rewritten (one
    line for three: a change whose every line the editor must show) and a test added to
    ``test_calc.py``; the summary cites the rewrite's lines in the result."""
    out = yield apply_patch("*** Begin Patch\n*** Update File: calc.py\n@@ def add(a, b):\n-    return a - b\n"
                            "+    return a + b\n@@ def multiply(a, b):\n-    return a * b\n+    # the product of a and b\n"
                            "+    product = a * b\n+    return product\n"
                            "*** Update File: test_calc.py\n@@ def test_multiply(self):\n"
                            "         self.assertEqual(multiply(4, 5), 20)\n+        self.assertEqual(multiply(0, 5), 0)\n"
                            "*** End Patch")
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    status = "passed" if re.search(r"^OK", output_text(out), re.M) else "failed"
    return (yield say(report(["Fixed `add` and rewrote `multiply` (calc.py:L8-L11), with a test of zero."],
                             [(" ".join(UNITTEST), status, out)])))
