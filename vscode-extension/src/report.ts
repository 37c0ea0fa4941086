/**
 * Reading a task's final message: its `path:Lstart-Lend` citations and its Testing section.
 * Shared by the task page (in the webview) and the unit tests, so it must stay free of VS Code
 * and node APIs. The citation syntax mirrors the server's (server/agent/evidence.py).
 */

export interface Citation {
  index: number; // where the citation starts in the text
  text: string; // as written, e.g. "calc.py:L4-L10"
  path: string;
  start: number; // 1-based, inclusive
  end: number;
}

const FILE_REF = /(?<![\w/.:@-])([\w.-]+(?:\/[\w.-]+)*):(L?)(\d+)(?:-L?(\d+))?(?::\d+)?(?!\w)/g;

export function findCitations(text: string): Citation[] {
  const found: Citation[] = [];
  for (const m of text.matchAll(FILE_REF)) {
    const [whole, path, hasL, start, end] = m;
    // `12:30`, `localhost:8000`, `127.0.0.1:80` are not files
    if ((!hasL && !path.includes(".") && !path.includes("/")) || /^[\d.]+$/.test(path)) continue;
    found.push({ index: m.index!, text: whole, path, start: Number(start), end: Number(end ?? start) });
  }
  return found;
}

/** A log chunk cited as `[c3]`, `[c3, c4]` or `(c3)`: the run of a command that shows a claim. */
export interface ChunkRef {
  index: number;
  text: string; // "c3"
  chunk: string;
}

const CHUNK_GROUP = /[[(]\s*c\d+(?:\s*(?:,|;|and)\s*c\d+)*\s*[\])]/gi;

export function findChunkRefs(text: string): ChunkRef[] {
  const found: ChunkRef[] = [];
  for (const group of text.matchAll(CHUNK_GROUP)) {
    for (const m of group[0].matchAll(/c\d+/gi)) {
      found.push({ index: group.index! + m.index!, text: m[0], chunk: m[0].toLowerCase() });
    }
  }
  return found;
}

/** Text cut into plain pieces, file citations and chunk references, in order, for rendering links between them. */
export function splitCitations(text: string): (string | Citation | ChunkRef)[] {
  const pieces: (string | Citation | ChunkRef)[] = [];
  let at = 0;
  for (const c of [...findCitations(text), ...findChunkRefs(text)].sort((a, b) => a.index - b.index)) {
    if (c.index < at) continue;
    if (c.index > at) pieces.push(text.slice(at, c.index));
    pieces.push(c);
    at = c.index + c.text.length;
  }
  if (at < text.length) pieces.push(text.slice(at));
  return pieces;
}

/** The message without its Testing section (shown apart, with pass/fail marks), and that section. */
export function splitTesting(message: string): { summary: string; testing: string } {
  const summary: string[] = [];
  const testing: string[] = [];
  let inTesting = false;
  let inFence = false;
  for (const line of message.split("\n")) {
    if (line.trimStart().startsWith("```")) inFence = !inFence;
    if (!inFence && line.trimStart().startsWith("#")) inTesting = line.toLowerCase().includes("testing");
    (inTesting ? testing : summary).push(line);
  }
  return { summary: summary.join("\n").trim(), testing: testing.join("\n").trim() };
}

/** "passed" only when proven by the task's own run; a claimed pass without that proof is "unverified". */
export type CheckStatus = "passed" | "failed" | "blocked" | "unverified" | "not run" | "dismissed" | "unknown";

/** Text symbols, not emoji: they render in any editor font and take the theme's colours. Only a proven pass gets ✔. */
export const CHECK_MARKS: Record<CheckStatus, string> = {
  passed: "✔", failed: "✘", blocked: "⚠", unverified: "?", "not run": "–", dismissed: "⊘", unknown: "?",
};

/** What a check's mark says, in words, beside any mark but a proven pass. */
export function checkLabel(status: string): string {
  return status === "passed" ? "" : status === "unknown" ? "no status" : status;
}

/** A check as the server read it from the Testing line, without the mark the model put first. */
export function checkText(check: string): string {
  return check.replace(/^[^\p{L}\p{N}`'"([]+/u, "");
}
