// The Python extension (ms-python.python) cannot be installed offline, so Offload's end-to-end
// tests install this stand-in under its id: it answers the documented API the Offload extension
// asks for the selected interpreter (`environments` and the older `settings`), with the
// interpreter the user set in `python.defaultInterpreterPath`, as the real extension starts with.
const vscode = require("vscode");

function selected(resource) {
  return vscode.workspace.getConfiguration("python", resource).get("defaultInterpreterPath") || "python";
}

exports.activate = function activate() {
  const changed = new vscode.EventEmitter();
  return {
    ready: Promise.resolve(),
    environments: {
      getActiveEnvironmentPath: (resource) => ({ id: selected(resource), path: selected(resource) }),
      resolveEnvironment: async (environment) => {
        const path = typeof environment === "string" ? environment : environment.path;
        return { id: path, path, executable: { uri: vscode.Uri.file(path) } };
      },
      onDidChangeActiveEnvironmentPath: changed.event,
    },
    settings: {
      getExecutionDetails: (resource) => ({ execCommand: [selected(resource)] }),
    },
  };
};
