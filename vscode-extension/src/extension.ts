/** Offload for VS Code: the language server, the Tasks view, inline review and task pages. */

import * as vscode from "vscode";
import { Review } from "./review";
import { API_KEY_SECRET, OffloadServer } from "./server";
import { TaskPages } from "./taskPage";
import { type TaskFile, TaskList, TasksView, statusBar } from "./taskList";
import { ACTIVE, FINAL, type Task, reviewable } from "./tasks";

let running: OffloadServer | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const server = (running = new OffloadServer(context.secrets));
  const list = new TaskList(server);
  const view = new TasksView(list);
  const review = new Review(server, list);
  const pages = new TaskPages(context.extensionUri, server, list, review);

  /** The task a command is about: the view's item it was run on, else the user's pick among `fits`. */
  async function pickTask(arg: unknown, fits: (t: Task) => boolean, what: string): Promise<Task | undefined> {
    if (arg && typeof arg === "object" && "id" in arg) return arg as Task;
    const candidates = list.visible().filter(fits);
    if (!candidates.length) throw new Error(`no task to ${what}`);
    if (candidates.length === 1) return candidates[0];
    const picked = await vscode.window.showQuickPick(
      candidates.map((task) => ({ label: task.prompt.split("\n")[0], description: `${task.state} · ${task.id}`, task })),
      { title: `Offload: the task to ${what}` },
    );
    return picked?.task;
  }

  async function startTask(kind: "code" | "ask"): Promise<void> {
    const prompt = await vscode.window.showInputBox({
      title: kind === "code" ? "Offload: New Code Task" : "Offload: Ask",
      prompt: kind === "code" ? "What should Offload do? It works in a sandbox; you review the change."
        : "What do you want to know about this code?",
      ignoreFocusOut: true,
    });
    if (!prompt?.trim()) return;
    const arg: { prompt: string; uri?: string; range?: object } = { prompt };
    const editor = vscode.window.activeTextEditor;
    if (editor?.document.uri.scheme === "file") {
      arg.uri = editor.document.uri.toString();
      const { start, end } = editor.selection;
      if (!editor.selection.isEmpty) {
        arg.range = { start: { line: start.line, character: start.character }, end: { line: end.line, character: end.character } };
      }
    }
    const { taskId } = await server.command<{ taskId: string }>(`offload.${kind}`, arg);
    if (kind === "ask") pages.openWhenDone(taskId);
    vscode.window.setStatusBarMessage(`Offload: started ${kind === "ask" ? "Ask" : "Code task"} ${taskId}`, 5000);
  }

  async function taskCommand(arg: unknown, fits: (t: Task) => boolean, what: string, run: (t: Task) => Promise<unknown>) {
    const task = await pickTask(arg, fits, what);
    if (task) await run(task);
  }

  const commands: Record<string, (...args: any[]) => Promise<unknown>> = {
    "offload.newCodeTask": () => startTask("code"),
    "offload.newAsk": () => startTask("ask"),
    "offload.cancelTask": (arg) => taskCommand(arg, (t) => ACTIVE.includes(t.state), "cancel",
      (t) => server.command("offload.cancel", { taskId: t.id })),
    "offload.followUpTask": (arg) => taskCommand(arg, (t) => FINAL.includes(t.state), "follow up", async (t) => {
      const prompt = await vscode.window.showInputBox({
        title: `Offload: Follow Up on "${t.prompt.split("\n")[0].slice(0, 40)}"`,
        prompt: "What should change? Rejected hunks go along.", ignoreFocusOut: true,
      });
      if (prompt?.trim()) await server.command("offload.followUp", { taskId: t.id, prompt });
    }),
    "offload.applyTask": (arg) => taskCommand(arg, reviewable, "apply", (t) => server.apply(t.id)),
    "offload.discardTask": (arg) => taskCommand(arg, (t) => t.kind === "code" && FINAL.includes(t.state) && !t.discarded, "discard",
      (t) => server.command("offload.discard", { taskId: t.id })),
    "offload.showTaskLog": (arg) => taskCommand(arg, () => true, "show", (t) => pages.show(t.id)),
    "offload.acceptFile": (uri?: vscode.Uri) => review.acceptFile(fileOf(uri)),
    "offload.rejectFile": (uri?: vscode.Uri) => review.rejectFile(fileOf(uri)),
    "offload.showProposedDiff": (target?: vscode.Uri | TaskFile) => review.showProposedDiff(target),
    "offload.refreshTasks": () => list.reload(),
    "offload.restartServer": () => server.restart(),
    "offload.setApiKey": async () => {
      const key = await vscode.window.showInputBox({
        title: "Offload: Set API Key", password: true, ignoreFocusOut: true,
        prompt: "Kept in VS Code's secret storage and given to the Offload server as OPENAI_API_KEY. Empty removes it.",
      });
      if (key === undefined) return;
      await (key ? context.secrets.store(API_KEY_SECRET, key) : context.secrets.delete(API_KEY_SECRET));
      await server.restart();
    },
  };

  context.subscriptions.push(
    server, list, view, review, pages, statusBar(list),
    vscode.window.createTreeView("offload.tasks", { treeDataProvider: view, showCollapseAll: true }),
    ...Object.entries(commands).map(([id, run]) => vscode.commands.registerCommand(id, (...args) =>
      run(...args).catch((e: Error) => vscode.window.showErrorMessage(`Offload: ${e.message}`)))),
    // Settings reach the server at initialize only, so a change restarts it.
    vscode.workspace.onDidChangeConfiguration((e) => e.affectsConfiguration("offload") && void server.restart()),
  );
  server.start().catch((e: Error) => vscode.window.showErrorMessage(`Offload: the server did not start: ${e.message}`));
}

function fileOf(uri: vscode.Uri | undefined): vscode.Uri {
  const file = uri ?? vscode.window.activeTextEditor?.document.uri;
  if (!file) throw new Error("open the file to review first");
  return file;
}

/** Stops the server and waits for it, so no `offload serve` outlives the window. */
export function deactivate(): Promise<void> | undefined {
  return running?.stop();
}
