/**
 * What to tell the user when a task ends: a finished Code task (with "Review" when it changed
 * something) and a failed task (its reason in words; "Open Settings" when the reason is about the
 * model's settings). Pure, so it is unit-tested without VS Code. The server says the same in a
 * `window/showMessage` for editors without this extension: `fromServer` recognises those, so the
 * news is not shown twice.
 */

import { ACTIVE, type Task } from "./tasks";

export type Action = "Review" | "Show Task" | "Open Settings" | "Retry";

export interface Notice {
  level: "info" | "error";
  text: string;
  actions: Action[];
}

/** The prompt's first line, short (as the server titles a task). */
export function title(task: Task): string {
  const first = task.prompt.trim().split("\n")[0] || task.id;
  return first.length <= 40 ? first : first.slice(0, 39) + "…";
}

// A failure the user fixes in the model's settings: the endpoint, the model, the key.
const SETTINGS_CAUSE = /model|endpoint|base[_ ]?url|api[_ ]?key|connect|refused|unreachable|unauthori[sz]ed|\b40[134]\b|OPENAI_|timed out/i;

/** The news of `next`, when it just ended (`prev` was running); undefined when there is none to tell. */
export function notice(prev: Task | undefined, next: Task): Notice | undefined {
  if (!prev || !ACTIVE.includes(prev.state) || ACTIVE.includes(next.state)) return undefined;
  const what = `Offload: “${title(next)}”`;
  if (next.state === "failed") {
    const reason = next.reason || "no reason given";
    return {
      level: "error", text: `${what} failed: ${reason}`,
      actions: SETTINGS_CAUSE.test(reason) ? ["Open Settings", "Retry", "Show Task"] : ["Retry", "Show Task"],
    };
  }
  if (next.state !== "finished" || next.kind !== "code") return undefined; // an Ask's page opens by itself
  const files = next.changes.length;
  return files
    ? { level: "info", text: `${what} finished: ${files} file${files === 1 ? "" : "s"} changed, ready for review`,
      actions: ["Review", "Show Task"] }
    : { level: "info", text: `${what} finished with no changes`, actions: ["Show Task"] };
}

/** The server's own message that a task ended (`Offload: “title” finished…`), which a notice here replaces. */
export function fromServer(message: string): boolean {
  return /^Offload: “[^”]*” (finished|failed|cancelled)\b/.test(message);
}
