// The extension in real VS Code (code-server in headless Chromium), with the real Offload server,
// a real Docker sandbox behind it and the model stand-in. Each group gets its own code-server.

import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, before, describe, test } from "node:test";
import { PYTHON, openVSCode, sampleRepo, startModel, tempDir, until } from "./harness.mjs";

let model;
before(async () => (model = await startModel()));
after(() => model?.stop());

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

      const boxes = await Promise.all((await accepts.all()).map(async (a) => ({ a, y: (await a.boundingBox()).y })));
      await boxes.sort((p, q) => p.y - q.y)[0].a.click(); // the topmost hunk: the fix of `add`
      await until(async () => (await accepts.count()) === 1, 20_000, "the accepted hunk to leave the review");
      console.log("DISK AFTER ACCEPT", JSON.stringify(fs.readFileSync(calc, "utf8")));
      await vscode.screenshot("3b-accepted");

      // the other hunk (the comment above `return a * b`, line 9) through the lightbulb
      await vscode.goToLine(9);
      await page.keyboard.press("Control+.");
      await page.locator(".action-widget .monaco-list-row", { hasText: "Offload: reject this change" }).waitFor();
      const focused = page.locator(".action-widget .monaco-list-row.focused");
      // the widget takes keys (its mouse blocker eats the first click)
      await until(async () => (await focused.getAttribute("aria-label").catch(() => "")) === "Offload: reject this change"
        || void (await page.keyboard.press("ArrowDown")), 10_000, "the reject action to be selected");
      await page.keyboard.press("Enter");
      await until(async () => (await page.locator(".codelens-decoration a", { hasText: "Offload: Accept" }).count()) === 0,
        20_000, "no hunk left to review");
      await vscode.screenshot("4-reviewed");

      console.log("DISK BEFORE SAVE", JSON.stringify(fs.readFileSync(calc, "utf8")));
      await vscode.command("File: Save");
      await page.waitForTimeout(1500);
      await vscode.screenshot("4b-saved");
      const expected = original.replace("return a - b", "return a + b");
      await until(() => fs.readFileSync(calc, "utf8") === expected, 10_000, "calc.py on disk to hold exactly the fix");

      // the task page: the summary's citation as a link, the Testing section with its mark
      await task.click();
      const taskPage = vscode.taskPage();
      await taskPage.locator("a.citation", { hasText: "calc.py:L4-L10" }).waitFor();
      assert.match(await taskPage.locator("#testing").innerText(), /✅\s+`?python3 -m unittest -q`? passed/);
      await vscode.screenshot("5-task-page");
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
      await taskPage.locator(".mermaid svg").waitFor({ timeout: 90_000 });
      assert.match(await taskPage.locator(".mermaid svg").innerHTML(), /test_calc/);
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
