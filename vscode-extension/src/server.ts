/**
 * The Offload language server: started as `<python> -m offload.server.cli serve` over stdio, with
 * the server and its dependencies from the extension's own `bundled/libs` on PYTHONPATH (so a
 * user installs nothing but the VSIX), the editor's settings as initialization options (and as
 * `workspace/didChangeConfiguration` when they change), and the API key from SecretStorage in
 * its environment (never in settings, never in a sandbox: the server keeps it to itself).
 */

import { execFile } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import * as vscode from "vscode";
import {
  CancellationToken, DidChangeConfigurationNotification, ExecuteCommandRequest, LanguageClient, MessageType, ShowMessageNotification,
  type ShowDocumentResult,
} from "vscode-languageclient/node";
import { columnBesidePage } from "./citation";
import { PYTHON_CHECK, type PythonExtensionApi, inWords, pythonCommand, pythonProblem } from "./interpreter";
import { PROMPT_CAPABILITY, withPrompt } from "./prompt";
import { serverSettings } from "./settings";
import type { Summary, TaskEvent } from "./tasks";

export const API_KEY_SECRET = "offload.apiKey";

/** How Offload runs: the Python command, and the environment that finds Offload for it. */
export interface Runtime {
  command: string[];
  env: NodeJS.ProcessEnv;
  bundled: boolean; // Offload comes from the extension's bundled/libs
}

export class OffloadServer implements vscode.Disposable {
  /** The one output channel, kept across restarts: the server's log and the extension's. */
  readonly output = vscode.window.createOutputChannel("Offload");
  private client: LanguageClient | undefined;
  private starting: Promise<void> = Promise.resolve();
  private readonly updated = new vscode.EventEmitter<Summary>();
  private readonly evented = new vscode.EventEmitter<{ taskId: string; event: TaskEvent }>();
  private readonly started = new vscode.EventEmitter<void>();
  readonly onTaskUpdated = this.updated.event;
  readonly onTaskEvent = this.evented.event;
  /** Fires each time a server (re)starts: its task list is the one to show. */
  readonly onStarted = this.started.event;
  /**
   * Whether a message the server shows is news the extension tells itself (a task that ended, with
   * its own buttons): such a message is not shown twice.
   */
  toldByExtension: (message: string) => boolean = () => false;

  constructor(private readonly secrets: vscode.SecretStorage, private readonly extensionUri: vscode.Uri) {}

  /** Starts the server; commands sent meanwhile wait for it. */
  start(): Promise<void> {
    this.starting = this.launch();
    return this.starting;
  }

  /** The Python that runs Offload and the environment it needs; the API key is added by whoever runs it. */
  async runtime(): Promise<Runtime> {
    const config = vscode.workspace.getConfiguration("offload");
    const command = await interpreter();
    const libs = path.join(this.extensionUri.fsPath, "bundled", "libs");
    const bundled = config.get<string>("importStrategy") !== "fromEnvironment" && fs.existsSync(libs);
    const env = { ...process.env };
    if (bundled) env.PYTHONPATH = [libs, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter);
    const key = await this.secrets.get(API_KEY_SECRET);
    if (key) env.OPENAI_API_KEY = key;
    return { command, env, bundled };
  }

  private async launch(): Promise<void> {
    const runtime = await this.runtime();
    const [program, ...prefix] = runtime.command;
    const python = runtime.command.join(" ");
    const problem = await checkPython(runtime);
    if (problem) {
      this.output.appendLine(`The Offload server cannot start: ${problem}`);
      void cannotStart(python, problem, runtime.bundled, () => this.start());
      return;
    }
    const client = new LanguageClient(
      "offload",
      "Offload",
      { command: program, args: [...prefix, "-m", "offload.server.cli", "serve"], options: { env: runtime.env } },
      {
        documentSelector: [{ scheme: "file" }],
        outputChannel: this.output,
        middleware: {
          // "Offload: do…" on a selection: ask what to do, then run it
          executeCommand: async (command, args, next) => {
            const ready = await withPrompt(command, args, () => vscode.window.showInputBox({
              title: "Offload: do…", prompt: "What should Offload do with the selection?",
              placeHolder: "e.g. make this function iterative",
            }));
            return ready && next(command, ready);
          },
          window: {
            showDocument: async (params, next) => {
              // an Ask's answer is shown on its task page, which opens by itself
              if (/\/offload\/tasks\/[^/]+\/answer\.md$/.test(params.uri)) return { success: true };
              // from a task's page (a citation clicked), beside the page rather than over it
              const tabs = vscode.window.tabGroups;
              const column = columnBesidePage(tabs.all.map((g) => ({ viewColumn: g.viewColumn, isActive: g.isActive })),
                tabs.activeTabGroup.activeTab?.input instanceof vscode.TabInputWebview);
              if (params.external || column === undefined) return next(params, CancellationToken.None) as Promise<ShowDocumentResult>;
              const s = params.selection;
              await vscode.window.showTextDocument(vscode.Uri.parse(params.uri), {
                viewColumn: column, preserveFocus: !params.takeFocus,
                selection: s && new vscode.Range(s.start.line, s.start.character, s.end.line, s.end.character),
              });
              return { success: true };
            },
          },
        },
        initializationOptions: { settings: userSettings() },
      },
    );
    client.registerFeature({
      fillClientCapabilities: (capabilities) => {
        capabilities.experimental = { ...capabilities.experimental, [PROMPT_CAPABILITY]: true };
      },
      initialize: () => undefined,
      getState: () => ({ kind: "static" }),
      clear: () => undefined,
    });
    client.onNotification("offload/taskUpdated", (summary: Summary) => this.updated.fire(summary));
    client.onNotification("offload/taskEvent", (params: { taskId: string; event: TaskEvent }) =>
      this.evented.fire(params));
    this.client = client;
    this.output.appendLine(`Starting the Offload server: ${python} -m offload.server.cli serve`
      + (runtime.bundled ? " (Offload from the extension)" : ""));
    await client.start();
    // after start, so that this handler replaces the client's own
    client.onNotification(ShowMessageNotification.type, ({ type, message }) => {
      if (this.toldByExtension(message)) return;
      if (type === MessageType.Error) void vscode.window.showErrorMessage(message);
      else if (type === MessageType.Warning) void vscode.window.showWarningMessage(message);
      else void vscode.window.showInformationMessage(message);
    });
    this.started.fire();
  }

  /** Sends the settings as they are now; the server uses them for the tasks it starts next. */
  async configurationChanged(): Promise<void> {
    await this.starting.catch(() => undefined);
    await this.client?.sendNotification(DidChangeConfigurationNotification.type, { settings: { settings: userSettings() } });
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    await client?.stop();
  }

  /** Stops and starts the server, after a start under way; commands sent meanwhile wait for the new one. */
  restart(): Promise<void> {
    this.starting = this.starting.catch(() => undefined).then(() => this.stop()).then(() => this.launch());
    return this.starting;
  }

  /** Runs one of the server's commands (`offload.*`), which take a single JSON object; a refusal is an Error in words. */
  async command<T = unknown>(name: string, arg: object): Promise<T> {
    await this.starting.catch(() => undefined); // its failure was shown when it happened
    if (!this.client?.isRunning()) {
      throw new Error("the Offload server is not running; see the \"Offload\" output for why");
    }
    try {
      return await this.client.sendRequest(ExecuteCommandRequest.type, { command: name, arguments: [arg] });
    } catch (e) {
      throw new Error(inWords((e as Error).message));
    }
  }

  /** Applies a task's change (one attempt's, when given): it arrives as an edit, to be saved. */
  async apply(taskId: string, attempt?: number): Promise<void> {
    const { files } = await this.command<{ files: string[] }>("offload.apply", attempt ? { taskId, attempt } : { taskId });
    vscode.window.setStatusBarMessage(
      `Offload: applying ${attempt ? `attempt ${attempt}: ` : ""}${files.join(", ")}; save to keep the change`, 8000);
  }

  dispose(): void {
    this.updated.dispose();
    this.evented.dispose();
    this.started.dispose();
    this.output.dispose();
  }
}

/** The settings the user set, under the server's keys. */
export function userSettings(): Record<string, Record<string, unknown>> {
  const config = vscode.workspace.getConfiguration("offload");
  return serverSettings((setting) => {
    const set = config.inspect(setting);
    return set?.workspaceFolderValue ?? set?.workspaceValue ?? set?.globalValue;
  });
}

/** The interpreter: the `offload.pythonPath` setting, else the Python extension's, else python3. */
function interpreter(): Promise<string[]> {
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri;
  return pythonCommand(vscode.workspace.getConfiguration("offload").get<string>("pythonPath"), async () => {
    const extension = vscode.extensions.getExtension<PythonExtensionApi>("ms-python.python");
    return extension && (await extension.activate());
  }, { home: process.env.HOME, folder: folder?.fsPath, resource: folder });
}

/** Why this Python cannot run Offload, or undefined when it can. */
function checkPython({ command: [program, ...prefix], env, bundled }: Runtime): Promise<string | undefined> {
  const python = [program, ...prefix].join(" ");
  return new Promise((resolve) => {
    execFile(program, [...prefix, "-c", PYTHON_CHECK], { timeout: 60_000, env }, (error, _stdout, stderr) => {
      const missing = (error as NodeJS.ErrnoException | null)?.code === "ENOENT";
      resolve(pythonProblem(python, { missing, failed: !!error, stderr }, bundled));
    });
  });
}

async function cannotStart(python: string, problem: string, bundled: boolean, retry: () => Promise<void>): Promise<void> {
  const advice = bundled
    ? "Choose a Python 3.11 or newer: the Python extension's interpreter, or \"offload.pythonPath\"."
    : `Install Offload for ${python} (scripts/install.sh in an Offload checkout), or set "offload.importStrategy" ` +
      "to useBundled to run the Offload that comes with the extension.";
  const choice = await vscode.window.showErrorMessage(`${problem}. ${advice}`, "Open Settings", "Retry");
  if (choice === "Open Settings") await vscode.commands.executeCommand("workbench.action.openSettings", "offload");
  else if (choice === "Retry") await retry();
}
