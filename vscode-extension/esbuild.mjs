// Bundles the extension (node, CommonJS; `vscode` comes from the host) and the task page's
// script and styles (browser; markdown-it and mermaid inlined: the webview fetches nothing).
import * as esbuild from "esbuild";

const common = { bundle: true, minify: true, logLevel: "warning", legalComments: "none" };

await Promise.all([
  esbuild.build({
    ...common,
    entryPoints: ["src/extension.ts"],
    outfile: "dist/extension.js",
    platform: "node",
    format: "cjs",
    target: "node18",
    external: ["vscode"],
  }),
  esbuild.build({
    ...common,
    entryPoints: ["src/webview/main.ts"],
    outfile: "dist/webview.js", // and dist/webview.css, from the stylesheet it imports
    platform: "browser",
    format: "iife",
    target: "es2022",
  }),
]);
