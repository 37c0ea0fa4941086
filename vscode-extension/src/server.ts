/**
 * The Offload language server: started as `<python> -m offload.server.cli serve` over stdio,
 * with the editor's settings as initialization options and the API key from SecretStorage in
 * its environment (never in settings, never in a sandbox: the server keeps it to itself).
 */

import { execFile } from "node:child_process";
import * as vscode from "vscode";
import { ExecuteCommandRequest, LanguageClient } from "vscode-languageclient/node";
import { type PythonExtensionApi, pythonCommand } from "./interpreter";
import { PROMPT_CAPABILITY, withPrompt } from "./prompt";
import { serverSettings } from "./settings";
import type { Summary, TaskEvent } from "./tasks";

export const API_KEY_SECRET = "offload.apiKey";

export class OffloadServer implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private starting: Promise<void> = Promise.resolve();
  private readonly updated = new vscode.EventEmitter<Summary>();
  private readonly evented = new vscode.EventEmitter<{ taskId: string; event: TaskEvent }>();
  private readonly started = new vscode.EventEmitter<void>();
  readonly onTaskUpdated = this.updated.event;
  readonly onTaskEvent = this.evented.event;
  /** Fires each time a server (re)starts: its task list is the one to show. */
  readonly onStarted = this.started.event;

  constructor(private readonly secrets: vscode.SecretStorage) {}

  /** Starts the server; commands sent meanwhile wait for it. */
  start(): Promise<void> {
    this.starting = this.launch();
    return this.starting;
  }

  private async launch(): Promise<void> {
    const [program, ...prefix] = await interpreter();
    const python = [program, ...prefix].join(" ");
    const problem = await checkInstalled([program, ...prefix]);
    if (problem) {
      void notInstalled(python, problem, () => this.start());
      return;
    }
    const env = { ...process.env };
    const key = await this.secrets.get(API_KEY_SECRET);
    if (key) env.OPENAI_API_KEY = key;
    const config = vscode.workspace.getConfiguration("offload");
    const client = new LanguageClient(
      "offload",
      "Offload",
      { command: program, args: [...prefix, "-m", "offload.server.cli", "serve"], options: { env } },
      {
        documentSelector: [{ scheme: "file" }],
        middleware: {
          // "Offload: do…" on a selection: ask what to do, then run it
          executeCommand: async (command, args, next) => {
            const ready = await withPrompt(command, args, () => vscode.window.showInputBox({
              title: "Offload: do…", prompt: "What should Offload do with the selection?",
              placeHolder: "e.g. make this function iterative",
            }));
            return ready && next(command, ready);
          },
        },
        initializationOptions: {
          settings: serverSettings((setting) => {
            const set = config.inspect(setting);
            return set?.workspaceFolderValue ?? set?.workspaceValue ?? set?.globalValue;
          }),
        },
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
    client.outputChannel.appendLine(`Starting the Offload server: ${python} -m offload.server.cli serve`);
    await client.start();
    this.started.fire();
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

  /** Runs one of the server's commands (`offload.*`), which take a single JSON object. */
  async command<T = unknown>(name: string, arg: object): Promise<T> {
    await this.starting.catch(() => undefined); // its failure was shown when it happened
    if (!this.client?.isRunning()) {
      throw new Error("the Offload server is not running; see the \"Offload\" output for why");
    }
    return this.client.sendRequest(ExecuteCommandRequest.type, { command: name, arguments: [arg] });
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
  }
}

/** The interpreter with Offload: the `offload.pythonPath` setting, else the Python extension's, else python3. */
function interpreter(): Promise<string[]> {
  const folder = vscode.workspace.workspaceFolders?.[0]?.uri;
  return pythonCommand(vscode.workspace.getConfiguration("offload").get<string>("pythonPath"), async () => {
    const extension = vscode.extensions.getExtension<PythonExtensionApi>("ms-python.python");
    return extension && (await extension.activate());
  }, { home: process.env.HOME, folder: folder?.fsPath, resource: folder });
}

/** Why the Python `command` cannot run Offload, or undefined when it can. */
function checkInstalled([program, ...prefix]: string[]): Promise<string | undefined> {
  const python = [program, ...prefix].join(" ");
  return new Promise((resolve) => {
    execFile(program, [...prefix, "-c", "import offload.server.cli"], { timeout: 30_000 }, (error, _stdout, stderr) => {
      if (!error) resolve(undefined);
      else if ((error as NodeJS.ErrnoException).code === "ENOENT") resolve(`${python} was not found`);
      else if (/No module named '?offload/.test(stderr)) resolve(`Offload is not installed for ${python}`);
      else resolve(`${python} cannot load Offload: ${stderr.trim().split("\n").pop() ?? error.message}`);
    });
  });
}

async function notInstalled(python: string, problem: string, retry: () => Promise<void>): Promise<void> {
  const install = `${python} -m pip install offload`;
  const choice = await vscode.window.showErrorMessage(
    `${problem}. Install it with \`${install}\` (or run scripts/install.sh in an Offload checkout and set ` +
      `"offload.pythonPath" to its .venv/bin/python), then retry.`,
    "Copy Command",
    "Open Settings",
    "Retry",
  );
  if (choice === "Copy Command") await vscode.env.clipboard.writeText(install);
  else if (choice === "Open Settings") await vscode.commands.executeCommand("workbench.action.openSettings", "offload.pythonPath");
  else if (choice === "Retry") await retry();
}
