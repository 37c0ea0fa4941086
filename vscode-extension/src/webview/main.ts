/**
 * The task page, inside the webview. Renders what `offload.showTask` returned and appends the
 * live events the extension forwards. Markdown without raw HTML (the model wrote it), Mermaid
 * in strict mode, and citations turned into links the extension opens.
 */

import MarkdownIt from "markdown-it";
import mermaid from "mermaid";
import { attemptRows } from "../attempts";
import { CHECK_MARKS, type CheckStatus, checkText, splitCitations, splitTesting } from "../report";
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
  checks?: { check: string; status: CheckStatus }[];
  events?: LogEvent[];
  attempts?: number | null;
  attempt?: number | null;
  attemptResults?: AttemptResult[] | null;
}

interface LogEvent {
  t?: number;
  type: string;
  [key: string]: unknown;
}

declare function acquireVsCodeApi(): { postMessage(message: unknown): void };

const vscode = acquireVsCodeApi();
const markdown = new MarkdownIt({ html: false, linkify: false });
const dark = document.body.classList.contains("vscode-dark") || document.body.classList.contains("vscode-high-contrast");
mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: dark ? "dark" : "default" });

let task: Shown | undefined;

window.addEventListener("message", (e: MessageEvent) => {
  const message = e.data as { type: "task"; task: Shown } | { type: "event"; event: LogEvent };
  if (message.type === "task") {
    task = message.task;
    void render();
  } else if (task && message.type === "event" && message.event.type !== "tool.output") {
    (task.events ??= []).push(message.event);
    renderPlan();
    renderLog();
  }
});

document.addEventListener("click", (e) => {
  const apply = (e.target as HTMLElement).closest<HTMLButtonElement>("button[data-attempt]");
  if (apply) {
    vscode.postMessage({ type: "apply", attempt: Number(apply.dataset.attempt) });
    return;
  }
  const link = (e.target as HTMLElement).closest<HTMLAnchorElement>("a[data-path]");
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

/** Text with each `path:Lstart-Lend` as a link that opens those lines. */
function withCitations(text: string): (Node | string)[] {
  return splitCitations(text).map((piece) => {
    if (typeof piece === "string") return piece;
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

async function render(): Promise<void> {
  if (!task) return;
  const app = document.getElementById("app")!;
  const { summary, testing } = splitTesting(task.message ?? "");
  const header = el("header", {},
    el("h1", {}, task.prompt.split("\n")[0]),
    el("p", { className: `state state-${task.state}` }, `${task.kind === "ask" ? "Ask" : "Code task"} · ${task.state}`
      + (task.reason ? ` — ${task.reason}` : "")),
    el("p", { className: "muted" }, task.taskId));
  const parts: HTMLElement[] = [header];
  if (summary) {
    const body = renderMarkdown(summary);
    // the message usually opens with its own "## Summary"
    parts.push(/^#/.test(summary) ? el("section", { id: "summary" }, body)
      : section("summary", task.kind === "ask" ? "Answer" : "Summary", body));
  } else {
    parts.push(section("summary", "Summary", el("p", { className: "muted" },
      task.state === "finished" ? "No message." : "Not finished yet.")));
  }
  if (task.checks?.length) {
    parts.push(section("testing", "Testing", el("ul", { className: "checks" }, ...task.checks.map((c) => {
      const text = el("span");
      text.innerHTML = markdown.renderInline(checkText(c.check));
      linkCitations(text);
      return el("li", { className: `check check-${c.status}` },
        el("span", { className: "mark", title: c.status }, CHECK_MARKS[c.status] ?? CHECK_MARKS.unknown), text);
    }))));
  } else if (testing) {
    parts.push(section("testing", "Testing", renderMarkdown(testing.replace(/^#+.*\n?/, ""))));
  }
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
  renderPlan();
  renderLog();
  await drawDiagrams();
}

/** Each attempt of a best-of-N task, with an Apply button for any that changed something. */
function renderAttempts(shown: Shown): HTMLElement {
  const rows = attemptRows(shown.attemptResults ?? [], shown.attempt, shown.state).map((r) => {
    const apply = el("button", { disabled: !r.canApply, title: `Apply attempt ${r.attempt}'s change to your files` }, "Apply");
    apply.dataset.attempt = String(r.attempt);
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

function preview(value: unknown, size = 120): string {
  const text = typeof value === "string" ? value : JSON.stringify(value);
  const line = (text ?? "").replace(/\s+/g, " ").trim();
  return line.length > size ? line.slice(0, size - 1) + "…" : line;
}

function describeEvent(e: LogEvent): string {
  switch (e.type) {
    case "state": return `${e.state}${e.reason ? `: ${e.reason}` : ""}`;
    case "tool.call": return `${e.name} ${preview(e.arguments)}`;
    case "tool.result": return `${e.name} → ${e.exit_code ?? e.error ?? "done"} [${e.chunk}]`;
    case "model.reply": return `step ${e.step}: ${e.input_tokens ?? 0} in / ${e.output_tokens ?? 0} out tokens`
      + (e.text ? ` — ${preview(e.text, 80)}` : "");
    case "note": return preview(e.text, 200);
    case "error": case "model.error": return preview(e.error, 200);
    default: return preview(Object.fromEntries(Object.entries(e).filter(([k]) => k !== "t" && k !== "type")));
  }
}

function renderLog(): void {
  const target = document.getElementById("log");
  if (!target || !task) return;
  // streamed output chunks are repeated whole in their tool.result (live ones never get here)
  const events = (task.events ?? []).filter((e) => e.type !== "tool.output");
  const first = events[0]?.t ?? 0;
  const rows = events.map((e) => {
    const what = el("td", {}, describeEvent(e));
    if (e.type === "tool.result" && typeof e.output === "string") {
      what.append(el("details", {}, el("summary", {}, "output"), el("pre", {}, e.output)));
    }
    return el("tr", { className: `event event-${e.type.replace(/\W/g, "-")}` },
      el("td", { className: "time" }, e.t === undefined ? "" : `+${(e.t - first).toFixed(1)}s`),
      el("td", { className: "type" }, e.type), what);
  });
  target.replaceChildren(el("h2", {}, "Event log"), el("table", { className: "log" }, el("tbody", {}, ...rows)));
}
