import assert from "node:assert/strict";
import { test } from "node:test";
import { serverSettings, settingsEnv } from "../../src/settings";

test("only the settings the user set go to the server, under the server's names", () => {
  const set: Record<string, unknown> = { "model.name": "qwen2.5-coder", "model.baseUrl": "http://127.0.0.1:11434/v1",
    "tasks.concurrency": 2, "sandbox.backend": "docker", "model.api": "", "tasks.attempts": null };
  assert.deepEqual(serverSettings((key) => set[key]), {
    model: { name: "qwen2.5-coder", base_url: "http://127.0.0.1:11434/v1" },
    tasks: { concurrency: 2 },
    sandbox: { backend: "docker" },
  });
});

test("the number of attempts goes to the server as tasks.attempts", () => {
  assert.deepEqual(serverSettings((key) => (key === "tasks.attempts" ? 3 : undefined)), { tasks: { attempts: 3 } });
});

test("nothing set, nothing sent", () => {
  assert.deepEqual(serverSettings(() => undefined), {});
});

test("the settings as OFFLOAD_* variables, for offload doctor", () => {
  assert.deepEqual(settingsEnv({ model: { name: "m", base_url: "http://h/v1" }, tasks: { concurrency: 2 } }),
    { OFFLOAD_MODEL_NAME: "m", OFFLOAD_MODEL_BASE_URL: "http://h/v1", OFFLOAD_TASKS_CONCURRENCY: "2" });
});
