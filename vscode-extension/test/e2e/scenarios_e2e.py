"""Scenarios of the VS Code end-to-end run, served by ``python -m tests.fakemodel`` beside
``tests.scenarios`` (this directory goes on PYTHONPATH)."""

import re

from tests.fakemodel import say, scenario, shell
from tests.scenarios import output_text


@scenario("ask-diagram")
def ask_diagram(req):
    """An Ask answered with a citation and a Mermaid diagram: what the task page must render."""
    out = yield shell(["grep", "-n", "def add", "calc.py"])
    line = int(re.match(r"(\d+):", output_text(out)).group(1))
    yield say(f"`add` is defined at calc.py:L{line}-L{line + 1} and the tests call it:\n\n"
              "```mermaid\ngraph LR\n  test_calc --> add\n  test_calc --> multiply\n```\n")
