import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { type PythonExtensionApi, inWords, pythonCommand, pythonProblem } from "../../src/interpreter";

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

describe("what keeps a Python from running the server", () => {
  test("a Python older than 3.11 is named with its version", () => {
    assert.equal(pythonProblem("python3", { failed: true, stderr: "too old: 3.9.2\n" }, true),
      "Offload needs Python 3.11 or newer; python3 is Python 3.9.2");
  });
  test("without the bundled libraries, a missing module means Offload is not installed there", () => {
    assert.equal(pythonProblem("/usr/bin/python3", { failed: true, stderr: "ModuleNotFoundError: No module named 'offload'" }, false),
      "Offload is not installed for /usr/bin/python3");
  });
  test("with them, any failure is theirs and is quoted", () => {
    assert.equal(pythonProblem("py", { failed: true, stderr: "Traceback…\nImportError: no _pydantic_core" }, true),
      "py cannot load Offload from the extension: ImportError: no _pydantic_core");
    assert.equal(pythonProblem("py", { missing: true, failed: true, stderr: "" }, true), "py was not found");
    assert.equal(pythonProblem("py", { failed: false, stderr: "" }, true), undefined);
  });
  test("refusals are shown without the command id", () => {
    assert.equal(inWords("offload.apply: the task failed; nothing to apply"), "the task failed; nothing to apply");
    assert.equal(inWords("the server is not running"), "the server is not running");
  });
});
