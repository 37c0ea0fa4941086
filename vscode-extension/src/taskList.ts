/** The Tasks view and the status bar item, both fed from one task list kept up to date by the server. */

import * as path from "node:path";
import * as vscode from "vscode";
import type { OffloadServer } from "./server";
import {
  type Change, type Summary, type Task, type TaskEvent, applyEvent, applySummary, counts, countsText, describe, lastRunStart,
  reviewOf, reviewable,
} from "./tasks";

// Events after which a finished task's hunks are counted again
const REVIEW_EVENTS = new Set(["review", "applied", "discarded", "attempt.chosen"]);

export class TaskList implements vscode.Disposable {
  readonly tasks = new Map<string, Task>();
  private readonly changed = new vscode.EventEmitter<Task | undefined>();
  /** Fires with the task that changed, or undefined when the whole list was reloaded. */
  readonly onDidChange = this.changed.event;
  private readonly subscriptions: vscode.Disposable[];
  private readonly previous = new vscode.EventEmitter<{ before: Task | undefined; after: Task }>();
  /**
   * Fires with a task as its previous summary showed it and as its new one does. Summaries, not
   * events: a task's last state event comes before the summary that carries its changes.
   */
  readonly onDidTransition = this.previous.event;
  private readonly summarised = new Map<string, Task>();

  constructor(private readonly server: OffloadServer) {
    this.subscriptions = [
      this.changed, this.previous,
      server.onStarted(() => void this.reload()),
      server.onTaskUpdated((summary) => {
        const after = applySummary(this.tasks.get(summary.taskId), summary);
        this.put(after);
        this.previous.fire({ before: this.summarised.get(after.id), after });
        this.summarised.set(after.id, after);
      }),
      server.onTaskEvent(({ taskId, event }) => {
        this.put(applyEvent(this.tasks.get(taskId), taskId, event));
        if (REVIEW_EVENTS.has(event.type)) void this.countHunks(taskId);
      }),
    ];
  }

  /**
   * Asks the server how many of a finished Code task's hunks are still to decide; its log says
   * when its last run began too (a summary knows only when the task was created).
   */
  private async countHunks(taskId: string): Promise<void> {
    try {
      const { hunks, events } = await this.server.command<{ hunks: { status: string }[]; events: TaskEvent[] }>(
        "offload.showTask", { taskId });
      const task = this.tasks.get(taskId);
      if (task) this.put({ ...task, review: reviewOf(hunks ?? []), started: lastRunStart(events ?? []) ?? task.started }, false);
    } catch {
      // the task is gone, or the server: the view shows what it knew
    }
  }

  async reload(): Promise<void> {
    try {
      const { tasks } = await this.server.command<{ tasks: Summary[] }>("offload.listTasks", {});
      this.tasks.clear();
      for (const summary of tasks) this.tasks.set(summary.taskId, applySummary(undefined, summary));
      this.summarised.clear();
      this.tasks.forEach((task, id) => this.summarised.set(id, task));
      this.changed.fire(undefined);
      for (const task of this.visible()) if (task.kind === "code" && task.state === "finished" && task.changes.length) void this.countHunks(task.id);
    } catch (e) {
      this.server.output.appendLine(`Could not list the tasks: ${(e as Error).message}`);
    }
  }

  get(taskId: string): Task | undefined {
    return this.tasks.get(taskId);
  }

  /** This window's tasks (those of its workspace folders), newest first. */
  visible(): Task[] {
    const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
    const ours = (t: Task) =>
      !folders.length || folders.some((f) => t.repo === f || isInside(f, t.repo) || isInside(t.repo, f));
    return [...this.tasks.values()].filter(ours).sort((a, b) => b.id.localeCompare(a.id));
  }

  private put(task: Task, count = true): void {
    const before = this.tasks.get(task.id);
    this.tasks.set(task.id, task);
    this.changed.fire(task);
    if (count && task.state === "finished" && task.kind === "code" && (before?.state !== "finished" || !before.changes.length)
      && task.changes.length) {
      void this.countHunks(task.id);
    }
  }

  dispose(): void {
    this.subscriptions.forEach((d) => d.dispose());
  }
}

function isInside(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  return !!child && !rel.startsWith("..") && !path.isAbsolute(rel);
}

/** A changed file of a task, a child of its task in the view. */
export interface TaskFile {
  task: Task;
  change: Change;
}

type Node = Task | TaskFile;

const ICONS: Record<string, vscode.ThemeIcon> = {
  queued: new vscode.ThemeIcon("clock"),
  preparing: new vscode.ThemeIcon("loading~spin"),
  running: new vscode.ThemeIcon("sync~spin"),
  finished: new vscode.ThemeIcon("pass", new vscode.ThemeColor("testing.iconPassed")),
  failed: new vscode.ThemeIcon("error", new vscode.ThemeColor("testing.iconFailed")),
  cancelled: new vscode.ThemeIcon("circle-slash"),
};

export class TasksView implements vscode.TreeDataProvider<Node>, vscode.Disposable {
  private readonly changed = new vscode.EventEmitter<Node | undefined>();
  readonly onDidChangeTreeData = this.changed.event;
  private readonly subscriptions: vscode.Disposable[];
  private ticker: NodeJS.Timeout | undefined;

  constructor(private readonly list: TaskList) {
    this.subscriptions = [this.changed, list.onDidChange(() => this.refresh())];
  }

  private refresh(): void {
    this.changed.fire(undefined);
    // Elapsed times of running tasks tick once a second, only while some task runs.
    const running = counts(this.list.visible()).running > 0;
    if (running && !this.ticker) this.ticker = setInterval(() => this.changed.fire(undefined), 1000);
    if (!running && this.ticker) {
      clearInterval(this.ticker);
      this.ticker = undefined;
    }
  }

  getChildren(node?: Node): Node[] {
    if (!node) return this.list.visible();
    return "change" in node ? [] : node.changes.map((change) => ({ task: node, change }));
  }

  getTreeItem(node: Node): vscode.TreeItem {
    if ("change" in node) {
      const file = vscode.Uri.file(path.join(node.task.repo, node.change.path));
      const item = new vscode.TreeItem(file, vscode.TreeItemCollapsibleState.None);
      item.description = `${path.dirname(node.change.path) === "." ? "" : path.dirname(node.change.path) + " · "}${node.change.status}`;
      item.contextValue = "offloadFile";
      item.command = { title: "Show Proposed Change", command: "offload.showProposedDiff", arguments: [node] };
      return item;
    }
    const task = node;
    const title = task.prompt.split("\n")[0] || task.id;
    const item = new vscode.TreeItem(
      title.length > 32 ? title.slice(0, 31) + "…" : title, // short: the state beside it stays in view in a narrow sidebar
      task.changes.length ? vscode.TreeItemCollapsibleState.Collapsed : vscode.TreeItemCollapsibleState.None,
    );
    item.id = task.id;
    item.description = `${task.kind === "ask" ? "ask · " : ""}${describe(task, Date.now() / 1000)}`;
    item.tooltip = new vscode.MarkdownString().appendText(`${task.prompt}\n\n${task.id} · ${task.state}`)
      .appendText(task.reason ? `: ${task.reason}` : "");
    item.iconPath = ICONS[task.state] ?? new vscode.ThemeIcon("circle-outline");
    // e.g. "task:running", "task:finished:review"; the view's inline actions match on it
    item.contextValue = `task:${task.state}${reviewable(task) ? ":review" : ""}`;
    item.command = { title: "Open Task", command: "offload.showTaskLog", arguments: [task] };
    return item;
  }

  dispose(): void {
    clearInterval(this.ticker);
    this.subscriptions.forEach((d) => d.dispose());
  }
}

export function statusBar(list: TaskList): vscode.Disposable {
  const item = vscode.window.createStatusBarItem("offload.tasks", vscode.StatusBarAlignment.Left, 10);
  item.name = "Offload Tasks";
  item.command = "offload.tasks.focus";
  const update = () => {
    const { running, failed } = counts(list.visible());
    item.text = `${running ? "$(sync~spin)" : failed ? "$(error)" : "$(checklist)"} Offload: ${countsText(list.visible())}`;
    item.tooltip = "Offload tasks: show the Tasks view";
    item.show();
  };
  update();
  return vscode.Disposable.from(item, list.onDidChange(update));
}
