/**
 * The task list as the editor sees it, folded from the server's `offload/taskUpdated` summaries
 * and `offload/taskEvent` events. Pure functions over plain data, so they are unit-tested
 * without VS Code.
 */

export const ACTIVE: readonly string[] = ["queued", "preparing", "running"];
export const FINAL: readonly string[] = ["finished", "failed", "cancelled"];

export interface Change {
  path: string;
  status: string;
}

/** One attempt of a best-of-N task: its outcome, checks and the size of its change. */
export interface AttemptResult {
  attempt: number; // 1-based
  state: string;
  reason?: string | null;
  passed?: number | null; // checks that passed
  failed?: number | null;
  diffLines?: number | null;
  changes?: Change[] | number | null;
  cost_usd?: number | null;
}

/** `offload/taskUpdated`'s payload, also what `offload.listTasks` returns per task. */
export interface Summary {
  taskId: string;
  kind?: string;
  state?: string;
  reason?: string;
  prompt?: string;
  repo?: string;
  changes?: Change[] | null;
  input_tokens?: number | null;
  output_tokens?: number | null;
  cost_usd?: number | null;
  created?: number | null;
  updated?: number | null;
  discarded?: boolean | null;
  attempts?: number | null; // N of best-of-N, 1 otherwise
  attempt?: number | null; // the chosen attempt, null until the task ends
  attemptResults?: AttemptResult[] | null;
}

export interface TaskEvent {
  t?: number;
  type: string;
  [key: string]: unknown;
}

export interface Task {
  id: string;
  kind: string;
  state: string;
  reason: string;
  prompt: string;
  repo: string;
  changes: Change[];
  tokens: number;
  costUsd: number | null;
  started: number | null; // seconds since the epoch
  ended: number | null;
  discarded: boolean;
  attempts: number;
  attempt: number | null;
  attemptResults: AttemptResult[];
  review: Review | null; // a finished Code task's hunks, once known
}

/** How many of a finished Code task's hunks are still to decide. */
export interface Review {
  pending: number;
  total: number;
}

/** Task ids start with the local time they were created: 20250101-120000-abcdef. */
function startFromId(id: string): number | null {
  const m = /^(\d{4})(\d{2})(\d{2})-(\d{2})(\d{2})(\d{2})-/.exec(id);
  return m ? new Date(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6]).getTime() / 1000 : null;
}

function blank(id: string): Task {
  return {
    id, kind: "code", state: "queued", reason: "", prompt: "", repo: "", changes: [], tokens: 0,
    costUsd: null, started: startFromId(id), ended: null, discarded: false, attempts: 1, attempt: null, attemptResults: [],
    review: null,
  };
}

export function applySummary(prev: Task | undefined, s: Summary): Task {
  const task = { ...(prev ?? blank(s.taskId)) };
  task.kind = s.kind ?? task.kind;
  task.prompt = s.prompt ?? task.prompt;
  task.repo = s.repo ?? task.repo;
  task.changes = s.changes ?? task.changes;
  task.discarded = s.discarded ?? task.discarded;
  task.started = s.created ?? task.started;
  if (s.input_tokens != null || s.output_tokens != null) task.tokens = (s.input_tokens ?? 0) + (s.output_tokens ?? 0);
  task.costUsd = s.cost_usd ?? task.costUsd;
  task.attempts = s.attempts ?? task.attempts;
  if (s.attempt !== undefined) task.attempt = s.attempt; // null is news too: not chosen yet
  task.attemptResults = s.attemptResults ?? task.attemptResults;
  if (s.state) setState(task, s.state, s.reason ?? "", s.updated ?? null);
  return task;
}

function setState(task: Task, state: string, reason: string, at: number | null): void {
  if (state === "queued" && FINAL.includes(task.state)) { // a follow-up reopens it, with a new change to come
    task.discarded = false;
    task.review = null;
  }
  task.state = state;
  task.reason = reason;
  task.ended = FINAL.includes(state) ? at ?? task.ended : null;
}

export function applyEvent(prev: Task | undefined, taskId: string, event: TaskEvent): Task {
  const task = { ...(prev ?? blank(taskId)) };
  const num = (key: string) => (typeof event[key] === "number" ? (event[key] as number) : null);
  switch (event.type) {
    case "state":
      if (event.state === "queued" && event.t !== undefined) task.started = event.t; // a run begins (a follow-up too)
      setState(task, String(event.state), String(event.reason ?? ""), event.t ?? null);
      break;
    case "model.reply":
      task.tokens = num("total_tokens") ?? task.tokens;
      task.costUsd = num("total_cost_usd") ?? task.costUsd;
      break;
    case "agent.end":
      task.tokens = (num("input_tokens") ?? 0) + (num("output_tokens") ?? 0) || task.tokens;
      task.costUsd = num("cost_usd") ?? task.costUsd;
      break;
    case "discarded":
      task.discarded = true;
      break;
    case "attempt.chosen": { // another attempt of a best-of-N task is up for review now
      const chosen = task.attemptResults.find((a) => a.attempt === event.chosen);
      task.attempt = num("chosen") ?? task.attempt;
      if (Array.isArray(chosen?.changes)) task.changes = chosen.changes;
      break;
    }
  }
  return task;
}

export function counts(tasks: Iterable<Task>): { running: number; finished: number; failed: number } {
  const n = { running: 0, finished: 0, failed: 0 };
  for (const t of tasks) {
    if (ACTIVE.includes(t.state)) n.running++;
    else if (t.state === "finished") n.finished++;
    else if (t.state === "failed") n.failed++;
  }
  return n;
}

/** The status bar's words: "1 running · 2 finished · 1 failed" (failed only when some did). */
export function countsText(tasks: Iterable<Task>): string {
  const { running, finished, failed } = counts(tasks);
  return `${running} running · ${finished} finished` + (failed ? ` · ${failed} failed` : "");
}

/** A finished Code task whose change still waits for a decision (Apply, Discard). */
export function reviewable(task: Task): boolean {
  return task.kind === "code" && task.state === "finished" && !task.discarded && task.changes.length > 0
    && task.review?.pending !== 0;
}

/** When the task's last run (its own, or its last follow-up) was queued, from its log; null when the log has none. */
export function lastRunStart(events: TaskEvent[]): number | null {
  const queued = events.filter((e) => e.type === "state" && e.state === "queued" && typeof e.t === "number");
  return queued.length ? (queued[queued.length - 1].t as number) : null;
}

/** The hunks' statuses as a count of those still pending. */
export function reviewOf(hunks: { status: string }[]): Review {
  return { pending: hunks.filter((h) => h.status === "pending").length, total: hunks.length };
}

/** Where a finished Code task's change stands: "no changes", "2 of 5 to review", "reviewed", "discarded". */
export function reviewText(task: Task): string {
  if (task.kind !== "code" || task.state !== "finished") return "";
  if (task.discarded) return "discarded";
  if (!task.changes.length) return "no changes";
  if (!task.review) return "";
  return task.review.pending ? `${task.review.pending} of ${task.review.total} to review` : "reviewed";
}

export function formatElapsed(seconds: number): string {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function formatTokens(n: number): string {
  return n < 1000 ? `${n} tokens` : `${(n / 1000).toFixed(n < 10000 ? 1 : 0)}k tokens`;
}

/** "attempt 2 of 3" for a best-of-N task ("3 attempts" until one is chosen); "" for a single attempt. */
export function attemptOf(task: Task): string {
  if (task.attempts <= 1) return "";
  return task.attempt ? `attempt ${task.attempt} of ${task.attempts}` : `${task.attempts} attempts`;
}

/** One line for the task list: "finished · 2 of 5 to review · attempt 2 of 3 · 12s · 3.4k tokens · $0.0123". */
export function describe(task: Task, now: number): string {
  const parts = [task.state];
  if (reviewText(task)) parts.push(reviewText(task));
  else if (task.discarded) parts.push("discarded");
  if (attemptOf(task)) parts.push(attemptOf(task));
  if (task.started !== null) {
    const end = task.ended ?? (ACTIVE.includes(task.state) ? now : null);
    if (end !== null) parts.push(formatElapsed(end - task.started));
  }
  if (task.tokens > 0) parts.push(formatTokens(task.tokens));
  if (task.costUsd) parts.push(`$${task.costUsd.toFixed(4)}`);
  return parts.join(" · ");
}
