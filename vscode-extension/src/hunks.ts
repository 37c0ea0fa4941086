/**
 * A task's hunks as the server lists them (`offload.showTask` → `hunks`), and where each pending
 * one shows in the editor. The server says where a hunk sits now (its diagnostic's line, moved
 * with the user's edits); this maps that line and the hunk's lines to what to decorate. Pure:
 * no VS Code here, so it is unit-tested under plain node.
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

/** A pending hunk's place in the document: the line the server's diagnostic starts on. */
export interface Placed {
  taskId: string;
  hunkId: string;
  line: number; // 0-based
}

export interface HunkView {
  taskId: string;
  hunkId: string;
  removed: { start: number; end: number } | null; // whole lines to tint, 0-based, inclusive
  added: { after: number; first: string; more: number } | null; // the proposed lines, shown after a line
  hover: string; // the hunk as a unified diff body
}

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
  const hover = [...removed.map((l) => `-${l}`), ...added.map((l) => `+${l}`)].join("\n");
  return {
    taskId: at.taskId,
    hunkId: hunk.hunkId,
    removed: removed.length ? { start: at.line, end: at.line + removed.length - 1 } : null,
    // after the last replaced line; an insertion goes after the line before it (the first line at the top)
    added: added.length && lineCount
      ? { after: Math.min(removed.length ? at.line + removed.length - 1 : Math.max(at.line - 1, 0), lineCount - 1),
        first: added[0].trim(), more: added.length - 1 }
      : null,
    hover,
  };
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
