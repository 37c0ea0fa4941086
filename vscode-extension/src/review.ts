/**
 * Inline review of a finished task's change. The server publishes each pending hunk as an
 * Information diagnostic (source "offload", data {taskId, hunkId}) with accept/reject code
 * actions and CodeLens; this adds what only an editor can show: the proposed lines as
 * decorations, Accept/Reject all for a file, and a side-by-side diff of the proposed file.
 * Every change to a file goes through the server (`workspace/applyEdit`), never from here.
 */

import * as path from "node:path";
import * as vscode from "vscode";
import { type FileDiff, blocks, parseUnifiedDiff, proposedText } from "./diff";
import type { OffloadServer } from "./server";
import type { TaskFile, TaskList } from "./taskList";

const PROPOSAL_SCHEME = "offload-proposal";

interface HunkRef {
  taskId: string;
  hunkId: string;
}

interface PendingHunk {
  diagnostic: vscode.Diagnostic;
  hunk: HunkRef;
}

/** The hunks of `uri` waiting for a decision, top to bottom. */
function pendingHunks(uri: vscode.Uri): PendingHunk[] {
  const found: PendingHunk[] = [];
  for (const diagnostic of vscode.languages.getDiagnostics(uri)) {
    // vscode-languageclient keeps the LSP diagnostic's `data` on the VS Code diagnostic
    const data = (diagnostic as { data?: Partial<HunkRef> }).data;
    if (diagnostic.source === "offload" && typeof data?.taskId === "string" && typeof data.hunkId === "string") {
      found.push({ diagnostic, hunk: { taskId: data.taskId, hunkId: data.hunkId } });
    }
  }
  return found.sort((a, b) => a.diagnostic.range.start.line - b.diagnostic.range.start.line);
}

export class Review implements vscode.CodeLensProvider, vscode.TextDocumentContentProvider, vscode.Disposable {
  private readonly diffs = new Map<string, Promise<FileDiff[]>>();
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
      // A task that runs again (a follow-up) will have another diff.
      list.onDidChange((task) => task && task.state !== "finished" && this.diffs.delete(task.id)),
      server.onStarted(() => this.diffs.clear()),
      vscode.languages.registerCodeLensProvider({ scheme: "file" }, this),
      vscode.workspace.registerTextDocumentContentProvider(PROPOSAL_SCHEME, this),
    ];
  }

  private diffOf(taskId: string): Promise<FileDiff[]> {
    let diff = this.diffs.get(taskId);
    if (!diff) {
      diff = this.server.command<{ diff: string }>("offload.showTask", { taskId }).then((t) => parseUnifiedDiff(t.diff));
      diff.catch(() => this.diffs.delete(taskId));
      this.diffs.set(taskId, diff);
    }
    return diff;
  }

  /** Removed lines tinted where they are now; the added ones shown after the line they follow. */
  private async decorate(editor: vscode.TextEditor): Promise<void> {
    const removed: vscode.DecorationOptions[] = [];
    const added: vscode.DecorationOptions[] = [];
    for (const { diagnostic, hunk } of pendingHunks(editor.document.uri)) {
      const cut = hunk.hunkId.lastIndexOf("#");
      const file = (await this.diffOf(hunk.taskId).catch(() => [])).find((f) => f.path === hunk.hunkId.slice(0, cut));
      const block = file && blocks(file)[Number(hunk.hunkId.slice(cut + 1)) - 1];
      if (!block) continue;
      const hover = new vscode.MarkdownString().appendCodeblock(
        [...block.removed.map((l) => `-${l}`), ...block.added.map((l) => `+${l}`)].join("\n"), "diff");
      const start = diagnostic.range.start.line;
      if (block.removed.length) {
        removed.push({ range: new vscode.Range(start, 0, start + block.removed.length - 1, 0), hoverMessage: hover });
      }
      if (block.added.length) {
        const line = Math.min(block.removed.length ? start + block.removed.length - 1 : Math.max(start - 1, 0),
          editor.document.lineCount - 1);
        const more = block.added.length > 1 ? `   (+${block.added.length - 1} more lines)` : "";
        const end = editor.document.lineAt(line).range.end;
        added.push({
          range: new vscode.Range(end, end), hoverMessage: hover,
          renderOptions: { after: { contentText: `+ ${block.added[0].trim()}${more}` } },
        });
      }
    }
    editor.setDecorations(this.removedLines, removed);
    editor.setDecorations(this.addedLines, added);
  }

  provideCodeLenses(document: vscode.TextDocument): vscode.CodeLens[] {
    const pending = pendingHunks(document.uri);
    if (!pending.length) return [];
    const top = new vscode.Range(0, 0, 0, 0);
    return [
      new vscode.CodeLens(top, { title: `Offload: Accept All in File (${pending.length})`, command: "offload.acceptFile", arguments: [document.uri] }),
      new vscode.CodeLens(top, { title: "Reject All in File", command: "offload.rejectFile", arguments: [document.uri] }),
      new vscode.CodeLens(top, { title: "Side by Side", command: "offload.showProposedDiff", arguments: [document.uri] }),
    ];
  }

  /** Accepts the file's hunks one at a time: each is merged onto the file as the previous left it. */
  async acceptFile(uri: vscode.Uri): Promise<void> {
    const count = pendingHunks(uri).length;
    for (let i = 0; i < count; i++) {
      const next = pendingHunks(uri)[0];
      if (!next) return;
      await this.server.command("offload.acceptHunk", next.hunk);
      const same = (p: PendingHunk) => p.hunk.taskId === next.hunk.taskId && p.hunk.hunkId === next.hunk.hunkId;
      await diagnosticsUntil(uri, () => !pendingHunks(uri).some(same), 20_000,
        `the editor did not apply hunk ${next.hunk.hunkId}; the rest of the file was left for review`);
    }
  }

  async rejectFile(uri: vscode.Uri): Promise<void> {
    for (const { hunk } of pendingHunks(uri)) await this.server.command("offload.rejectHunk", hunk);
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
      taskId = uri && pendingHunks(uri)[0]?.hunk.taskId;
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
    const change = repo && (await this.diffOf(taskId)).find((f) => vscode.Uri.file(path.join(repo, f.path)).path === uri.path);
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
