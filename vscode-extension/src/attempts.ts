/**
 * The attempts of a best-of-N task as the task page lists them: each with its outcome, its
 * checks and the size of its change, and whether it can be applied instead of the chosen one.
 * Pure (shared by the page's script and the unit tests): no VS Code or node APIs here.
 */

import { CHECK_MARKS } from "./report";
import type { AttemptResult } from "./tasks";

export interface AttemptRow {
  attempt: number;
  chosen: boolean;
  title: string; // "Attempt 2 (chosen)"
  outcome: string; // "finished" or "failed: the checks still fail"
  checks: string; // "✔ 3 ✘ 1", or "no checks run"
  change: string; // "12 lines in 2 files", or "no change"
  cost: string; // "$0.0123", or ""
  canApply: boolean; // the task has ended and this attempt changed something
}

function count(changes: AttemptResult["changes"]): number {
  return Array.isArray(changes) ? changes.length : typeof changes === "number" ? changes : 0;
}

export function attemptRows(results: AttemptResult[], chosen: number | null | undefined, taskState: string): AttemptRow[] {
  return [...results].sort((a, b) => a.attempt - b.attempt).map((r) => {
    const files = count(r.changes);
    const lines = r.diffLines ?? 0;
    const checks = [r.passed ? `${CHECK_MARKS.passed} ${r.passed}` : "", r.failed ? `${CHECK_MARKS.failed} ${r.failed}` : ""]
      .filter(Boolean).join(" ");
    const size = [lines ? `${lines} line${lines === 1 ? "" : "s"}` : "", files ? `${files} file${files === 1 ? "" : "s"}` : ""]
      .filter(Boolean).join(" in ");
    return {
      attempt: r.attempt,
      chosen: r.attempt === chosen,
      title: `Attempt ${r.attempt}${r.attempt === chosen ? " (chosen)" : ""}`,
      outcome: r.state + (r.reason ? `: ${r.reason}` : ""),
      checks: checks || "no checks run",
      change: size || "no change",
      cost: r.cost_usd ? `$${r.cost_usd.toFixed(4)}` : "",
      canApply: taskState === "finished" && (files > 0 || lines > 0),
    };
  });
}
