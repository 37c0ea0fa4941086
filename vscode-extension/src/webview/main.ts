/**
 * The task page, inside the webview. Renders what `offload.showTask` returned and appends the
 * live events the extension forwards. Markdown without raw HTML (the model wrote it), Mermaid
 * in strict mode, and citations turned into links the extension opens.
 */

import MarkdownIt from "markdown-it";
import mermaid from "mermaid";
import { attemptRows } from "../attempts";
import { CHECK_MARKS, type CheckStatus, checkLabel, checkText, splitCitations, splitTesting } from "../report";
import { type Check, type Entry, type LogEvent, entriesOf, runsOf } from "../runs";
import type { AttemptResult } from "../tasks";
import "./style.css";

interface Shown {
  taskId: string;
  kind: string;
  state: string;
  reason?: string;
  prompt: string;
  changes?: { path: string; status: string }[] | null;
  message?: string;
  checks?: Check[];
  events?: LogEvent[];
  attempts?: number | null;
  attempt?: number | null;
  attemptResults?: AttemptResult[] | null;
}

/** What the page's buttons may do now (the extension knows the review's state). */
interface Actions {
  accept: boolean;
  followUp: boolean;
  discard: boolean;
  review: string; // "2 of 5 to review", "reviewed", "no changes", ""
}

declare function acquireVsCodeApi(): { postMessage(message: unknown): void };

const vscode = acquireVsCodeApi();
const markdown = new MarkdownIt({ html: false, linkify: false });
const dark = document.body.classList.contains("vscode-dark") || document.body.classList.contains("vscode-high-contrast");
mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: dark ? "dark" : "default" });

let task: Shown | undefined;
let actions: Actions = { accept: false, followUp: false, discard: false, review: "" };

window.addEventListener("message", (e: MessageEvent) => {
  const message = e.data as { type: "task"; task: Shown; actions: Actions } | { type: "actions"; actions: Actions }
    | { type: "event"; event: LogEvent };
  if (message.type === "task") {
    task = message.task;
    actions = message.actions;
    void render();
  } else if (message.type === "actions") {
    actions = message.actions;
    renderActions();
  } else if (task && message.type === "event" && message.event.type !== "tool.output") {
    (task.events ??= []).push(message.event);
    renderPlan();
    renderLog();
  }
});

document.addEventListener("click", (e) => {
  const target = e.target as HTMLElement;
  const button = target.closest<HTMLButtonElement>("button[data-action]");
  if (button) {
    vscode.postMessage(button.dataset.action === "apply"
      ? { type: "apply", attempt: Number(button.dataset.attempt) } : { type: button.dataset.action });
    return;
  }
  const chunk = target.closest<HTMLAnchorElement>("a[data-chunk]");
  if (chunk) {
    e.preventDefault();
    const entry = document.getElementById(`chunk-${chunk.dataset.chunk}`);
    if (entry instanceof HTMLDetailsElement) entry.open = true;
    entry?.scrollIntoView({ block: "center" });
    return;
  }
  const link = target.closest<HTMLAnchorElement>("a[data-path]");
  if (!link) return;
  e.preventDefault();
  const { path, start, end, action } = link.dataset;
  vscode.postMessage(action === "diff" ? { type: "diff", path } : { type: "open", path, start: Number(start), end: Number(end) });
});

vscode.postMessage({ type: "ready" });

function el<K extends keyof HTMLElementTagNameMap>(tag: K, props: Partial<HTMLElementTagNameMap[K]> = {},
  ...children: (Node | string)[]): HTMLElementTagNameMap[K] {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children);
  return node;
}

function section(id: string, title: string, ...children: (Node | string)[]): HTMLElement {
  return el("section", { id }, el("h2", {}, title), ...children);
}

/** Text with each `path:Lstart-Lend` as a link that opens those lines, and each `[cN]` as one to its log entry. */
function withCitations(text: string): (Node | string)[] {
  return splitCitations(text).map((piece) => {
    if (typeof piece === "string") return piece;
    if ("chunk" in piece) {
      const link = el("a", { href: "#", className: "chunk", title: `The run ${piece.chunk} in the log` }, piece.text);
      link.dataset.chunk = piece.chunk;
      return link;
    }
    const link = el("a", { href: "#", className: "citation", title: `Open ${piece.path} at line ${piece.start}` }, piece.text);
    Object.assign(link.dataset, { path: piece.path, start: String(piece.start), end: String(piece.end) });
    return link;
  });
}

function linkCitations(root: HTMLElement): void {
  const walker = document.createTreeWalker(root, NodeFilter.SHOW_TEXT, {
    // fenced code is code, not a claim (the server reads citations the same way)
    acceptNode: (n) => (n.parentElement?.closest("pre") ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_ACCEPT),
  });
  const texts: Text[] = [];
  while (walker.nextNode()) texts.push(walker.currentNode as Text);
  for (const text of texts) {
    const pieces = withCitations(text.data);
    if (pieces.some((p) => typeof p !== "string")) text.replaceWith(...pieces);
  }
}

function renderMarkdown(source: string): HTMLElement {
  const body = el("div", { className: "markdown" });
  body.innerHTML = markdown.render(source); // markdown-it escapes any HTML in the source (html: false)
  linkCitations(body);
  for (const code of body.querySelectorAll("pre > code.language-mermaid")) {
    code.parentElement!.replaceWith(el("div", { className: "mermaid" }, code.textContent ?? ""));
  }
  return body;
}

/** Draws the page's diagrams; mermaid measures text, so they must be in the document already. */
async function drawDiagrams(): Promise<void> {
  const diagrams = [...document.querySelectorAll<HTMLElement>("div.mermaid:not([data-processed])")];
  if (!diagrams.length) return;
  try {
    await mermaid.run({ nodes: diagrams });
  } catch (e) {
    diagrams[0].after(el("p", { className: "error" }, `A diagram could not be drawn: ${(e as Error).message}`));
  }
}

/** A run's final message (its Testing section apart) and its checks, each with its mark. */
function renderOutcome(message: string, checks: Check[], kind: string, ended: boolean): HTMLElement[] {
  const { summary, testing } = splitTesting(message);
  const parts: HTMLElement[] = [];
  if (summary) {
    // the message usually opens with its own "## Summary"
    parts.push(/^#/.test(summary) ? el("div", { className: "summary" }, renderMarkdown(summary))
      : el("div", { className: "summary" }, el("h3", {}, kind === "ask" ? "Answer" : "Summary"), renderMarkdown(summary)));
  } else {
    parts.push(el("p", { className: "muted" }, ended ? "No message." : "Not finished yet."));
  }
  if (checks.length) {
    parts.push(el("div", { className: "testing" }, el("h3", {}, "Testing"), el("ul", { className: "checks" }, ...checks.map((c) => {
      const text = el("span");
      text.innerHTML = markdown.renderInline(checkText(c.check));
      linkCitations(text);
      const label = checkLabel(c.status);
      return el("li", { className: `check check-${c.status.replace(/\W/g, "-")}` },
        el("span", { className: "mark", title: c.status }, CHECK_MARKS[c.status as CheckStatus] ?? CHECK_MARKS.unknown), text,
        ...(label ? [el("span", { className: "label" }, ` — ${label}${c.reason ? `: ${c.reason}` : ""}`)] : []));
    }))));
  } else if (testing) {
    parts.push(el("div", { className: "testing" }, el("h3", {}, "Testing"), renderMarkdown(testing.replace(/^#+.*\n?/, ""))));
  }
  return parts;
}

function renderActions(): void {
  const target = document.getElementById("actions");
  if (!target || !task) return;
  const button = (action: string, label: string, enabled: boolean, title: string) => {
    const b = el("button", { disabled: !enabled, title }, label);
    b.dataset.action = action;
    return b;
  };
  target.replaceChildren(
    ...(task.kind === "code" ? [button("accept", "Accept All", actions.accept, "Apply every pending hunk of the change to your files")] : []),
    button("followUp", "Follow Up…", actions.followUp, "Run the task again with a new instruction; rejected hunks go along"),
    ...(task.kind === "code" ? [button("discard", "Discard", actions.discard, "Reject every pending hunk")] : []),
    ...(actions.review ? [el("span", { className: "muted review" }, actions.review)] : []));
}

async function render(): Promise<void> {
  if (!task) return;
  const app = document.getElementById("app")!;
  const ended = ["finished", "failed", "cancelled"].includes(task.state);
  const header = el("header", {},
    el("h1", {}, task.prompt.split("\n")[0]),
    el("p", { className: `state state-${task.state}` }, `${task.kind === "ask" ? "Ask" : "Code task"} · ${task.state}`
      + (task.reason ? ` — ${task.reason}` : "")),
    el("p", { className: "muted" }, task.taskId),
    el("div", { id: "actions", className: "actions" }));
  const parts: HTMLElement[] = [header];
  const runs = runsOf(task.events ?? [], task.prompt);
  runs.forEach((run, i) => {
    const last = i === runs.length - 1;
    // the last run's message and checks as the task's record has them; earlier ones from their events
    const outcome = renderOutcome(last ? task!.message ?? run.message : run.message, last ? task!.checks ?? run.checks : run.checks,
      task!.kind, !last || ended);
    parts.push(runs.length > 1
      ? el("section", { className: "run", id: `run-${run.number}` }, el("h2", {}, `Run ${run.number}: ${run.prompt.split("\n")[0]}`), ...outcome)
      : el("section", { className: "run", id: "run-1" }, ...outcome));
  });
  if ((task.attempts ?? 1) > 1 && task.attemptResults?.length) parts.push(renderAttempts(task));
  parts.push(el("section", { id: "plan" }));
  if (task.changes?.length) {
    parts.push(section("changes", "Changes", el("ul", {}, ...task.changes.map((c) => {
      const link = el("a", { href: "#", title: "Show the proposed change side by side" }, c.path);
      Object.assign(link.dataset, { path: c.path, action: "diff" });
      return el("li", {}, link, ` · ${c.status}`);
    }))));
  }
  parts.push(el("section", { id: "log" }));
  app.replaceChildren(...parts);
  renderActions();
  renderPlan();
  renderLog();
  await drawDiagrams();
}

/** Each attempt of a best-of-N task, with an Apply button for any that changed something. */
function renderAttempts(shown: Shown): HTMLElement {
  const rows = attemptRows(shown.attemptResults ?? [], shown.attempt, shown.state).map((r) => {
    const apply = el("button", { disabled: !r.canApply, title: `Apply attempt ${r.attempt}'s change to your files` }, "Apply");
    Object.assign(apply.dataset, { action: "apply", attempt: String(r.attempt) });
    return el("tr", { className: `attempt${r.chosen ? " chosen" : ""}` },
      el("td", {}, r.title), el("td", {}, r.outcome), el("td", { className: "checks" }, r.checks),
      el("td", {}, r.change), el("td", {}, r.cost), el("td", {}, apply));
  });
  return section("attempts", `Attempts (${shown.attemptResults?.length} of ${shown.attempts})`,
    el("table", { className: "attempts" }, el("tbody", {}, ...rows)));
}

const PLAN_MARKS: Record<string, string> = { completed: "☑", in_progress: "▶", pending: "☐" };

function renderPlan(): void {
  const plan = [...(task?.events ?? [])].reverse().find((e) => e.type === "plan");
  const steps = (plan?.plan ?? []) as { step: string; status: string }[];
  const target = document.getElementById("plan");
  if (!target || !steps.length) return;
  target.replaceChildren(el("h2", {}, "Plan"), ...(plan?.explanation ? [el("p", {}, String(plan.explanation))] : []),
    el("ul", { className: "plan" }, ...steps.map((s) =>
      el("li", { className: `plan-${s.status}` }, `${PLAN_MARKS[s.status] ?? "☐"} ${s.step}`))));
}

/** One entry of the readable log. */
function renderEntry(entry: Entry): HTMLElement {
  switch (entry.kind) {
    case "step":
      return el("div", { className: "entry step" }, el("div", { className: "head" }, `Step ${entry.step} · ${entry.tokens}`),
        ...(entry.text ? [el("div", { className: "text" }, ...withCitations(entry.text))] : []));
    case "command": {
      const failed = entry.exit !== undefined && entry.exit !== null && entry.exit !== 0;
      const status = entry.exit === undefined ? "running" : `exit ${entry.exit ?? "?"}`
        + (entry.seconds !== undefined ? ` · ${entry.seconds.toFixed(2)} s` : "");
      const summary = el("summary", {}, el("code", {}, `$ ${entry.command}`),
        el("span", { className: `exit ${failed ? "failed" : "ok"}` }, ` ${status}`),
        ...(entry.chunk ? [el("span", { className: "muted" }, ` · ${entry.chunk}`)] : []),
        ...(entry.workdir ? [el("span", { className: "muted" }, ` · in ${entry.workdir}`)] : []),
        ...(entry.by ? [el("span", { className: "muted" }, ` · ${entry.by}`)] : []));
      return el("details", { className: "entry command", ...(entry.chunk ? { id: `chunk-${entry.chunk}` } : {}) },
        summary, el("pre", { className: "output" }, entry.output || "(no output)"));
    }
    case "patch":
      return el("details", { className: "entry patch", open: true, ...(entry.chunk ? { id: `chunk-${entry.chunk}` } : {}) },
        el("summary", {}, el("code", {}, "apply_patch"), ...(entry.result ? [el("span", { className: "muted" }, ` · ${entry.result}`)] : [])),
        el("pre", { className: "diff" }, ...entry.lines.map((line) => el("span", {
          className: line.startsWith("+") ? "added" : line.startsWith("-") ? "removed" : line.startsWith("***") || line.startsWith("@@") ? "file" : "",
        }, line + "\n"))));
    case "plan":
      return el("div", { className: "entry plan" }, el("div", { className: "head" }, "Plan" + (entry.explanation ? `: ${entry.explanation}` : "")),
        el("ul", { className: "plan" }, ...entry.steps.map((s) => el("li", { className: `plan-${s.status}` }, `${PLAN_MARKS[s.status] ?? "☐"} ${s.step}`))));
    case "checks":
      return el("div", { className: "entry checks" }, el("div", { className: "head" }, `Checks: ${entry.passed ? "passed" : "not passed"}`),
        el("ul", { className: "checks" }, ...entry.checks.map((c) => el("li", { className: `check check-${c.status.replace(/\W/g, "-")}` },
          el("span", { className: "mark", title: c.status }, CHECK_MARKS[c.status as CheckStatus] ?? CHECK_MARKS.unknown),
          `${c.check}${checkLabel(c.status) ? ` — ${checkLabel(c.status)}` : ""}`,
          ...(c.reason ? [el("span", { className: "muted" }, `: ${c.reason}`)] : []),
          ...(c.chunks ?? []).map((chunk) => {
            const link = el("a", { href: "#", className: "chunk" }, ` [${chunk}]`);
            link.dataset.chunk = chunk;
            return link;
          })))));
    case "line":
      return el("div", { className: `entry line ${entry.tone}` }, entry.text);
  }
}

function renderLog(): void {
  const target = document.getElementById("log");
  if (!target || !task) return;
  const runs = runsOf(task.events ?? [], task.prompt);
  target.replaceChildren(el("h2", {}, "Log"), ...runs.map((run) => el("div", { className: "log-run" },
    ...(runs.length > 1 ? [el("h3", {}, `Run ${run.number}: ${run.prompt.split("\n")[0]}`)] : []),
    ...entriesOf(run.events).map(renderEntry))));
}
