/**
 * `offload doctor` from the editor: run with the Python, libraries, settings and key the server
 * gets, so it checks what tasks will use; each line shown with its fix on a page of its own.
 */

import { execFile } from "node:child_process";
import * as vscode from "vscode";
import { type OffloadServer, userSettings } from "./server";
import { settingsEnv } from "./settings";

interface Line {
  check: string;
  ok: boolean;
  detail: string;
  fix: string;
}

export async function runDoctor(server: OffloadServer): Promise<void> {
  const { command: [program, ...prefix], env } = await server.runtime();
  const cwd = vscode.workspace.workspaceFolders?.[0]?.uri.fsPath;
  const { lines, works } = await vscode.window.withProgress(
    { location: vscode.ProgressLocation.Notification, title: "Offload: checking what works here…" },
    () => new Promise<{ lines: Line[]; works: boolean }>((resolve, reject) => {
      execFile(program, [...prefix, "-m", "offload.server.cli", "doctor", "--json"],
        { cwd, env: { ...env, ...settingsEnv(userSettings()) }, timeout: 300_000, maxBuffer: 4 << 20 },
        (error, stdout, stderr) => {
          try {
            resolve({ lines: JSON.parse(stdout), works: !error });
          } catch {
            reject(new Error(`offload doctor did not run: ${stderr.trim().split("\n").pop() || error?.message}`));
          }
        });
    }));
  for (const l of lines) server.output.appendLine(`doctor: ${l.ok ? "ok  " : "FAIL"} ${l.check}: ${l.detail}${l.fix ? ` — fix: ${l.fix}` : ""}`);
  const panel = vscode.window.createWebviewPanel("offload.doctor", "Offload: Doctor", vscode.ViewColumn.Active, {});
  panel.webview.html = page(lines, works);
}

function escape(text: string): string {
  return text.replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]!);
}

function page(lines: Line[], works: boolean): string {
  const rows = lines.map((l) => `<tr class="${l.ok ? "ok" : "fail"}"><td class="mark">${l.ok ? "✔" : "✘"}</td>`
    + `<td class="check">${escape(l.check)}</td><td>${escape(l.detail)}`
    + (l.fix ? `<div class="fix">Fix: ${escape(l.fix)}</div>` : "") + "</td></tr>").join("\n");
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<style>
body { font-family: var(--vscode-font-family); color: var(--vscode-foreground); padding: 0 20px; line-height: 1.5; }
td { vertical-align: top; padding: 4px 12px 4px 0; border-bottom: 1px solid var(--vscode-panel-border); overflow-wrap: anywhere; }
.mark { font-weight: bold; } .ok .mark { color: var(--vscode-testing-iconPassed); }
.fail .mark, .fix { color: var(--vscode-testing-iconFailed); } .check { white-space: nowrap; font-weight: bold; }
</style></head><body>
<h1>Offload: what works here</h1>
<p id="verdict">${works ? "Tasks can run here." : "Something above needs fixing before tasks can run."}
Docker and bubblewrap are alternatives: one of them working is enough.</p>
<table>${rows}</table>
</body></html>`;
}
