import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type PythonExtensionApi, pythonCommand } from "../../src/interpreter";

const WORKSPACE = { home: "/home/dev", folder: "/home/dev/calc", resource: "file:///home/dev/calc" };

/** The Python extension's API as it answers for `python`, recording the resources it was asked about. */
function pythonExtension(python: string, asked: unknown[] = []): PythonExtensionApi {
  return {
    environments: {
      getActiveEnvironmentPath: (resource) => (asked.push(resource), { id: python, path: python }),
      resolveEnvironment: async (environment) =>
        ({ executable: { uri: { fsPath: typeof environment === "string" ? environment : environment.path } } }),
    },
    settings: { getExecutionDetails: () => ({ execCommand: ["/old/api/python"] }) },
  };
}

const none = async () => undefined;

describe("the interpreter that runs the server", () => {
  test("the offload.pythonPath setting comes first, with ~ and ${workspaceFolder} expanded", async () => {
    let asked = false;
    const api = async () => ((asked = true), pythonExtension("/from/extension"));
    assert.deepEqual(await pythonCommand("${workspaceFolder}/.venv/bin/python", api, WORKSPACE), ["/home/dev/calc/.venv/bin/python"]);
    assert.deepEqual(await pythonCommand("~/venv/bin/python", api, WORKSPACE), ["/home/dev/venv/bin/python"]);
    assert.equal(asked, false, "the Python extension is not even activated");
  });

  test("unset: the Python extension's interpreter for the workspace", async () => {
    const asked: unknown[] = [];
    assert.deepEqual(await pythonCommand("", async () => pythonExtension("/venv/bin/python", asked), WORKSPACE),
      ["/venv/bin/python"]);
    assert.deepEqual(asked, ["file:///home/dev/calc"]);
  });

  test("an extension without the environments API answers through its older one, whole command included", async () => {
    const older: PythonExtensionApi = { settings: { getExecutionDetails: () => ({ execCommand: ["conda", "run", "-n", "x", "python"] }) } };
    assert.deepEqual(await pythonCommand(undefined, async () => older, WORKSPACE), ["conda", "run", "-n", "x", "python"]);
  });

  test("an environment that cannot be resolved falls back to the older API", async () => {
    const api = pythonExtension("/broken");
    api.environments!.resolveEnvironment = async () => undefined;
    assert.deepEqual(await pythonCommand(undefined, async () => api, WORKSPACE), ["/old/api/python"]);
  });

  test("no setting, no Python extension, or one that fails: python3", async () => {
    assert.deepEqual(await pythonCommand(undefined, none, WORKSPACE), ["python3"]);
    assert.deepEqual(await pythonCommand("  ", async () => { throw new Error("activation failed"); }, WORKSPACE), ["python3"]);
    const silent: PythonExtensionApi = { settings: { getExecutionDetails: () => ({ execCommand: undefined }) } };
    assert.deepEqual(await pythonCommand(undefined, async () => silent, WORKSPACE), ["python3"]);
  });
});
