/**
 * A task's page: a webview with Accept All / Follow Up / Discard, each run's summary (citations
 * open the cited lines through the server's `offload.openCitation`, where they are now, `[cN]` goes to the run in the log) and checks, the plan, the changed files
 * and the readable log; an Ask's answer is Markdown with Mermaid diagrams drawn.
 * The page script (dist/webview.js) renders; this side fetches `offload.showTask` and forwards
 * live events. Strict CSP: only our own bundled script runs, nothing is fetched from the network.
 */

import { randomBytes } from "node:crypto";
import * as vscode from "vscode";
import { citationArgument } from "./citation";
import type { Review } from "./review";
import type { OffloadServer } from "./server";
import { FINAL, type Task, reviewText, reviewable } from "./tasks";
import type { TaskList } from "./taskList";

type FromPage =
  | { type: "ready" }
  | { type: "open"; path: string; start: number; end: number }
  | { type: "diff"; path: string }
  | { type: "apply"; attempt: number }
  | { type: "accept" | "followUp" | "discard" };

/** What the page's buttons may do for the task as it is now. */
function actionsOf(task: Task | undefined) {
  return {
    accept: !!task && reviewable(task), discard: !!task && reviewable(task),
    followUp: !!task && FINAL.includes(task.state), review: task ? reviewText(task) : "",
  };
}

export class TaskPages implements vscode.Disposable {
  private readonly panels = new Map<string, { panel: vscode.WebviewPanel; state?: string }>();
  private readonly openWhenEnded = new Set<string>();
  private readonly subscriptions: vscode.Disposable[];

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly server: OffloadServer,
    private readonly list: TaskList,
    private readonly review: Review,
  ) {
    this.subscriptions = [
      server.onTaskEvent(({ taskId, event }) => {
        void this.panels.get(taskId)?.panel.webview.postMessage({ type: "event", event });
        if (event.type === "attempt.chosen") void this.load(taskId); // the page shows the chosen attempt
      }),
      list.onDidChange((task) => task && this.stateChanged(task)),
    ];
  }

  /** Opens the task's page by itself when it ends (an Ask's answer is the point of asking). */
  openWhenDone(taskId: string): void {
    this.openWhenEnded.add(taskId);
  }

  private stateChanged(task: Task): void {
    const open = this.panels.get(task.id);
    if (open && open.state !== task.state) void this.load(task.id);
    else if (open) void open.panel.webview.postMessage({ type: "actions", actions: actionsOf(task) });
    if (FINAL.includes(task.state) && this.openWhenEnded.delete(task.id)) void this.show(task.id);
  }

  async show(taskId: string): Promise<void> {
    const open = this.panels.get(taskId);
    if (open) return open.panel.reveal();
    const dist = vscode.Uri.joinPath(this.extensionUri, "dist");
    const panel = vscode.window.createWebviewPanel("offload.task", `Offload: ${taskId}`, vscode.ViewColumn.Beside, {
      enableScripts: true,
      localResourceRoots: [dist],
      retainContextWhenHidden: true,
    });
    this.panels.set(taskId, { panel });
    panel.onDidDispose(() => this.panels.delete(taskId));
    panel.webview.onDidReceiveMessage((m: FromPage) => this.fromPage(taskId, m).catch(
      (e) => vscode.window.showErrorMessage(`Offload: ${(e as Error).message}`)));
    panel.webview.html = html(panel.webview, dist);
  }

  private async load(taskId: string): Promise<void> {
    const open = this.panels.get(taskId);
    if (!open) return;
    const task = await this.server.command<{ state: string; prompt: string }>("offload.showTask", { taskId });
    open.state = task.state;
    open.panel.title = `Offload: ${task.prompt.split("\n")[0].slice(0, 40)}`;
    await open.panel.webview.postMessage({ type: "task", task, actions: actionsOf(this.list.get(taskId)) });
  }

  private async fromPage(taskId: string, message: FromPage): Promise<void> {
    const task = this.list.get(taskId);
    if (message.type === "ready") return this.load(taskId);
    if (!task) return;
    if (message.type === "open") {
      // the server finds the cited lines of the task's result in the file as it is now, and shows them
      await this.server.command("offload.openCitation", citationArgument(taskId, message));
    } else if (message.type === "diff") {
      const change = task.changes.find((c) => c.path === message.path);
      if (change) await this.review.showProposedDiff({ task, change });
    } else if (message.type === "apply") {
      await this.server.apply(taskId, message.attempt);
    } else if (message.type === "accept") {
      await this.review.acceptTask(taskId);
    } else if (message.type === "followUp") {
      await vscode.commands.executeCommand("offload.followUpTask", task);
    } else if (message.type === "discard") {
      await this.server.command("offload.discard", { taskId });
    }
  }

  dispose(): void {
    this.panels.forEach(({ panel }) => panel.dispose());
    this.subscriptions.forEach((d) => d.dispose());
  }
}

function html(webview: vscode.Webview, dist: vscode.Uri): string {
  const nonce = randomBytes(16).toString("base64");
  const script = webview.asWebviewUri(vscode.Uri.joinPath(dist, "webview.js"));
  const style = webview.asWebviewUri(vscode.Uri.joinPath(dist, "webview.css"));
  // Mermaid writes <style> into its SVGs and styles nodes inline, so styles allow 'unsafe-inline';
  // scripts stay limited to our nonce.
  const csp = [
    "default-src 'none'",
    `img-src ${webview.cspSource} data:`,
    `font-src ${webview.cspSource}`,
    `style-src ${webview.cspSource} 'unsafe-inline'`,
    `script-src 'nonce-${nonce}'`,
  ].join("; ");
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="${style}">
</head>
<body>
<main id="app"><p class="muted">Loading the task…</p></main>
<script nonce="${nonce}" src="${script}"></script>
</body>
</html>`;
}
