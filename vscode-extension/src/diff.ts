/**
 * The task's unified diff (git's, against the task's base) as per-file hunks, and the file as the
 * task proposes it, built onto the file as it is now: the side-by-side view. Pure: no VS Code
 * here, so it is unit-tested under plain node.
 */

export interface Hunk {
  oldStart: number; // 1-based, as in the `@@` header
  oldLines: number;
  newStart: number;
  newLines: number;
  lines: string[]; // each with its ' ', '-' or '+' prefix
  oldEndsWithoutNewline?: boolean; // "\ No newline at end of file" after an old-side line
  newEndsWithoutNewline?: boolean;
}

export interface FileDiff {
  path: string; // the new path (the old one for a deleted file), relative to the repository
  status: "modified" | "added" | "deleted" | "renamed";
  hunks: Hunk[];
}

const HUNK_HEADER = /^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@/;

/** git quotes paths with unusual characters: "a/caf\303\251.py". */
function unquote(path: string): string {
  if (!path.startsWith('"')) return path;
  const bytes: number[] = [];
  const body = path.slice(1, -1);
  const escapes: Record<string, number> = { n: 10, t: 9, '"': 34, "\\": 92 };
  for (let i = 0; i < body.length; i++) {
    if (body[i] !== "\\") {
      bytes.push(...Buffer.from(body[i]));
    } else if (/[0-7]{3}/.test(body.slice(i + 1, i + 4))) {
      bytes.push(parseInt(body.slice(i + 1, i + 4), 8));
      i += 3;
    } else {
      bytes.push(escapes[body[i + 1]] ?? body.charCodeAt(i + 1));
      i += 1;
    }
  }
  return Buffer.from(bytes).toString("utf8");
}

function stripPrefix(path: string): string | null {
  const p = unquote(path.trim());
  return p === "/dev/null" ? null : p.replace(/^[ab]\//, "");
}

export function parseUnifiedDiff(text: string): FileDiff[] {
  const files: FileDiff[] = [];
  const lines = text.split("\n");
  let file: FileDiff | null = null;
  let oldPath: string | null = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith("diff --git ")) {
      const m = /^diff --git (.+) (.+)$/.exec(line);
      file = { path: m ? stripPrefix(m[2]) ?? "" : "", status: "modified", hunks: [] };
      oldPath = m ? stripPrefix(m[1]) : null;
      files.push(file);
    } else if (!file) {
      continue;
    } else if (line.startsWith("new file mode")) {
      file.status = "added";
    } else if (line.startsWith("deleted file mode")) {
      file.status = "deleted";
      file.path = oldPath ?? file.path;
    } else if (line.startsWith("rename to ")) {
      file.status = "renamed";
      file.path = unquote(line.slice("rename to ".length));
    } else if (line.startsWith("--- ")) {
      oldPath = stripPrefix(line.slice(4)) ?? oldPath;
      if (file.status === "deleted") file.path = oldPath ?? file.path;
    } else if (line.startsWith("+++ ")) {
      file.path = stripPrefix(line.slice(4)) ?? file.path;
    } else if (HUNK_HEADER.test(line)) {
      const m = HUNK_HEADER.exec(line)!;
      const hunk: Hunk = {
        oldStart: Number(m[1]), oldLines: m[2] === undefined ? 1 : Number(m[2]),
        newStart: Number(m[3]), newLines: m[4] === undefined ? 1 : Number(m[4]), lines: [],
      };
      // Count lines rather than trust prefixes: a removed "-- x" must not end the hunk.
      let oldLeft = hunk.oldLines;
      let newLeft = hunk.newLines;
      while (i + 1 < lines.length && (oldLeft > 0 || newLeft > 0 || lines[i + 1].startsWith("\\"))) {
        const body = lines[++i];
        if (body.startsWith("\\")) { // "\ No newline at end of file", about the line before
          const before = hunk.lines[hunk.lines.length - 1]?.[0];
          if (before !== "+") hunk.oldEndsWithoutNewline = true;
          if (before !== "-") hunk.newEndsWithoutNewline = true;
          continue;
        }
        const kind = body[0] ?? " "; // git may drop the space of an empty context line
        if (kind !== "+") oldLeft--;
        if (kind !== "-") newLeft--;
        hunk.lines.push(kind === " " || kind === "+" || kind === "-" ? body : " " + body);
      }
      file.hunks.push(hunk);
    }
  }
  return files;
}

/**
 * The file as the task proposes it, built from `current` (the file as it is now): each hunk is
 * placed where its old lines are found nearest to where the diff says, so the user's edits
 * elsewhere in the file survive. Throws when a hunk's old lines are nowhere to be found.
 */
export function proposedText(current: string, file: FileDiff): string {
  if (file.status === "deleted") return "";
  const eol = current.includes("\r\n") ? "\r\n" : "\n";
  const lines = current === "" ? [] : current.split(/\r?\n/);
  let endsWithNewline = current === "" || lines[lines.length - 1] === "";
  if (endsWithNewline && lines.length) lines.pop();
  let shift = 0; // how far earlier hunks moved later lines
  for (const hunk of file.hunks) {
    const old = hunk.lines.filter((l) => l[0] !== "+").map((l) => l.slice(1));
    const replacement = hunk.lines.filter((l) => l[0] !== "-").map((l) => l.slice(1));
    const expected = Math.max(0, (hunk.oldLines === 0 ? hunk.oldStart : hunk.oldStart - 1) + shift);
    const at = locate(lines, old, expected);
    if (at < 0) throw new Error(`the change to ${file.path} no longer fits the file (near line ${expected + 1})`);
    lines.splice(at, old.length, ...replacement);
    shift += at - expected + replacement.length - old.length;
    if (hunk.newEndsWithoutNewline) endsWithNewline = false;
    else if (hunk.oldEndsWithoutNewline) endsWithNewline = true;
  }
  return lines.join(eol) + (endsWithNewline && lines.length ? eol : "");
}

function locate(lines: string[], old: string[], expected: number): number {
  const fits = (at: number) => at >= 0 && at + old.length <= lines.length && old.every((l, k) => lines[at + k] === l);
  for (let distance = 0; distance <= lines.length; distance++) {
    if (fits(expected - distance)) return expected - distance;
    if (fits(expected + distance)) return expected + distance;
  }
  return -1;
}
