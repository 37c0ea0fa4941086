"""Best-of-N: how one attempt at a task is summed up, and how attempts are ranked.

A reviewer should see first the attempt most likely to be right: one that finished, whose
checks passed as proven (the one meaning of "passed": see `agent.evidence`), with the fewest
failures, that changed something, and changed the least.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..agent.loop import AgentResult

MAX_ATTEMPTS = 16


def diff_lines(diff: str) -> int:
    """Lines added plus lines removed by a unified diff."""
    return sum(1 for line in diff.splitlines()
               if line[:1] in "+-" and not line.startswith(("+++ ", "--- ")))


def check_counts(result: AgentResult) -> tuple[int, int]:
    """(proven passes, the rest: failed, unverified or not run) of an attempt's checks; dismissals
    and environment-blocked checks count as neither."""
    passed = sum(c["status"] == "passed" for c in result.checks)
    failed = sum(c["status"] in ("failed", "unverified", "not run") for c in result.checks)
    return passed, failed


def summary(number: int, state: str, reason: str, result: AgentResult | None, diff: str,
            changes: list[dict], failures: list[dict]) -> dict:
    """What the task record keeps of one attempt: enough to rank, show, choose and follow up on it."""
    passed, failed = check_counts(result) if result else (0, 0)
    return {
        "attempt": number, "state": state, "reason": reason, "passed": passed, "failed": failed,
        "diff_lines": diff_lines(diff), "changes": changes, "failures": failures,
        "message": result.message if result else "", "checks": result.checks if result else [],
        "commit": result.commit if result else None, "plan": result.plan if result else [],
        "steps": result.steps if result else 0, "input_tokens": result.input_tokens if result else 0,
        "output_tokens": result.output_tokens if result else 0, "cost_usd": result.cost_usd if result else 0.0,
    }


def rank(attempts: list[dict]) -> list[dict]:
    """Best first: finished, then more checks passed, fewer failed, a change made, a smaller diff;
    ties keep their order."""
    return sorted(attempts, key=lambda a: (a["state"] != "finished", -a["passed"], a["failed"],
                                           not a["changes"], a["diff_lines"], a["attempt"]))


def verdict(chosen: dict, count: int, by: str = "") -> str:
    """The reason line of a best-of-N task: which attempt is chosen (by ranking, or `by` whom), and
    how it fared."""
    return (f"attempt {chosen['attempt']} of {count} chosen{' ' + by if by else ''}: {chosen['passed']} check(s) passed, "
            f"{chosen['failed']} failed, {chosen['diff_lines']} line(s) changed")
