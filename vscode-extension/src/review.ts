/**
 * Inline review of a finished task's change. The server publishes each pending hunk as an
 * Information diagnostic (source "offload", data {taskId, hunkId}) where the hunk sits now, with
 * accept/reject code actions and CodeLens; this adds what only an editor can show: the hunk's
 * lines (from the server's own hunk list, `offload.showTask` → `hunks`) as decorations there,
 * Accept/Reject all for a file, and a side-by-side diff of the proposed file. Every change to a
 * file goes through the server (`workspace/applyEdit`), never from here.
 */

import * as path from "node:path";
import * as vscode from "vscode";
import { type FileDiff, parseUnifiedDiff, proposedText } from "./diff";
import { type Placed, type ServerHunk, applyDecision, pendingIds, reviewViews } from "./hunks";
import type { OffloadServer } from "./server";
import type { TaskFile, TaskList } from "./taskList";

const PROPOSAL_SCHEME = "offload-proposal";

/** What review needs of a task, from one `offload.showTask`: its diff and its hunks. */
interface TaskChange {
  files: FileDiff[];
  hunks: ServerHunk[];
}

/** The hunks of `uri` waiting for a decision, where the server's diagnostics place them. */
function placedHunks(uri: vscode.Uri): Placed[] {
  const found: Placed[] = [];
  for (const diagnostic of vscode.languages.getDiagnostics(uri)) {
    // vscode-languageclient keeps the LSP diagnostic's `data` on the VS Code diagnostic
    const data = (diagnostic as { data?: { taskId?: unknown; hunkId?: unknown } }).data;
    if (diagnostic.source === "offload" && typeof data?.taskId === "string" && typeof data.hunkId === "string") {
      found.push({ taskId: data.taskId, hunkId: data.hunkId, line: diagnostic.range.start.line });
    }
  }
  return found.sort((a, b) => a.line - b.line);
}

export class Review implements vscode.CodeLensProvider, vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly changes = new Map<string, Promise<TaskChange>>();
  private readonly lensesChanged = new vscode.EventEmitter<void>();
  readonly onDidChangeCodeLenses = this.lensesChanged.event;
  private readonly removedLines = vscode.window.createTextEditorDecorationType({
    isWholeLine: true,
    backgroundColor: new vscode.ThemeColor("diffEditor.removedLineBackground"),
    overviewRulerColor: new vscode.ThemeColor("editorOverviewRuler.deletedForeground"),
    overviewRulerLane: vscode.OverviewRulerLane.Left,
  });
  private readonly addedLines = vscode.window.createTextEditorDecorationType({
    after: {
      color: new vscode.ThemeColor("gitDecoration.addedResourceForeground"),
      backgroundColor: new vscode.ThemeColor("diffEditor.insertedLineBackground"),
      margin: "0 0 0 2em",
    },
    overviewRulerColor: new vscode.ThemeColor("editorOverviewRuler.addedForeground"),
    overviewRulerLane: vscode.OverviewRulerLane.Left,
  });
  private readonly subscriptions: vscode.Disposable[];

  constructor(private readonly server: OffloadServer, private readonly list: TaskList) {
    this.subscriptions = [
      this.lensesChanged, this.removedLines, this.addedLines,
      vscode.languages.onDidChangeDiagnostics((e) => {
        const changed = new Set(e.uris.map(String));
        vscode.window.visibleTextEditors.filter((ed) => changed.has(String(ed.document.uri))).forEach((ed) => void this.decorate(ed));
        this.lensesChanged.fire();
      }),
      vscode.window.onDidChangeVisibleTextEditors((editors) => editors.forEach((ed) => void this.decorate(ed))),
      // A task that runs again (a follow-up) will have another change.
      list.onDidChange((task) => task && task.state !== "finished" && this.changes.delete(task.id)),
      // Decisions arrive as events: the hunks' statuses follow them without asking again;
      // another attempt chosen brings other hunks.
      server.onTaskEvent(({ taskId, event }) => {
        if (event.type === "attempt.chosen") this.changes.delete(taskId);
        const known = this.changes.get(taskId);
        if (known && event.type === "review") {
          const decided = known.then((c) => ({ ...c, hunks: applyDecision(c.hunks, event) }));
          decided.catch(() => this.changes.delete(taskId));
          this.changes.set(taskId, decided);
        }
      }),
      server.onStarted(() => this.changes.clear()),
      vscode.languages.registerCodeLensProvider({ scheme: "file" }, this),
      vscode.workspace.registerTextDocumentContentProvider(PROPOSAL_SCHEME, this),
    ];
  }

  private changeOf(taskId: string): Promise<TaskChange> {
    let change = this.changes.get(taskId);
    if (!change) {
      change = this.server.command<{ diff: string; hunks: ServerHunk[] }>("offload.showTask", { taskId })
        .then((t) => ({ files: parseUnifiedDiff(t.diff ?? ""), hunks: t.hunks ?? [] }));
      change.catch(() => this.changes.delete(taskId));
      this.changes.set(taskId, change);
    }
    return change;
  }

  /** The hunks of each task with a hunk placed in this file. */
  private async hunksOf(placed: Placed[]): Promise<Map<string, ServerHunk[]>> {
    const byTask = new Map<string, ServerHunk[]>();
    for (const taskId of new Set(placed.map((p) => p.taskId))) {
      byTask.set(taskId, (await this.changeOf(taskId).catch(() => undefined))?.hunks ?? []);
    }
    return byTask;
  }

  /** Removed lines tinted where they are now; the added ones shown after the line they follow. */
  private async decorate(editor: vscode.TextEditor): Promise<void> {
    const placed = placedHunks(editor.document.uri);
    const hunks = await this.hunksOf(placed);
    const document = editor.document;
    const removed: vscode.DecorationOptions[] = [];
    const added: vscode.DecorationOptions[] = [];
    for (const view of reviewViews(placed, (id) => hunks.get(id), (i) => document.lineAt(i).text, document.lineCount)) {
      const hover = new vscode.MarkdownString().appendCodeblock(view.hover, "diff");
      if (view.removed) removed.push({ range: new vscode.Range(view.removed.start, 0, view.removed.end, 0), hoverMessage: hover });
      if (view.added) {
        const end = document.lineAt(view.added.after).range.end;
        const more = view.added.more ? `   (+${view.added.more} more lines)` : "";
        added.push({
          range: new vscode.Range(end, end), hoverMessage: hover,
          renderOptions: { after: { contentText: `+ ${view.added.first}${more}` } },
        });
      }
    }
    editor.setDecorations(this.removedLines, removed);
    editor.setDecorations(this.addedLines, added);
  }

  provideCodeLenses(document: vscode.TextDocument): vscode.CodeLens[] {
    const pending = placedHunks(document.uri);
    if (!pending.length) return [];
    const top = new vscode.Range(0, 0, 0, 0);
    return [
      new vscode.CodeLens(top, { title: `Offload: Accept All in File (${pending.length})`, command: "offload.acceptFile", arguments: [document.uri] }),
      new vscode.CodeLens(top, { title: "Reject All in File", command: "offload.rejectFile", arguments: [document.uri] }),
      new vscode.CodeLens(top, { title: "Side by Side", command: "offload.showProposedDiff", arguments: [document.uri] }),
    ];
  }

  /** Each task's pending hunks of the file, by the ids the server gave them. */
  private async pendingOf(uri: vscode.Uri): Promise<{ taskId: string; hunkIds: string[] }[]> {
    const found = [];
    for (const taskId of new Set(placedHunks(uri).map((p) => p.taskId))) {
      const repo = this.list.get(taskId)?.repo;
      if (!repo) continue;
      const { hunks } = await this.changeOf(taskId);
      const hunkIds = pendingIds(hunks, path.relative(repo, uri.fsPath).split(path.sep).join("/"));
      if (hunkIds.length) found.push({ taskId, hunkIds });
    }
    return found;
  }

  /** Accepts every pending hunk of the file, each task's as one edit merged onto the file as it is now. */
  async acceptFile(uri: vscode.Uri): Promise<void> {
    for (const { taskId, hunkIds } of await this.pendingOf(uri)) {
      await this.server.command("offload.acceptHunk", { taskId, hunkIds });
      await diagnosticsUntil(uri, () => !placedHunks(uri).some((p) => p.taskId === taskId && hunkIds.includes(p.hunkId)),
        20_000, `the editor did not apply the change of task ${taskId}; the rest of the file was left for review`);
    }
  }

  /** Accepts every pending hunk of the task, in every file, as one edit (no preview: the user chose them). */
  async acceptTask(taskId: string): Promise<void> {
    const { hunks } = await this.server.command<{ hunks: ServerHunk[] }>("offload.showTask", { taskId });
    const hunkIds = hunks.filter((h) => h.status === "pending").map((h) => h.hunkId);
    if (!hunkIds.length) throw new Error("every hunk of this task is decided already");
    await this.server.command("offload.acceptHunk", { taskId, hunkIds });
  }

  async rejectFile(uri: vscode.Uri): Promise<void> {
    for (const { taskId, hunkIds } of await this.pendingOf(uri)) await this.server.command("offload.rejectHunk", { taskId, hunkIds });
  }

  /** The file beside the task's version of it: from a task's file in the Tasks view, or a file under review. */
  async showProposedDiff(target: vscode.Uri | TaskFile | undefined): Promise<void> {
    let taskId: string | undefined;
    let file: string;
    if (target && "change" in target) {
      taskId = target.task.id;
      file = path.join(target.task.repo, target.change.path);
    } else {
      const uri = target ?? vscode.window.activeTextEditor?.document.uri;
      taskId = uri && placedHunks(uri)[0]?.taskId;
      if (!uri || !taskId) throw new Error("this file has no change from Offload waiting for review");
      file = uri.fsPath;
    }
    const proposal = vscode.Uri.file(file).with({ scheme: PROPOSAL_SCHEME, query: new URLSearchParams({ task: taskId }).toString() });
    const exists = await vscode.workspace.fs.stat(vscode.Uri.file(file)).then(() => true, () => false);
    const left = exists ? vscode.Uri.file(file) : proposal.with({ query: "" }); // a new file: beside nothing
    await vscode.commands.executeCommand("vscode.diff", left, proposal, `${path.basename(file)} ↔ Offload (${taskId})`);
  }

  async provideTextDocumentContent(uri: vscode.Uri): Promise<string> {
    const taskId = new URLSearchParams(uri.query).get("task");
    if (!taskId) return "";
    const repo = this.list.get(taskId)?.repo;
    const change = repo && (await this.changeOf(taskId)).files.find((f) => vscode.Uri.file(path.join(repo, f.path)).path === uri.path);
    if (!change) return "";
    const onDisk = uri.with({ scheme: "file", query: "" });
    const open = vscode.workspace.textDocuments.find((d) => String(d.uri) === String(onDisk));
    const current = open ? open.getText()
      : await vscode.workspace.fs.readFile(onDisk).then((b) => new TextDecoder().decode(b), () => "");
    try {
      return proposedText(current, change);
    } catch (e) {
      void vscode.window.showWarningMessage(`Offload: ${(e as Error).message}`);
      return current;
    }
  }

  dispose(): void {
    this.subscriptions.forEach((d) => d.dispose());
  }
}

/** Resolves once `ready()` holds after a diagnostics change for `uri`; rejects with `failure` after `ms`. */
function diagnosticsUntil(uri: vscode.Uri, ready: () => boolean, ms: number, failure: string): Promise<void> {
  if (ready()) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      listener.dispose();
      reject(new Error(failure));
    }, ms);
    const listener = vscode.languages.onDidChangeDiagnostics((e) => {
      if (e.uris.some((u) => String(u) === String(uri)) && ready()) {
        clearTimeout(timer);
        listener.dispose();
        resolve();
      }
    });
  });
}
