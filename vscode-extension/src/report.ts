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

/** Text cut into plain pieces and citations, in order, for rendering links between them. */
export function splitCitations(text: string): (string | Citation)[] {
  const pieces: (string | Citation)[] = [];
  let at = 0;
  for (const c of findCitations(text)) {
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

export type CheckStatus = "passed" | "failed" | "blocked" | "unknown";

/** Text symbols, not emoji: they render in any editor font and take the theme's colours. */
export const CHECK_MARKS: Record<CheckStatus, string> = { passed: "✔", failed: "✘", blocked: "⚠", unknown: "?" };

/** A check as the server read it from the Testing line, without the mark the model put first. */
export function checkText(check: string): string {
  return check.replace(/^[^\p{L}\p{N}`'"([]+/u, "");
}
