/**
 * Which Python runs the Offload server: the `offload.pythonPath` setting, else the interpreter
 * the Python extension (ms-python.python) has selected for the workspace, else `python3`. Pure
 * (the extension's API is passed in), so the order is unit-tested without VS Code.
 */

/** The parts of the Python extension's public API that name the selected interpreter. */
export interface PythonExtensionApi {
  environments?: {
    getActiveEnvironmentPath(resource?: unknown): { id: string; path: string } | undefined;
    resolveEnvironment(environment: { id: string; path: string } | string):
      Promise<{ executable?: { uri?: { fsPath: string } } } | undefined>;
  };
  /** The older API, kept by the extension for compatibility. */
  settings?: {
    getExecutionDetails(resource?: unknown): { execCommand: string[] | undefined };
  };
}

export interface Workspace {
  home?: string;
  folder?: string; // the first workspace folder's path
  resource?: unknown; // its URI, as the Python extension takes it
}

/**
 * The command that runs Python (its first element the program, e.g. ["/venv/bin/python"] or
 * ["conda", "run", "-n", "env", "python"]). `pythonExtension` activates the Python extension and
 * returns its API, or undefined when it is not installed.
 */
export async function pythonCommand(configured: string | undefined, pythonExtension: () => Promise<PythonExtensionApi | undefined>,
  workspace: Workspace): Promise<string[]> {
  if (configured?.trim()) {
    return [configured.trim()
      .replace(/^~(?=\/|$)/, workspace.home ?? "~")
      .replace("${workspaceFolder}", workspace.folder ?? "")];
  }
  const api = await pythonExtension().catch(() => undefined);
  const environments = api?.environments;
  if (environments) {
    try {
      const active = environments.getActiveEnvironmentPath(workspace.resource);
      const resolved = active && (await environments.resolveEnvironment(active));
      const executable = resolved?.executable?.uri?.fsPath;
      if (executable) return [executable];
    } catch {
      // the environment cannot be resolved: ask the older API
    }
  }
  try {
    const command = api?.settings?.getExecutionDetails(workspace.resource)?.execCommand;
    if (command?.length && command.every((part) => typeof part === "string" && part)) return [...command];
  } catch {
    // neither API answers: python3
  }
  return ["python3"];
}

/** Run by the chosen Python before the server: says in its output what keeps it from running Offload. */
export const PYTHON_CHECK = [
  "import sys",
  "if sys.version_info < (3, 11): sys.exit('too old: ' + sys.version.split()[0])",
  "import offload.server.cli",
].join("\n");

/**
 * Why `python` cannot run the server, from how PYTHON_CHECK ended (`missing`: the program does
 * not exist; `stderr`: its output), or undefined when it can. `bundled`: the extension's own
 * libraries were on its path, so a failed import is theirs, not a missing install.
 */
export function pythonProblem(python: string, result: { missing?: boolean; failed: boolean; stderr: string }, bundled: boolean)
  : string | undefined {
  if (result.missing) return `${python} was not found`;
  if (!result.failed) return undefined;
  const last = result.stderr.trim().split("\n").pop() ?? "";
  const old = /^too old: (\S+)/.exec(last);
  if (old) return `Offload needs Python 3.11 or newer; ${python} is Python ${old[1]}`;
  if (!bundled && /No module named '?offload/.test(last)) return `Offload is not installed for ${python}`;
  return `${python} cannot load Offload${bundled ? " from the extension" : ""}: ${last || "it exited with an error"}`;
}

/** The server's refusal without the command id it names first ("offload.apply: …"): what the user reads. */
export function inWords(message: string): string {
  return message.replace(/^offload\.\w+: /, "");
}
