"""AGENTS.md files in the styles real projects write them, each with the checks a careful engineer
would name, what a scripted model declares and dismisses, and what must never run unasked."""

from __future__ import annotations

import tomllib
from pathlib import Path

HERE = Path(__file__).parent


def load_cases() -> list[dict]:
    cases = []
    for path in sorted(HERE.glob("*.toml")):
        for case in tomllib.loads(path.read_text())["case"]:
            cases.append({**case, "source": path.stem})
    return cases
