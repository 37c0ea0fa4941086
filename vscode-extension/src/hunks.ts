/**
 * A task's hunks as the server lists them (`offload.showTask` → `hunks`), and where each pending
 * one shows in the editor. The server says where a hunk sits now (its diagnostic's lines, moved
 * with the user's edits); this maps those lines and the hunk's lines to what to tint, where its
 * whole change shows (every removed and added line), which hunk the cursor is on, and which comes
 * next. Pure: no VS Code here, so it is unit-tested under plain node.
 */

export type HunkStatus = "pending" | "accepted" | "rejected";

/** One hunk of `offload.showTask` (server/tasks/review.py `Hunk.as_dict`, with its status). */
export interface ServerHunk {
  hunkId: string; // "<path>#<n>": what acceptHunk and rejectHunk take
  path: string; // relative to the task's repository
  baseStart: number; // 0-based first line in the task's base
  removed: string; // the lines the hunk replaces, each with its newline
  added: string; // the lines it puts there
  status: HunkStatus;
}

/** A pending hunk's place in the document: the lines of the server's diagnostic. */
export interface Placed {
  taskId: string;
  hunkId: string;
  line: number; // 0-based, the first
  end?: number; // 0-based, past the last (the diagnostic covers at least `line`)
}

export interface HunkView {
  taskId: string;
  hunkId: string;
  removed: { start: number; end: number } | null; // whole lines to tint, 0-based, inclusive
  anchor: number; // the line the whole change shows under: its last replaced line, or the one before an insertion
  counts: { removed: number; added: number };
  diff: string; // the hunk as a unified diff body: every removed line, then every added one
}

/** Beyond this many lines, a change shows folded (its title says how many): expanding shows them all. */
export const LONG_CHANGE = 40;

/** `text`'s lines without their line ends ("a\nb\n" → ["a", "b"]). */
export function hunkLines(text: string): string[] {
  if (!text) return [];
  const lines = text.split("\n").map((l) => l.replace(/\r$/, ""));
  if (lines[lines.length - 1] === "") lines.pop();
  return lines;
}

/**
 * What to show for one pending hunk at `line`, or null when the document no longer has the lines
 * the hunk replaces there (the user edited them: the server's diagnostic says so).
 * `documentLine(i)` is the document's i-th line; `lineCount` its number of lines.
 */
export function hunkView(hunk: ServerHunk, at: Placed, documentLine: (i: number) => string, lineCount: number): HunkView | null {
  const removed = hunkLines(hunk.removed);
  const added = hunkLines(hunk.added);
  if (at.line + removed.length > lineCount || removed.some((l, k) => documentLine(at.line + k) !== l)) return null;
  return {
    taskId: at.taskId,
    hunkId: hunk.hunkId,
    removed: removed.length ? { start: at.line, end: at.line + removed.length - 1 } : null,
    // under the last replaced line; an insertion under the line before it (the first line at the top)
    anchor: Math.max(0, Math.min(removed.length ? at.line + removed.length - 1 : at.line - 1, lineCount - 1)),
    counts: { removed: removed.length, added: added.length },
    diff: [...removed.map((l) => `-${l}`), ...added.map((l) => `+${l}`)].join("\n"),
  };
}

/** The change as a Markdown `diff` block, every line of it, fenced so that no line of it can end the block. */
export function changeMarkdown(view: Pick<HunkView, "diff">): string {
  const longest = Math.max(0, ...(view.diff.match(/`+/g) ?? []).map((run) => run.length));
  const fence = "`".repeat(Math.max(3, longest + 1));
  return `${fence}diff\n${view.diff || "(a change of the whole file: its bytes, link or mode)"}\n${fence}`;
}

/** The title over a change: its size and task, and for a long one that it is folded. */
export function changeTitle(view: Pick<HunkView, "counts">, task: string): string {
  const { removed, added } = view.counts;
  const folded = isLong(view) ? ` · ${removed + added} lines, folded: expand to see them` : "";
  return `Offload: +${added} −${removed} — ${task}${folded}`;
}

/** Whether the change shows folded at first (more than LONG_CHANGE lines). */
export function isLong(view: Pick<HunkView, "counts">): boolean {
  return view.counts.removed + view.counts.added > LONG_CHANGE;
}

/** The pending hunk on `line`: the one whose diagnostic covers it. */
export function hunkAt(placed: Placed[], line: number): Placed | undefined {
  return placed.find((p) => p.line <= line && line < Math.max(p.end ?? p.line + 1, p.line + 1));
}

/** A pending hunk's first line in a file. */
export interface Spot {
  file: string; // its URI, as a string: files are visited in this order
  line: number;
}

/**
 * The pending hunk after (`forward`) or before the cursor at `at`: the next one down its file,
 * else the first of the next file with one, wrapping around after the last; backwards the same.
 */
export function nextSpot(spots: Spot[], at: Spot, forward: boolean): Spot | undefined {
  const order = (a: Spot, b: Spot) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.line - b.line);
  const sorted = [...spots].sort(order);
  if (forward) return sorted.find((s) => order(s, at) > 0) ?? sorted[0];
  return [...sorted].reverse().find((s) => order(s, at) < 0) ?? sorted[sorted.length - 1];
}

/** Every placed hunk that the task's list still has as pending, mapped to its view, top to bottom. */
export function reviewViews(placed: Placed[], hunksOf: (taskId: string) => ServerHunk[] | undefined,
  documentLine: (i: number) => string, lineCount: number): HunkView[] {
  const views: HunkView[] = [];
  for (const at of [...placed].sort((a, b) => a.line - b.line)) {
    const hunk = hunksOf(at.taskId)?.find((h) => h.hunkId === at.hunkId);
    const view = hunk?.status === "pending" ? hunkView(hunk, at, documentLine, lineCount) : null;
    if (view) views.push(view);
  }
  return views;
}

/** The pending hunks of one file (its path relative to the task's repository), by id. */
export function pendingIds(hunks: ServerHunk[], path: string): string[] {
  return hunks.filter((h) => h.path === path && h.status === "pending").map((h) => h.hunkId);
}

/** The list after an `offload/taskEvent` "review" event ({hunks: [ids], decision}); other events leave it. */
export function applyDecision(hunks: ServerHunk[], event: { type: string; [key: string]: unknown }): ServerHunk[] {
  const decision = event.decision;
  if (event.type !== "review" || !Array.isArray(event.hunks) || (decision !== "accepted" && decision !== "rejected")) {
    return hunks;
  }
  const decided = new Set(event.hunks);
  return hunks.map((h) => (decided.has(h.hunkId) ? { ...h, status: decision } : h));
}
