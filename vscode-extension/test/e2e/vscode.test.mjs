// The extension in real VS Code (code-server in headless Chromium), with the real Offload server,
// a real Docker sandbox behind it and the model stand-in. Each group gets its own code-server.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { PYTHON, openVSCode, removeTempDirs, sampleRepo, startModel, tempDir, until } from "./harness.mjs";

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

/** Editor elements whose ::after content (decoration text) contains `text`. */
function decorationsWith(page, text) {
  return page.evaluate((wanted) => [...document.querySelectorAll(".monaco-editor .view-line span")]
    .filter((e) => getComputedStyle(e, "::after").content.includes(wanted)).length, text);
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
      const accepts = page.locator(".codelens-decoration a", { hasText: /^Offload: Accept$/ });
      await until(async () => (await accepts.count()) === 2, 30_000, "a CodeLens on each of the two hunks");
      await until(() => decorationsWith(page, "# the product of a and b"), 10_000, "the proposed comment as a decoration");
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
      await page.locator(".action-widget .monaco-list-row", { hasText: "Offload: reject this change" }).waitFor();
      await vscode.select(".action-widget", "Offload: reject this change"); // by keys: its mouse blocker eats a click
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
      await taskPage.locator("a.citation", { hasText: "calc.py:L4-L10" }).waitFor();
      assert.match(await taskPage.locator("#testing").innerText(), /✔\s*python3 -m unittest -q passed/);
      await vscode.screenshot("5-task-page");
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
      await taskPage.locator("a.citation", { hasText: "calc.py:L4-L5" }).click();
      await page.locator('.tab.active[data-resource-name="calc.py"]').waitFor();
      await until(async () => /Ln 5, Col \d+ \(\d+ selected\)/.test(
        await page.locator("#status\\.editor\\.selection").innerText().catch(() => "")), 10_000, "lines 4-5 selected");
      await vscode.screenshot("2-cited-lines");
    });
  });
});

describe("without Offload installed", () => {
  test("the extension says which command installs it", { timeout: 60_000 }, async () => {
    const vscode = await openVSCode("not-installed", sampleRepo(tempDir("repo")), { "offload.pythonPath": "/usr/bin/python3" });
    await steps(vscode, async () => {
      const toast = vscode.page.locator(".notification-toast", { hasText: "pip install offload" });
      await toast.waitFor();
      assert.match(await toast.innerText(), /Offload is not installed for \/usr\/bin\/python3.*\/usr\/bin\/python3 -m pip install offload/s);
      await vscode.screenshot("1-message");
    });
  });
});
