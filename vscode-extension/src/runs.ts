/**
 * A task's event log, readable: cut into its runs (the first one and each follow-up, each with its
 * own final message and checks), and each run's events as the steps, commands, patches, plans and
 * checks the task page shows, the way `offload show --log` tells them (server/history.py). Pure:
 * shared by the page's script and the unit tests.
 */

export interface LogEvent {
  t?: number;
  type: string;
  [key: string]: unknown;
}

export interface Check {
  check: string;
  status: string; // passed (proven) | failed | blocked | unverified | not run | dismissed | unknown
  reason?: string;
  chunks?: string[];
  source?: string;
}

export interface Run {
  number: number; // 1 for the task's own run, then one per follow-up
  prompt: string;
  events: LogEvent[];
  message: string; // the model's final message of this run
  checks: Check[];
}

export function runsOf(events: LogEvent[], prompt: string): Run[] {
  const runs: Run[] = [{ number: 1, prompt, events: [], message: "", checks: [] }];
  for (const e of events) {
    if (e.type === "followup") runs.push({ number: runs.length + 1, prompt: String(e.prompt ?? ""), events: [], message: "", checks: [] });
    const run = runs[runs.length - 1];
    run.events.push(e);
    if (e.type === "model.reply" && typeof e.text === "string" && e.text.trim()) run.message = e.text;
    if (e.type === "checks" && Array.isArray(e.checks)) run.checks = e.checks as Check[];
  }
  return runs;
}

export type Entry =
  | { kind: "step"; step: unknown; tokens: string; text: string }
  | { kind: "command"; command: string; workdir?: string; exit?: number | null; seconds?: number; output: string; chunk?: string;
    by?: string }
  | { kind: "patch"; lines: string[]; result: string; chunk?: string }
  | { kind: "plan"; explanation: string; steps: { step: string; status: string }[] }
  | { kind: "checks"; passed: boolean; checks: Check[] }
  | { kind: "line"; text: string; tone: "state" | "error" | "muted" };

function argumentsOf(e: LogEvent): Record<string, unknown> {
  if (typeof e.arguments === "string") {
    try {
      return JSON.parse(e.arguments) as Record<string, unknown>;
    } catch {
      return { raw: e.arguments };
    }
  }
  return (e.arguments ?? {}) as Record<string, unknown>;
}

/** A command as the shell would read it: words with spaces or quotes quoted. */
export function commandText(argv: unknown[]): string {
  return argv.map((a) => {
    const word = String(a);
    return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'"'"'`)}'`;
  }).join(" ");
}

/** What a command printed: the result's text without the chunk and exit-code header the model was given. */
function outputOf(result: LogEvent | undefined): string {
  let text = typeof result?.output === "string" ? result.output : "";
  if (text.startsWith("Chunk: ")) text = text.slice(text.indexOf("\n") + 1);
  const at = text.indexOf("Output:\n");
  return at >= 0 && /^Exit code:/.test(text) ? text.slice(at + "Output:\n".length) : text;
}

/** The run's events as entries of the readable log, each tool call with its result. */
export function entriesOf(events: LogEvent[]): Entry[] {
  const results = new Map<string, LogEvent>();
  for (const e of events) if (e.type === "tool.result") results.set(`${e.attempt ?? ""}/${e.id}`, e);
  const entries: Entry[] = [];
  for (const e of events) {
    switch (e.type) {
      case "model.reply":
        entries.push({ kind: "step", step: e.step, text: String(e.text ?? "").trim(),
          tokens: `${e.input_tokens ?? 0} in / ${e.output_tokens ?? 0} out tokens`
            + (typeof e.cost_usd === "number" ? ` · $${e.cost_usd.toFixed(4)}` : "") });
        break;
      case "tool.call": {
        const result = results.get(`${e.attempt ?? ""}/${e.id}`);
        const args = argumentsOf(e);
        const argv = Array.isArray(args.command) ? args.command : null;
        const patch = e.name === "apply_patch" ? args.input : argv?.[0] === "apply_patch" && argv.length === 2 ? argv[1] : null;
        if (typeof patch === "string") {
          entries.push({ kind: "patch", chunk: result?.chunk as string | undefined,
            lines: patch.split("\n").filter((l) => l !== "*** Begin Patch" && l !== "*** End Patch"),
            result: result ? outputOf(result).trim() : "" });
        } else if (e.name === "shell" && argv) {
          entries.push({ kind: "command", command: commandText(argv), workdir: args.workdir as string | undefined,
            exit: result?.exit_code as number | null | undefined, seconds: result?.duration as number | undefined,
            output: outputOf(result), chunk: result?.chunk as string | undefined, by: e.by === "harness" ? "run by Offload" : undefined });
        } else if (e.name !== "update_plan") {
          entries.push({ kind: "command", command: `${e.name} ${typeof e.arguments === "string" ? e.arguments : JSON.stringify(e.arguments)}`,
            output: outputOf(result), chunk: result?.chunk as string | undefined });
        }
        break;
      }
      case "plan":
        entries.push({ kind: "plan", explanation: String(e.explanation ?? ""),
          steps: (Array.isArray(e.plan) ? e.plan : []) as { step: string; status: string }[] });
        break;
      case "checks":
        entries.push({ kind: "checks", passed: !!e.passed, checks: (Array.isArray(e.checks) ? e.checks : []) as Check[] });
        break;
      case "state":
        entries.push({ kind: "line", tone: "state", text: `${e.state}${e.reason ? `: ${e.reason}` : ""}` });
        break;
      case "followup":
        entries.push({ kind: "line", tone: "state", text: `follow-up: ${e.prompt}` });
        break;
      case "error": case "model.error": case "model.call.failed":
        entries.push({ kind: "line", tone: "error", text: String(e.error ?? e.type) });
        break;
      case "note": case "model.wait": case "setup":
        if (e.text) entries.push({ kind: "line", tone: "muted", text: String(e.text) });
        break;
      case "agent.end":
        entries.push({ kind: "line", tone: "muted", text: `${e.outcome}: ${e.reason} · ${e.steps} steps` });
        break;
      case "review":
        entries.push({ kind: "line", tone: "muted", text: `review: ${e.decision} ${(e.hunks as unknown[] | undefined)?.length ?? 0} hunk(s)` });
        break;
      case "applied": case "discarded":
        entries.push({ kind: "line", tone: "state", text: e.type });
        break;
    }
  }
  return entries;
}
