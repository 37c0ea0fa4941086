/**
 * Inline review of a finished task's change. The server publishes each pending hunk as an
 * Information diagnostic (source "offload", data {taskId, hunkId}) where the hunk sits now, with
 * accept/reject code actions and CodeLens; this adds what only an editor can show: the replaced
 * lines tinted, and under each hunk its whole change (every removed and added line, from the
 * server's own hunk list, `offload.showTask` → `hunks`) as a comment thread with Accept / Reject /
 * Accept File in its title (a decoration holds one line of text; a thread holds them all); moving
 * between pending hunks, and accepting or rejecting the one at the cursor; Accept/Reject all for a
 * file, and a side-by-side diff of the proposed file. Every change to a file goes through the
 * server (`workspace/applyEdit`), never from here.
 */

import * as path from "node:path";
import * as vscode from "vscode";
import { type FileDiff, parseUnifiedDiff, proposedText } from "./diff";
import {
  type HunkView, type Placed, type ServerHunk, type Spot, applyDecision, changeMarkdown, changeTitle, hunkAt, isLong, nextSpot,
  pendingIds, reviewViews,
} from "./hunks";
import type { OffloadServer } from "./server";
import type { TaskFile, TaskList } from "./taskList";

const PROPOSAL_SCHEME = "offload-proposal";
/** The context key the review's keybindings need: the active editor has pending hunks. */
const HAS_CHANGES = "offload.hasPendingChanges";
/** The comment threads' `commentThread` context value, which their title actions match. */
const THREAD_CONTEXT = "offloadChange";

/** What review needs of a task, from one `offload.showTask`: its diff and its hunks. */
interface TaskChange {
  files: FileDiff[];
  hunks: ServerHunk[];
}

/** The offload hunk of a diagnostic, if it is one. */
function placedOf(diagnostic: vscode.Diagnostic): Placed | undefined {
  // vscode-languageclient keeps the LSP diagnostic's `data` on the VS Code diagnostic
  const data = (diagnostic as { data?: { taskId?: unknown; hunkId?: unknown } }).data;
  if (diagnostic.source !== "offload" || typeof data?.taskId !== "string" || typeof data.hunkId !== "string") return undefined;
  return { taskId: data.taskId, hunkId: data.hunkId, line: diagnostic.range.start.line, end: diagnostic.range.end.line };
}

/** The hunks of `uri` waiting for a decision, where the server's diagnostics place them. */
function placedHunks(uri: vscode.Uri): Placed[] {
  return vscode.languages.getDiagnostics(uri).map(placedOf).filter((p): p is Placed => !!p).sort((a, b) => a.line - b.line);
}

/** Every pending hunk's first line, in every file the server published some for. */
function allSpots(): Spot[] {
  return vscode.languages.getDiagnostics().flatMap(([uri, diagnostics]) => diagnostics.map(placedOf)
    .filter((p): p is Placed => !!p).map((p) => ({ file: String(uri), line: p.line })));
}

/** A hunk's comment thread and what it shows. */
interface Shown {
  thread: vscode.CommentThread;
  taskId: string;
  hunkId: string;
  diff: string;
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
  private readonly comments = vscode.comments.createCommentController("offload.review", "Offload");
  /** Each hunk's thread, by `uri \n taskId \n hunkId`. */
  private readonly threads = new Map<string, Shown>();
  private readonly subscriptions: vscode.Disposable[];

  constructor(private readonly server: OffloadServer, private readonly list: TaskList) {
    this.subscriptions = [
      this.lensesChanged, this.removedLines, this.comments,
      vscode.languages.onDidChangeDiagnostics((e) => {
        const changed = new Set(e.uris.map(String));
        vscode.window.visibleTextEditors.filter((ed) => changed.has(String(ed.document.uri))).forEach((ed) => void this.decorate(ed));
        e.uris.filter((u) => !vscode.window.visibleTextEditors.some((ed) => String(ed.document.uri) === String(u)))
          .forEach((u) => this.keepThreads(u, placedHunks(u)));
        this.lensesChanged.fire();
        this.updateContext();
      }),
      vscode.window.onDidChangeVisibleTextEditors((editors) => editors.forEach((ed) => void this.decorate(ed))),
      vscode.window.onDidChangeActiveTextEditor(() => this.updateContext()),
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

  /** Removed lines tinted where they are now; each hunk's whole change in a thread under it. */
  private async decorate(editor: vscode.TextEditor): Promise<void> {
    const placed = placedHunks(editor.document.uri);
    const hunks = await this.hunksOf(placed);
    const document = editor.document;
    const views = reviewViews(placed, (id) => hunks.get(id), (i) => document.lineAt(i).text, document.lineCount);
    editor.setDecorations(this.removedLines, views.filter((v) => v.removed).map((v) => ({
      range: new vscode.Range(v.removed!.start, 0, v.removed!.end, 0),
      hoverMessage: new vscode.MarkdownString(changeMarkdown(v)),
    })));
    this.keepThreads(document.uri, views);
    for (const view of views) this.showThread(document.uri, view);
  }

  /** Removes the threads of `uri` whose hunk is not among `kept` (decided, or no longer where it was). */
  private keepThreads(uri: vscode.Uri, kept: { taskId: string; hunkId: string }[]): void {
    const keys = new Set(kept.map((k) => threadKey(uri, k)));
    for (const [key, shown] of this.threads) {
      if (String(shown.thread.uri) === String(uri) && !keys.has(key)) {
        shown.thread.dispose();
        this.threads.delete(key);
      }
    }
  }

  /** The hunk's thread under its lines: its title says how big the change is, its body shows every line of it. */
  private showThread(uri: vscode.Uri, view: HunkView): void {
    const key = threadKey(uri, view);
    const range = new vscode.Range(view.removed?.start ?? view.anchor, 0, view.anchor, 0);
    const task = this.list.get(view.taskId)?.prompt.split("\n")[0].slice(0, 60) ?? view.taskId;
    const comments: vscode.Comment[] = [{
      body: new vscode.MarkdownString(changeMarkdown(view)),
      mode: vscode.CommentMode.Preview,
      author: { name: "Offload" },
    }];
    const known = this.threads.get(key);
    if (known) {
      if (!known.thread.range?.isEqual(range)) known.thread.range = range;
      if (known.diff !== view.diff) { // a follow-up's hunk under the same id: its change is another
        known.thread.comments = comments;
        known.thread.label = changeTitle(view, task);
        known.diff = view.diff;
      }
      return;
    }
    const thread = this.comments.createCommentThread(uri, range, comments);
    thread.label = changeTitle(view, task);
    thread.contextValue = THREAD_CONTEXT;
    thread.canReply = false;
    thread.collapsibleState = isLong(view) ? vscode.CommentThreadCollapsibleState.Collapsed
      : vscode.CommentThreadCollapsibleState.Expanded;
    this.threads.set(key, { thread, taskId: view.taskId, hunkId: view.hunkId, diff: view.diff });
  }

  /** Whether the active editor has pending hunks: the review's keybindings apply only then. */
  private updateContext(): void {
    const editor = vscode.window.activeTextEditor;
    void vscode.commands.executeCommand("setContext", HAS_CHANGES, !!editor && placedHunks(editor.document.uri).length > 0);
  }

  /** The hunk a command is about: its thread's (from the thread's title), else the one at the cursor. */
  private target(arg: unknown): { taskId: string; hunkId: string } {
    const shown = [...this.threads.values()].find((s) => s.thread === arg);
    if (shown) return shown;
    const editor = vscode.window.activeTextEditor;
    const found = editor && hunkAt(placedHunks(editor.document.uri), editor.selection.active.line);
    if (!found) throw new Error("no change from Offload at the cursor (Alt+F5 goes to the next one)");
    return found;
  }

  /** Accepts the hunk of a thread, or the one at the cursor. */
  async acceptChange(arg?: unknown): Promise<void> {
    const { taskId, hunkId } = this.target(arg);
    await this.server.command("offload.acceptHunk", { taskId, hunkId });
  }

  /** Rejects the hunk of a thread, or the one at the cursor. */
  async rejectChange(arg?: unknown): Promise<void> {
    const { taskId, hunkId } = this.target(arg);
    await this.server.command("offload.rejectHunk", { taskId, hunkId });
  }

  /** Moves the cursor to the next (or previous) pending hunk: down the file, then on to the next file with one, round. */
  async goToChange(forward: boolean): Promise<void> {
    const editor = vscode.window.activeTextEditor;
    const at = editor ? { file: String(editor.document.uri), line: editor.selection.active.line } : { file: "", line: -1 };
    const spot = nextSpot(allSpots(), at, forward);
    if (!spot) throw new Error("no change from Offload waiting for review");
    const position = new vscode.Position(spot.line, 0);
    const target = editor && String(editor.document.uri) === spot.file ? editor
      : await vscode.window.showTextDocument(vscode.Uri.parse(spot.file));
    target.selection = new vscode.Selection(position, position);
    target.revealRange(new vscode.Range(position, position), vscode.TextEditorRevealType.InCenterIfOutsideViewport);
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
    this.threads.forEach((s) => s.thread.dispose());
    this.subscriptions.forEach((d) => d.dispose());
  }
}

function threadKey(uri: vscode.Uri, hunk: { taskId: string; hunkId: string }): string {
  return `${uri}\n${hunk.taskId}\n${hunk.hunkId}`;
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
