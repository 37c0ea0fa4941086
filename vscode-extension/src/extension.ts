/** Offload for VS Code: the language server, the Tasks view, inline review and task pages. */

import * as path from "node:path";
import * as vscode from "vscode";
import { runDoctor } from "./doctor";
import { type Notice, fromServer, notice } from "./notices";
import { Review } from "./review";
import { API_KEY_SECRET, OffloadServer } from "./server";
import { TaskPages } from "./taskPage";
import { type TaskFile, TaskList, TasksView, statusBar } from "./taskList";
import { ACTIVE, FINAL, type Task, reviewable } from "./tasks";

let running: OffloadServer | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const server = (running = new OffloadServer(context.secrets, context.extensionUri));
  server.toldByExtension = fromServer;
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

  /** A task's end, told with its buttons: Review opens its first changed file, where the hunks are. */
  async function tell(news: Notice, task: Task): Promise<void> {
    const show = news.level === "error" ? vscode.window.showErrorMessage : vscode.window.showInformationMessage;
    const choice = await show(news.text, ...news.actions);
    if (choice === "Review" && task.changes.length) {
      await vscode.window.showTextDocument(vscode.Uri.file(path.join(task.repo, task.changes[0].path)));
    } else if (choice === "Show Task") {
      await pages.show(task.id);
    } else if (choice === "Open Settings") {
      await vscode.commands.executeCommand("workbench.action.openSettings", "offload.model");
    } else if (choice === "Retry") {
      const { taskId } = await server.command<{ taskId: string }>(`offload.${task.kind === "ask" ? "ask" : "code"}`,
        { prompt: task.prompt });
      if (task.kind === "ask") pages.openWhenDone(taskId);
    }
  }

  /** Asks for one of the model's settings and saves it for the user (the server gets it at once). */
  async function setSetting(setting: string, title: string, prompt: string, placeHolder: string): Promise<void> {
    const config = vscode.workspace.getConfiguration("offload");
    const value = await vscode.window.showInputBox({
      title, prompt, placeHolder, value: config.get<string>(setting) ?? "", ignoreFocusOut: true,
    });
    if (value !== undefined) await config.update(setting, value.trim(), vscode.ConfigurationTarget.Global);
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
    "offload.discardTask": (arg) => taskCommand(arg, reviewable, "discard",
      (t) => server.command("offload.discard", { taskId: t.id })),
    "offload.showTaskLog": (arg) => taskCommand(arg, () => true, "show", (t) => pages.show(t.id)),
    "offload.acceptFile": (target?: vscode.Uri | vscode.CommentThread) => review.acceptFile(fileOf(target)),
    "offload.rejectFile": (target?: vscode.Uri | vscode.CommentThread) => review.rejectFile(fileOf(target)),
    "offload.acceptChange": (thread?: vscode.CommentThread) => review.acceptChange(thread),
    "offload.rejectChange": (thread?: vscode.CommentThread) => review.rejectChange(thread),
    "offload.nextChange": () => review.goToChange(true),
    "offload.previousChange": () => review.goToChange(false),
    "offload.showProposedDiff": (target?: vscode.Uri | TaskFile) => review.showProposedDiff(target),
    "offload.refreshTasks": () => list.reload(),
    "offload.restartServer": () => server.restart(),
    "offload.setBaseUrl": () => setSetting("model.baseUrl", "Offload: Set Model Server",
      "The OpenAI-compatible endpoint (empty: Offload's configuration decides)", "http://127.0.0.1:11434/v1"),
    "offload.setModel": () => setSetting("model.name", "Offload: Set Model",
      "The model's name as the server lists it (empty: Offload's configuration decides)", "qwen2.5-coder:7b"),
    "offload.doctor": () => runDoctor(server),
    "offload.openWalkthrough": async () => {
      await vscode.commands.executeCommand("workbench.action.openWalkthrough", WALKTHROUGH, false);
    },
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
    list.onDidTransition(({ before, after }) => {
      const news = notice(before, after);
      if (news) void tell(news, after).catch((e: Error) => vscode.window.showErrorMessage(`Offload: ${e.message}`));
    }),
    vscode.window.createTreeView("offload.tasks", { treeDataProvider: view, showCollapseAll: true }),
    ...Object.entries(commands).map(([id, run]) => vscode.commands.registerCommand(id, (...args) =>
      run(...args).catch((e: Error) => vscode.window.showErrorMessage(`Offload: ${e.message}`)))),
    vscode.workspace.onDidChangeConfiguration((e) => {
      // another Python (or Offload) needs another server; any other setting reaches the running one
      if (e.affectsConfiguration("offload.pythonPath") || e.affectsConfiguration("offload.importStrategy")) void server.restart();
      else if (e.affectsConfiguration("offload")) void server.configurationChanged();
    }),
  );
  server.start().catch((e: Error) => vscode.window.showErrorMessage(`Offload: the server did not start: ${e.message}`));
  // the first time, unless a model is set already: how to point Offload at one
  const model = vscode.workspace.getConfiguration("offload.model");
  if (!context.globalState.get("offload.welcomed") && !model.get("baseUrl") && !model.get("name")) {
    void context.globalState.update("offload.welcomed", true);
    void vscode.commands.executeCommand("workbench.action.openWalkthrough", WALKTHROUGH, false);
  }
}

const WALKTHROUGH = "offload.offload#setUp";

/** The file a command is about: the one given, a change's thread's (from its title), else the active editor's. */
function fileOf(target: vscode.Uri | vscode.CommentThread | undefined): vscode.Uri {
  const file = target instanceof vscode.Uri ? target : target?.uri ?? vscode.window.activeTextEditor?.document.uri;
  if (!file) throw new Error("open the file to review first");
  return file;
}

/** Stops the server and waits for it, so no `offload serve` outlives the window. */
export function deactivate(): Promise<void> | undefined {
  return running?.stop();
}
