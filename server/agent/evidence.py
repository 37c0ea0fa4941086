"""Reading the evidence in a final message: the checks its Testing section reports."""

from __future__ import annotations

import re

_STATUS = re.compile(r"\b(passed|pass|ok|failed|fail|failing|blocked|environment)\b", re.IGNORECASE)
_CANON = {"pass": "passed", "ok": "passed", "fail": "failed", "failing": "failed", "environment": "blocked"}


def testing_checks(message: str) -> list[dict]:
    """Each line of the `## Testing` section with the status it claims (passed, failed, blocked)."""
    checks, in_testing = [], False
    for line in message.splitlines():
        if line.lstrip().startswith("#"):
            in_testing = "testing" in line.lower()
            continue
        if in_testing and line.strip():
            statuses = [_CANON.get(m.lower(), m.lower()) for m in _STATUS.findall(line)]
            status = ("failed" if "failed" in statuses else "blocked" if "blocked" in statuses
                      else "passed" if statuses else "unknown")
            checks.append({"check": line.strip().lstrip("-* ").strip(), "status": status})
    return checks


def checks_passed(checks: list[dict]) -> bool:
    """True when at least one check ran and none failed."""
    return bool(checks) and all(c["status"] == "passed" for c in checks)
