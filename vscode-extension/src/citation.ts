/**
 * A citation clicked on a task's page (`path:Lstart-Lend`, lines of the task's result) goes to the
 * server's `offload.openCitation`, which finds those lines in the file as it is now (the user may
 * have accepted part of the change, or edited it since) and asks the editor to show them. Pure:
 * no VS Code here, so it is unit-tested under plain node.
 */

/** What the page sends for a click on a citation. */
export interface CitationClick {
  path: string;
  start: number;
  end: number;
}

/** The argument of `offload.openCitation` for a click on the task's page; an Error for a malformed one. */
export function citationArgument(taskId: string, click: CitationClick): { taskId: string; path: string; line: number; endLine: number } {
  const whole = (n: unknown): n is number => typeof n === "number" && Number.isInteger(n) && n >= 1;
  if (typeof click.path !== "string" || !click.path || !whole(click.start) || !whole(click.end)) {
    throw new Error(`not a citation of lines in a file: ${JSON.stringify(click)}`);
  }
  return { taskId, path: click.path, line: click.start, endLine: Math.max(click.start, click.end) };
}

/** An editor group, as far as choosing where a document opens goes. */
export interface Group {
  viewColumn: number;
  isActive: boolean;
}

/**
 * The column a document the server shows opens in: where the editor opens it (undefined), unless
 * the user is on a task page (a webview): then beside it, in another group (the first), so the
 * page stays in view.
 */
export function columnBesidePage(groups: Group[], onPage: boolean): number | undefined {
  if (!onPage) return undefined;
  return groups.find((g) => !g.isActive)?.viewColumn ?? -2; // -2: ViewColumn.Beside
}
