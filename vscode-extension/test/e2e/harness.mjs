// The real parts of an end-to-end run: the model stand-in, a sample git repository, code-server
// with the extension installed from its VSIX, and headless Chromium driving the workbench.
// Every process is started here and stopped by its PID (its process group), with bounded waits.

import { execFileSync, spawn } from "node:child_process";
import { once } from "node:events";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { chromium } from "playwright-core";

export const EXTENSION = path.resolve(import.meta.dirname, "../..");
export const REPO = path.resolve(EXTENSION, "..");
export const PYTHON = process.env.OFFLOAD_PYTHON || path.join(REPO, ".venv/bin/python");
export const ARTIFACTS = path.join(EXTENSION, "test-artifacts");
const CODE_SERVER = path.join(EXTENSION, ".e2e/node_modules/code-server/out/node/entry.js");
const VSIX = path.join(EXTENSION, "offload.vsix");
const PYTHON_EXTENSION_VSIX = path.join(EXTENSION, ".e2e/ms-python-stand-in.vsix");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

fs.mkdirSync(ARTIFACTS, { recursive: true });

const temporary = [];

export function tempDir(name) {
  temporary.push(fs.mkdtempSync(path.join(os.tmpdir(), `offload-e2e-${name}-`)));
  return temporary[temporary.length - 1];
}

/** Removes every temporary directory of the run (artifacts stay). */
export function removeTempDirs() {
  for (const dir of temporary.splice(0)) fs.rmSync(dir, { recursive: true, force: true, maxRetries: 3 });
}

/** Waits for `check()` to return something truthy, polling; throws `what` after `ms`. */
export async function until(check, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms / 1000}s waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * A child in its own process group, so stopping it by its PID also stops what it started; its
 * output goes to `logName` in the artifacts (stdout stays readable with `readStdout`).
 */
function start(command, args, options, logName, readStdout = false) {
  const log = fs.openSync(path.join(ARTIFACTS, logName), "w");
  const child = spawn(command, args, { ...options, detached: true, stdio: ["ignore", readStdout ? "pipe" : log, log] });
  child.stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = once(child, "exit");
      process.kill(-child.pid, "SIGTERM");
      const timer = setTimeout(() => process.kill(-child.pid, "SIGKILL"), 5000);
      await exited;
      clearTimeout(timer);
    }
    try {
      process.kill(-child.pid, "SIGKILL"); // whatever of the group outlived its leader
    } catch {
      // the group is gone already
    }
  };
  return child;
}

/** The environment of everything started here: no model settings or keys from the host. */
function cleanEnv(extra) {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !/^(OPENAI_|OFFLOAD_)/.test(k)));
  return { ...env, ...extra };
}

/**
 * `python -m tests.fakemodel` with the project's scenarios and this suite's (scenarios_e2e.py);
 * `requests()` reads back every request it got (method, path, model, headers).
 */
export async function startModel() {
  const log = path.join(ARTIFACTS, "fakemodel-requests.jsonl");
  fs.rmSync(log, { force: true });
  const child = start(PYTHON, ["-m", "tests.fakemodel", "--port", "0", "--scenarios", "tests.scenarios", "--scenarios", "scenarios_e2e",
    "--requests", log], {
    cwd: REPO,
    env: cleanEnv({ PYTHONPATH: [REPO, import.meta.dirname].join(path.delimiter) }),
  }, "fakemodel.log", true);
  let output = "";
  child.stdout.on("data", (d) => (output += d));
  try {
    const url = await until(() => /READY (\S+)/.exec(output)?.[1], 30_000, "the model stand-in to print READY");
    const requests = () => fs.readFileSync(log, "utf8").split("\n").filter(Boolean).map((line) => JSON.parse(line));
    return { url, requests, stop: child.stop };
  } catch (e) {
    await child.stop();
    throw e;
  }
}

/** A copy of examples/calc as a git repository with one commit. */
export function sampleRepo(dir) {
  const repo = path.join(dir, "calc");
  fs.cpSync(path.join(REPO, "examples/calc"), repo, { recursive: true });
  const git = (...args) => execFileSync("git", ["-C", repo, ...args], { stdio: "ignore", timeout: 30_000 });
  git("init", "-q", "-b", "main");
  git("add", "-A");
  git("-c", "user.name=Dev", "-c", "user.email=dev@example.com", "commit", "-q", "-m", "initial");
  return repo;
}

const extensionsDirs = new Map();

/** The extensions installed from their VSIXs, once per run and set, as a user would. */
function installedExtensions(vsixes) {
  const key = vsixes.join("\n");
  if (!extensionsDirs.has(key)) {
    const missing = vsixes.find((vsix) => !fs.existsSync(vsix));
    if (missing) throw new Error(`${missing} is missing: run scripts/setup-e2e.sh`);
    const dir = tempDir("extensions");
    execFileSync(process.execPath, [CODE_SERVER, "--extensions-dir", dir, "--user-data-dir", tempDir("install"),
      ...vsixes.flatMap((vsix) => ["--install-extension", vsix])],
    { stdio: "ignore", timeout: 60_000, env: cleanEnv({ HOME: tempDir("home") }) });
    extensionsDirs.set(key, dir);
  }
  return extensionsDirs.get(key);
}

/** PATH without the directories whose `python3` has Offload: only the Python extension can name one then. */
export function pathWithoutOffload() {
  return (process.env.PATH ?? "").split(path.delimiter).filter((dir) => {
    const python = path.join(dir, "python3");
    if (!fs.existsSync(python)) return true;
    try {
      execFileSync(python, ["-c", "import offload.server.cli"], { stdio: "ignore", timeout: 30_000 });
      return false;
    } catch {
      return true;
    }
  }).join(path.delimiter);
}

/** The Offload servers a code-server with this HOME started: their command line and environment. */
export function offloadServers(home) {
  const found = [];
  for (const pid of fs.readdirSync("/proc").filter((name) => /^\d+$/.test(name))) {
    try {
      const argv = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0").filter(Boolean);
      if (!(argv.includes("offload.server.cli") && argv.at(-1) === "serve")) continue;
      const env = Object.fromEntries(fs.readFileSync(`/proc/${pid}/environ`, "utf8").split("\0").filter(Boolean)
        .map((entry) => [entry.slice(0, entry.indexOf("=")), entry.slice(entry.indexOf("=") + 1)]));
      if (env.HOME === home) found.push({ pid: Number(pid), argv, env });
    } catch {
      // the process ended while we looked
    }
  }
  return found;
}

async function freePort() {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  return port;
}

/**
 * code-server on `folder` with these user settings, its own HOME and XDG dirs (the Offload
 * server it starts keeps its tasks there), and Chromium on it, showing the workbench. Options:
 * `pythonExtension` installs the stand-in for the Python extension beside Offload's; `env` adds
 * to code-server's environment.
 */
export async function openVSCode(name, folder, settings, { pythonExtension = false, env = {} } = {}) {
  const home = tempDir(name);
  const userData = path.join(home, "user-data");
  fs.mkdirSync(path.join(userData, "User"), { recursive: true });
  fs.writeFileSync(path.join(userData, "User", "settings.json"), JSON.stringify({
    "workbench.startupEditor": "none",
    "workbench.tips.enabled": false,
    "security.workspace.trust.enabled": false,
    "extensions.autoCheckUpdates": false,
    "extensions.autoUpdate": false,
    "telemetry.telemetryLevel": "off",
    "git.enabled": false,
    "editor.codeLens": true,
    "editor.lightbulb.enabled": "on",
    "files.autoSave": "off", // the web build saves after a delay by default; the desktop one does not
    // the Comments panel opens by itself on the first file with Offload's change threads, and the
    // editor it shrinks would no longer show every hunk of the sample at once
    "comments.openView": "never",
    ...settings,
  }, null, 2));
  const port = await freePort();
  const xdg = Object.fromEntries(["STATE", "CACHE", "CONFIG", "DATA"].map((k) => [`XDG_${k}_HOME`, path.join(home, k.toLowerCase())]));
  const extensions = installedExtensions(pythonExtension ? [VSIX, PYTHON_EXTENSION_VSIX] : [VSIX]);
  const server = start(process.execPath, [CODE_SERVER, "--bind-addr", `127.0.0.1:${port}`, "--auth", "none",
    "--user-data-dir", userData, "--extensions-dir", extensions, "--disable-telemetry",
    "--disable-update-check", "--disable-workspace-trust", folder],
  { env: cleanEnv({ HOME: home, ...xdg, ...env }) }, `${name}-code-server.log`);
  const url = `http://127.0.0.1:${port}`;
  let browser;
  const close = async () => {
    await browser?.close().catch(() => {});
    await server.stop();
    // the extension host's logs, the Offload output channel among them
    if (fs.existsSync(path.join(userData, "logs"))) {
      fs.cpSync(path.join(userData, "logs"), path.join(ARTIFACTS, `${name}-logs`), { recursive: true });
    }
  };
  try {
    await until(() => fetch(`${url}/healthz`).then((r) => r.ok, () => false), 30_000, "code-server to answer");
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      timeout: 30_000,
      args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"],
    });
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
    page.setDefaultTimeout(30_000);
    await page.goto(`${url}/?folder=${encodeURIComponent(folder)}`);
    await page.locator(".explorer-folders-view").waitFor();
    await page.waitForTimeout(1500); // the workbench takes keys reliably only once it settled
    return Object.assign(new Workbench(page, name), { close, home, folder, settingsFile: path.join(userData, "User", "settings.json") });
  } catch (e) {
    await close();
    throw e;
  }
}

/** What the tests do in the workbench, by keyboard where the workbench allows. */
class Workbench {
  constructor(page, name) {
    this.page = page;
    this.name = name;
  }

  async screenshot(step) {
    await this.page.screenshot({ path: path.join(ARTIFACTS, `${this.name}-${step}.png`) }).catch(() => {});
  }

  /** F1 opens the command palette with ">"; what follows is a command, a file, or ":line". */
  async quickInput(text) {
    await this.page.keyboard.press("F1");
    const input = this.page.locator(".quick-input-widget input");
    await input.waitFor();
    await input.fill(text);
    return input;
  }

  /** Runs a command from the palette; it lists an extension's commands only once the extension is known. */
  async command(title) {
    const listed = this.page.locator(".quick-input-list .monaco-list-row", { hasText: title }).first();
    await until(async () => {
      await this.quickInput(`>${title}`);
      if (await listed.waitFor({ timeout: 3000 }).then(() => true, () => false)) return true;
      await this.page.keyboard.press("Escape"); // the workbench learns it later: ask again
      return false;
    }, 60_000, `"${title}" in the command palette`);
    await this.select(".quick-input-list", title);
  }

  /** Moves the focus in a list down to the row labelled `label` (not one that merely matches) and takes it. */
  async select(list, label) {
    const focused = this.page.locator(`${list} .monaco-list-row.focused`);
    await until(async () => (await focused.getAttribute("aria-label").catch(() => ""))?.split(",")[0] === label
      || void (await this.page.keyboard.press("ArrowDown")), 10_000, `"${label}" selected`);
    await this.page.keyboard.press("Enter");
  }

  async openFile(name) {
    await this.quickInput(name);
    await this.page.locator(".quick-input-list .monaco-list-row", { hasText: name }).first().waitFor();
    await this.page.keyboard.press("Enter");
    await this.page.locator(`.tab.active[data-resource-name="${name}"]`).waitFor();
  }

  async goToLine(line) {
    await this.quickInput(`:${line}`);
    await this.page.keyboard.press("Enter");
  }

  /** Answers the input box a command opened (its title says which). */
  async answer(title, text) {
    await this.page.locator(".quick-input-widget .quick-input-title", { hasText: title }).waitFor();
    await this.page.locator(".quick-input-widget input").fill(text);
    await this.page.keyboard.press("Enter");
  }

  /** The active task page's document (webviews nest two iframes). */
  taskPage() {
    return this.page.frameLocator("iframe.webview.ready").last().frameLocator("iframe#active-frame");
  }
}
