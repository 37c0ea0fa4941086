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
