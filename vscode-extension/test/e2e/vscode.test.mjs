// The extension in real VS Code (code-server in headless Chromium), with the real Offload server,
// a real Docker sandbox behind it and the model stand-in. Each group gets its own code-server.

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import {
  PYTHON, offloadServers, openVSCode, pathWithoutOffload, removeTempDirs, sampleRepo, startModel, tempDir, until,
} from "./harness.mjs";

let model;
before(async () => (model = await startModel()));
after(async () => {
  await model?.stop();
  removeTempDirs();
});

/** Runs a group's steps; a failure leaves a screenshot of the moment behind. */
async function steps(vscode, run) {
  try {
    await run();
  } catch (e) {
    await vscode.screenshot("failure");
    throw e;
  } finally {
    await vscode.close();
  }
}

/** The text of the editor's change widgets (Offload's comment threads), spaces as typed. */
async function changeWidgets(page) {
  return (await page.locator(".monaco-editor .review-widget").allInnerTexts().catch(() => [])).map((t) => t.replace(/\u00a0/g, " "));
}

/** Where the status bar says the cursor is: "Ln 5, Col 1", with what is selected. */
function cursor(page) {
  return page.locator("#status\\.editor\\.selection").innerText().catch(() => "");
}

describe("a Code task reviewed hunk by hunk", () => {
  test("accept the fix by CodeLens, reject the comment by the lightbulb, save", { timeout: 150_000 }, async () => {
    const repo = sampleRepo(tempDir("repo"));
    const calc = path.join(repo, "calc.py");
    const original = fs.readFileSync(calc, "utf8");
    const vscode = await openVSCode("code-task", repo, {
      "offload.pythonPath": PYTHON, "offload.model.name": "fix-and-document", "offload.model.baseUrl": model.url,
    });
    const { page } = vscode;
    await steps(vscode, async () => {
      await vscode.openFile("calc.py");
      await vscode.command("Offload: New Code Task");
      await vscode.answer("Offload: New Code Task", "Make the failing test pass");

      await page.locator(".activitybar a.action-label[aria-label^='Offload']").click();
      const task = page.locator(".part.sidebar .monaco-list-row", { hasText: "Make the failing test pass" });
      await task.waitFor();
      await vscode.screenshot("1-task-started");
      await until(async () => /finished/.test(await task.innerText()), 120_000, "the task to finish in the Tasks view");
      assert.match(await page.locator(".statusbar-item", { hasText: /Offload: \d+ running/ }).innerText(), /0 running · 1 finished/);
      await vscode.screenshot("2-task-finished");

      // the review: one CodeLens per hunk, decorations for the proposed lines
      const accepts = page.locator(".codelens-decoration a", { hasText: /^Offload: Accept(?! All)/ });
      await until(async () => (await accepts.count()) === 2, 30_000, "a CodeLens on each of the two hunks");
      await until(async () => (await changeWidgets(page)).some((t) => t.includes("+    # the product of a and b")), 10_000,
        "the proposed comment under its line");
      await vscode.screenshot("3-review");

      // the side-by-side diff of the proposed file, from the file's own CodeLens
      await page.locator(".codelens-decoration a", { hasText: "Side by Side" }).click();
      const modified = page.locator(".monaco-diff-editor .editor.modified .view-lines");
      await until(async () => /return a \+ b\s+def multiply\(a, b\):\s+# the product of a and b/
        .test((await modified.innerText().catch(() => "")).replace(/\u00a0/g, " ")), 15_000, "the proposed file beside the current one");
      await vscode.screenshot("3-side-by-side");
      await vscode.command("View: Close Editor");
      await until(async () => (await accepts.count()) === 2, 10_000, "calc.py with its CodeLens back");

      const boxes = await Promise.all((await accepts.all()).map(async (a) => ({ a, y: (await a.boundingBox()).y })));
      await boxes.sort((p, q) => p.y - q.y)[0].a.click(); // the topmost hunk: the fix of `add`
      await until(async () => (await accepts.count()) === 1, 20_000, "the accepted hunk to leave the review");

      // the other hunk (the comment above `return a * b`, line 9) through the lightbulb
      await vscode.goToLine(9);
      await page.keyboard.press("Control+.");
      const row = page.locator(".action-widget .monaco-list-row", { hasText: /Offload: reject \+1 −0 at line 9 / });
      await row.waitFor(); // the action names its hunk
      await vscode.select(".action-widget", (await row.getAttribute("aria-label")).split(",")[0]); // by keys: its mouse blocker eats a click
      await until(async () => (await page.locator(".codelens-decoration a", { hasText: "Offload: Accept" }).count()) === 0,
        20_000, "no hunk left to review");
      await vscode.screenshot("4-reviewed");

      assert.equal(fs.readFileSync(calc, "utf8"), original, "the edit is in the editor's buffer, not on disk");
      await vscode.command("File: Save");
      const expected = original.replace("return a - b", "return a + b");
      await until(() => fs.readFileSync(calc, "utf8") === expected, 10_000, "calc.py on disk to hold exactly the fix");

      // the task page: the summary's citation as a link, the Testing section with its mark
      await task.click();
      const taskPage = vscode.taskPage();
      await taskPage.locator("#run-1 a.citation", { hasText: "calc.py:L4-L10" }).waitFor();
      assert.match(await taskPage.locator("#run-1 .testing").innerText(), /✔\s*python3 -m unittest -q passed/);
      await vscode.screenshot("5-task-page");
    });
  });
});

/** The Tasks view's row of the task with this prompt, once it shows. */
async function taskRow(page, prompt) {
  await page.locator(".activitybar a.action-label[aria-label^='Offload']").click();
  const row = page.locator(".part.sidebar .monaco-list-row", { hasText: prompt });
  await row.waitFor();
  return row;
}

/** The topmost (or bottommost) of the CodeLens links `links` matches. */
async function byHeight(links, which) {
  const boxes = await Promise.all((await links.all()).map(async (a) => ({ a, y: (await a.boundingBox()).y })));
  boxes.sort((p, q) => p.y - q.y);
  return (which === "top" ? boxes[0] : boxes[boxes.length - 1]).a;
}

describe("a change reviewed by keys", () => {
  test("every line of each change shown; next/previous across files; accept and reject at the cursor; a citation where its lines are now",
    { timeout: 200_000 }, async () => {
      const repo = sampleRepo(tempDir("repo"));
      const calc = path.join(repo, "calc.py");
      const original = fs.readFileSync(calc, "utf8");
      const vscode = await openVSCode("keys", repo, {
        "offload.pythonPath": PYTHON, "offload.model.name": "fix-and-rewrite", "offload.model.baseUrl": model.url,
      });
      const { page } = vscode;
      await steps(vscode, async () => {
        await vscode.openFile("calc.py");
        await vscode.command("Offload: New Code Task");
        await vscode.answer("Offload: New Code Task", "Fix add and rewrite multiply");
        const task = await taskRow(page, "Fix add and rewrite multiply");
        await until(async () => /finished/.test(await task.innerText()), 120_000, "the task to finish");

        // each hunk's whole change under it in the editor: every removed and every added line
        const rewrite = ["-    return a * b", "+    # the product of a and b", "+    product = a * b", "+    return product"];
        await until(async () => {
          const widgets = await changeWidgets(page);
          return widgets.some((t) => rewrite.every((line) => t.includes(line)))
            && widgets.some((t) => t.includes("-    return a - b") && t.includes("+    return a + b"));
        }, 30_000, "both changes of calc.py shown whole, under their lines");
        assert.match((await changeWidgets(page)).find((t) => t.includes("product = a * b")), /Offload: \+3 −1 — Fix add and rewrite multiply/);
        await vscode.screenshot("1-changes-shown");

        // Alt+F5 / Shift+Alt+F5: down the file, on to the next file with a change, round
        const at = async (key, file, line) => {
          await page.keyboard.press(key);
          await page.locator(`.tab.active[data-resource-name="${file}"]`).waitFor();
          await until(async () => new RegExp(`^Ln ${line}, Col 1$`).test(await cursor(page)), 10_000, `${key} to ${file} line ${line}`);
        };
        await vscode.goToLine(1);
        await at("Alt+F5", "calc.py", 5);
        await at("Alt+F5", "calc.py", 9);
        await at("Alt+F5", "test_calc.py", 12);
        await vscode.screenshot("2-next-file");
        await at("Alt+F5", "calc.py", 5);
        await at("Shift+Alt+F5", "test_calc.py", 12);
        await at("Shift+Alt+F5", "calc.py", 9);

        // accept the rewrite at the cursor, reject the fix at the cursor
        await page.keyboard.press("Control+Alt+y");
        await until(async () => !(await changeWidgets(page)).some((t) => t.includes("product = a * b")), 20_000,
          "the accepted change to leave the review");
        await at("Shift+Alt+F5", "calc.py", 5);
        await page.keyboard.press("Control+Alt+n");
        await until(async () => (await changeWidgets(page)).length === 0, 20_000, "no change of calc.py left to review");
        await vscode.screenshot("3-decided");
        await vscode.command("File: Save");
        const rewritten = original.replace("    return a * b", "    # the product of a and b\n    product = a * b\n    return product");
        await until(() => fs.readFileSync(calc, "utf8") === rewritten, 10_000, "calc.py with the rewrite and without the fix");

        // two lines added on top: the citation of the result's lines 8-11 opens where they are now, 10-13
        await vscode.goToLine(1);
        await page.keyboard.press("Home");
        await page.keyboard.type("import math\n\n");
        await task.click();
        const taskPage = vscode.taskPage();
        await taskPage.locator("#run-1 a.citation", { hasText: "calc.py:L8-L11" }).click();
        await page.locator('.tab.active[data-resource-name="calc.py"]').waitFor();
        await until(async () => /^Ln 14, Col 1 \(\d+ selected\)$/.test(await cursor(page)), 10_000,
          "the rewritten multiply selected whole, two lines down");
        await vscode.screenshot("4-citation");

        // the last change, in test_calc.py (the keys are for files under review; the palette has Next Change everywhere),
        // accepted by its thread's title button
        await vscode.command("Offload: Next Change");
        await page.locator('.tab.active[data-resource-name="test_calc.py"]').waitFor();
        await page.locator(".review-widget .action-label[aria-label^='Accept Change']").click();
        await until(async () => (await changeWidgets(page)).length === 0, 20_000, "the accepted test to leave the review");
        await vscode.command("File: Save");
        await until(() => fs.readFileSync(path.join(repo, "test_calc.py"), "utf8").includes("multiply(0, 5), 0)"), 10_000,
          "test_calc.py with the new test");
        await vscode.screenshot("5-accepted-by-title");
      });
    });
});

describe("a follow-up on a finished task", () => {
  test("reject a hunk, follow up from the palette, accept the new change", { timeout: 180_000 }, async () => {
    const repo = sampleRepo(tempDir("repo"));
    const calc = path.join(repo, "calc.py");
    const original = fs.readFileSync(calc, "utf8");
    const vscode = await openVSCode("follow-up", repo, {
      "offload.pythonPath": PYTHON, "offload.model.name": "follow-up", "offload.model.baseUrl": model.url,
    });
    const { page } = vscode;
    await steps(vscode, async () => {
      await vscode.openFile("calc.py");
      await vscode.command("Offload: New Code Task");
      await vscode.answer("Offload: New Code Task", "Fix add and document multiply");
      const task = await taskRow(page, "Fix add and document multiply");
      await until(async () => /finished/.test(await task.innerText()), 120_000, "the task to finish");

      // reject the comment on `multiply` (the lower hunk); the fix stays pending
      const accepts = page.locator(".codelens-decoration a", { hasText: /^Offload: Accept(?! All)/ });
      await until(async () => (await accepts.count()) === 2, 30_000, "a CodeLens on each of the two hunks");
      await (await byHeight(page.locator(".codelens-decoration a", { hasText: /^Reject$/ }), "bottom")).click();
      await until(async () => (await accepts.count()) === 1, 20_000, "the rejected hunk to leave the review");
      await vscode.screenshot("1-rejected");

      await vscode.command("Offload: Follow Up");
      await vscode.answer("Offload: Follow Up", "Also document add");
      // the task runs again; its new change (the fix and a docstring) is up for review where it goes
      await until(async () => (await changeWidgets(page)).some((t) => t.includes('+    """Sum of a and b."""')), 120_000,
        "the follow-up's docstring under its line");
      await until(async () => /finished/.test(await task.innerText()), 10_000, "the task to show finished again");
      await until(async () => (await accepts.count()) === 1, 10_000, "one hunk: the fix with the docstring above it");
      await vscode.screenshot("2-follow-up-review");

      await vscode.command("Offload: Accept All Changes in File");
      await until(async () => (await accepts.count()) === 0, 20_000, "no hunk left to review");
      await vscode.command("File: Save");
      const expected = original.replace("    return a - b", '    """Sum of a and b."""\n    return a + b');
      await until(() => fs.readFileSync(calc, "utf8") === expected, 10_000,
        "calc.py on disk to hold the fix and the docstring, without the rejected comment");
      await vscode.screenshot("3-accepted");
    });
  });
});

describe("the API key", () => {
  test("is kept in secret storage, never in settings, and the model gets it from the server", { timeout: 150_000 }, async () => {
    const key = "sk-e2e-0123456789abcdef";
    const vscode = await openVSCode("api-key", sampleRepo(tempDir("repo")), {
      "offload.pythonPath": PYTHON, "offload.model.name": "fix-failing-test", "offload.model.baseUrl": model.url,
    });
    const { page } = vscode;
    await steps(vscode, async () => {
      await until(() => offloadServers(vscode.home).length === 1, 30_000, "the Offload server to start");
      assert.equal(offloadServers(vscode.home)[0].env.OPENAI_API_KEY, undefined);

      await vscode.command("Offload: Set API Key");
      await vscode.answer("Offload: Set API Key", key);
      const withKey = () => offloadServers(vscode.home).filter((s) => s.env.OPENAI_API_KEY === key);
      await until(() => withKey().length === 1 && offloadServers(vscode.home).length === 1, 30_000,
        "the server to restart with the key as OPENAI_API_KEY, alone");
      await vscode.screenshot("1-key-set");

      await vscode.command("Offload: New Code Task");
      await vscode.answer("Offload: New Code Task", "Fix add with the key set");
      const task = await taskRow(page, "Fix add with the key set");
      await until(async () => /finished/.test(await task.innerText()), 120_000, "the task to finish");
      const calls = model.requests().filter((r) => r.method === "POST" && r.model === "fix-failing-test");
      assert.ok(calls.length >= 4, `the task's model calls: ${calls.length}`);
      assert.deepEqual([...new Set(calls.map((r) => r.headers.authorization))], [`Bearer ${key}`]);

      assert.ok(!fs.readFileSync(vscode.settingsFile, "utf8").includes(key), "the key is not in the user's settings");
      assert.ok(!fs.existsSync(path.join(vscode.folder, ".vscode")), "nor in the workspace's");
      await vscode.screenshot("2-task-finished");
    });
  });
});

describe("the interpreter from the Python extension", () => {
  test("with offload.pythonPath unset, the server runs on the interpreter the Python extension names", { timeout: 120_000 }, async () => {
    const PATH = pathWithoutOffload();
    assert.throws(() => execFileSync("python3", ["-c", "import offload.server.cli"], { env: { ...process.env, PATH }, stdio: "ignore" }),
      "python3 on this PATH must not have Offload");
    const vscode = await openVSCode("python-extension", sampleRepo(tempDir("repo")), {
      "python.defaultInterpreterPath": PYTHON, "offload.model.name": "ask-diagram", "offload.model.baseUrl": model.url,
    }, { pythonExtension: true, env: { PATH } });
    await steps(vscode, async () => {
      const [server] = await until(() => offloadServers(vscode.home).length && offloadServers(vscode.home), 30_000,
        "the Offload server to start");
      assert.deepEqual(server.argv, [PYTHON, "-m", "offload.server.cli", "serve"]);

      await vscode.command("Offload: Ask");
      await vscode.answer("Offload: Ask", "Where is add defined?");
      await vscode.taskPage().locator(".mermaid svg .node", { hasText: "test_calc" }).waitFor({ timeout: 90_000 });
      await vscode.screenshot("1-answered");
    });
  });
});

describe("a task about the selection", () => {
  test("Offload: do… from the lightbulb asks what to do and runs it on the selected lines", { timeout: 120_000 }, async () => {
    const vscode = await openVSCode("do", sampleRepo(tempDir("repo")), {
      "offload.pythonPath": PYTHON, "offload.model.name": "fix-failing-test", "offload.model.baseUrl": model.url,
    });
    const { page } = vscode;
    await steps(vscode, async () => {
      await vscode.openFile("calc.py");
      // the lightbulb shows once the server has answered for the selection: a selection made
      // while the server still starts gets none, so select again until it shows
      const bulb = page.locator(".lightBulbWidget");
      await until(async () => {
        await vscode.goToLine(4);
        await page.keyboard.press("Shift+ArrowDown");
        await page.keyboard.press("Shift+ArrowDown");
        return bulb.waitFor({ state: "visible", timeout: 5000 }).then(() => true, () => false);
      }, 90_000, "the lightbulb on lines 4-5");
      await bulb.click();
      await page.locator(".action-widget .monaco-list-row", { hasText: "Offload: do…" }).waitFor({ timeout: 30_000 });
      await vscode.screenshot("1-actions");
      await vscode.select(".action-widget", "Offload: do…");
      await vscode.answer("Offload: do…", "Make the failing test pass");
      const task = await taskRow(page, "Make the failing test pass");
      await until(async () => /finished/.test(await task.innerText()), 90_000, "the task to finish");
      await task.click();
      await vscode.taskPage().locator("h1", { hasText: "Make the failing test pass" }).waitFor();
      await vscode.screenshot("2-finished");
    });
  });
});

describe("a running task cancelled from the Tasks view", () => {
  test("the inline Cancel action stops it", { timeout: 90_000 }, async () => {
    const vscode = await openVSCode("cancel", sampleRepo(tempDir("repo")), {
      "offload.pythonPath": PYTHON, "offload.model.name": "slow-command", "offload.model.baseUrl": model.url,
    });
    const { page } = vscode;
    await steps(vscode, async () => {
      await vscode.command("Offload: New Code Task");
      await vscode.answer("Offload: New Code Task", "Wait a minute");
      await page.locator(".activitybar a.action-label[aria-label^='Offload']").click();
      const task = page.locator(".part.sidebar .monaco-list-row", { hasText: "Wait a minute" });
      await until(async () => /running/.test(await task.innerText().catch(() => "")), 60_000, "the task to run");
      await task.hover();
      await task.locator(".action-label[aria-label='Cancel Task']").click();
      await until(async () => /cancelled/.test(await task.innerText()), 30_000, "the task to be cancelled");
      await vscode.screenshot("1-cancelled");
    });
  });
});

describe("an Ask answered with a diagram", () => {
  test("the task page draws the Mermaid diagram and opens the cited lines", { timeout: 120_000 }, async () => {
    const repo = sampleRepo(tempDir("repo"));
    const vscode = await openVSCode("ask", repo, {
      "offload.pythonPath": PYTHON, "offload.model.name": "ask-diagram", "offload.model.baseUrl": model.url,
    });
    const { page } = vscode;
    await steps(vscode, async () => {
      await vscode.command("Offload: Ask");
      await vscode.answer("Offload: Ask", "Where is add defined, and who calls it?");
      // the page opens by itself when the answer is in
      const taskPage = vscode.taskPage();
      await taskPage.locator(".mermaid svg .node", { hasText: "test_calc" }).waitFor({ timeout: 90_000 });
      assert.equal(await taskPage.locator(".mermaid svg .node").count(), 3);
      await vscode.screenshot("1-answer");
      await taskPage.locator("#run-1 a.citation", { hasText: "calc.py:L4-L5" }).click();
      await page.locator('.tab.active[data-resource-name="calc.py"]').waitFor();
      await until(async () => /Ln 6, Col 1 \(\d+ selected\)/.test(
        await page.locator("#status\\.editor\\.selection").innerText().catch(() => "")), 10_000, "lines 4-5 selected");
      await vscode.screenshot("2-cited-lines");
    });
  });
});

describe("with the Offload of the environment chosen, and none there", () => {
  test("the extension says so, and how to use its own", { timeout: 60_000 }, async () => {
    const vscode = await openVSCode("not-installed", sampleRepo(tempDir("repo")),
      { "offload.pythonPath": "/usr/bin/python3", "offload.importStrategy": "fromEnvironment" });
    await steps(vscode, async () => {
      const toast = vscode.page.locator(".notification-toast", { hasText: "Offload is not installed" });
      await toast.waitFor();
      assert.match(await toast.innerText(), /Offload is not installed for \/usr\/bin\/python3.*useBundled/s);
      await vscode.screenshot("1-message");
    });
  });
});

/** The notification toast that contains `text`, once it shows. */
async function toast(page, text, ms = 120_000) {
  const found = page.locator(".notification-toast", { hasText: text }).last();
  await found.waitFor({ timeout: ms });
  return found;
}

describe("installed from the VSIX alone", () => {
  test("walkthrough, doctor, a task, its notice, review, a follow-up from the page, a dead endpoint named",
    { timeout: 480_000 }, async () => {
      const PATH = pathWithoutOffload();
      assert.throws(() => execFileSync("python3", ["-c", "import offload.server.cli"], { env: { ...process.env, PATH }, stdio: "ignore" }),
        "python3 on this PATH must not have Offload");
      const repo = sampleRepo(tempDir("repo"));
      const calc = path.join(repo, "calc.py");
      const original = fs.readFileSync(calc, "utf8");
      // no interpreter and no model set: python3 from PATH, Offload from the extension, the walkthrough to configure
      const vscode = await openVSCode("installs-itself", repo, {}, { env: { PATH } });
      const { page } = vscode;
      await steps(vscode, async () => {
        const [server] = await until(() => offloadServers(vscode.home).length && offloadServers(vscode.home), 60_000,
          "the Offload server to start");
        assert.deepEqual(server.argv.slice(1), ["-m", "offload.server.cli", "serve"]);
        assert.match(server.env.PYTHONPATH ?? "", /bundled\/libs/, "Offload comes from the extension");

        // the walkthrough opens by itself the first time
        const walkthrough = page.locator(".gettingStartedContainer");
        await walkthrough.locator("h2", { hasText: "Get started with Offload" }).waitFor({ timeout: 60_000 });
        await vscode.screenshot("1-walkthrough");
        const stepButton = async (step, button) => {
          await walkthrough.locator(".getting-started-step", { hasText: step }).first().click();
          await walkthrough.getByRole("button", { name: button, exact: true }).click();
        };
        await stepButton("Choose the model's server", "Set Model Server");
        await vscode.answer("Offload: Set Model Server", model.url);
        await stepButton("Name the model", "Set Model");
        await vscode.answer("Offload: Set Model", "follow-up");
        await until(() => /"offload.model.name": "follow-up"/.test(fs.readFileSync(vscode.settingsFile, "utf8")), 10_000,
          "the model in the user's settings");
        await stepButton("Check what works here", "Run Doctor");
        const doctor = page.frameLocator("iframe.webview.ready").last().frameLocator("iframe#active-frame");
        await doctor.locator("tr", { hasText: "model" }).first().waitFor({ timeout: 120_000 });
        assert.match(await doctor.locator("body").innerText(), /config[\s\S]*model/);
        await vscode.screenshot("2-doctor");
        assert.deepEqual(offloadServers(vscode.home).map((s) => s.pid), [server.pid], "settings changed without a restart");

        await vscode.command("Offload: New Code Task");
        await vscode.answer("Offload: New Code Task", "Fix add and document multiply");
        const finished = await toast(page, "finished: 1 file changed, ready for review");
        assert.equal(await page.locator(".notification-toast", { hasText: "Fix add and document multiply" }).count(), 1,
          "the news once, not the server's message beside it");
        await vscode.screenshot("3-finished-notice");
        await finished.locator(".monaco-button", { hasText: "Review" }).click();
        await page.locator('.tab.active[data-resource-name="calc.py"]').waitFor();
        const accepts = page.locator(".codelens-decoration a", { hasText: /^Offload: Accept(?! All)/ });
        await until(async () => (await accepts.count()) === 2, 30_000, "a CodeLens on each of the two hunks");
        await (await byHeight(page.locator(".codelens-decoration a", { hasText: /^Reject$/ }), "bottom")).click();
        const task = await taskRow(page, "Fix add and document multiply");
        await until(async () => /1 of 2 to review/.test(await task.innerText()), 20_000, "the view to count what is left");

        await vscode.command("Offload: Show Task Log");
        const taskPage = vscode.taskPage();
        await taskPage.locator("button", { hasText: "Follow Up…" }).click();
        await vscode.answer("Offload: Follow Up", "Also document add");
        await toast(page, "finished: 1 file changed, ready for review");
        await taskPage.locator("h2", { hasText: "Run 2: Also document add" }).waitFor();
        await taskPage.locator("h2", { hasText: "Run 1: Fix add and document multiply" }).waitFor();
        await vscode.screenshot("4-follow-up-page");
        // a check's [cN] opens the run that proves it in the readable log
        await taskPage.locator("#run-1 a.chunk", { hasText: "c2" }).click();
        const run = taskPage.locator("details#chunk-c2");
        await until(async () => (await run.getAttribute("open")) !== null, 10_000, "the cited run open in the log");
        assert.match(await run.innerText(), /\$ python3 -m unittest -q\s+exit 0[\s\S]*OK/);
        await vscode.screenshot("4-log");
        await taskPage.locator("button:not([disabled])", { hasText: "Accept All" }).click();
        await taskPage.locator(".review", { hasText: "reviewed" }).waitFor({ timeout: 30_000 });
        assert.equal(await taskPage.locator("button[disabled]", { hasText: "Accept All" }).count(), 1, "nothing left to accept");
        await vscode.command("File: Save All Files");
        const expected = original.replace("    return a - b", '    """Sum of a and b."""\n    return a + b');
        await until(() => fs.readFileSync(calc, "utf8") === expected, 10_000, "calc.py with the fix and the docstring");
        await vscode.screenshot("5-accepted");

        // a dead endpoint: the task fails and the notice names why
        const dead = "http://127.0.0.1:9/v1";
        await vscode.command("Offload: Set Model Server");
        await vscode.answer("Offload: Set Model Server", dead);
        await until(() => fs.readFileSync(vscode.settingsFile, "utf8").includes(dead), 10_000, "the dead endpoint in the settings");
        await vscode.command("Offload: New Code Task");
        await vscode.answer("Offload: New Code Task", "Fix add once more");
        const failed = await toast(page, "“Fix add once more” failed");
        const text = await failed.innerText();
        assert.match(text, /127\.0\.0\.1:9|connect/i, text);
        assert.match(text, /Open Settings/);
        assert.match(await page.locator("#status\\.offload\\.tasks, .statusbar-item", { hasText: "failed" }).first().innerText(),
          /1 failed/);
        assert.deepEqual(offloadServers(vscode.home).map((s) => s.pid), [server.pid], "still the first server");
        await vscode.screenshot("6-failed-notice");
      });
    });
});
