/**
 * The server's "Offload: do…" code action runs `offload.code` on the selection without a prompt:
 * the editor asks the user for one (the client declares it can, see `PROMPT_CAPABILITY`).
 * Pure, so that it is unit-tested without VS Code.
 */

/** The experimental client capability that makes the server offer "Offload: do…". */
export const PROMPT_CAPABILITY = "offloadPrompt";

/**
 * The command's arguments, with the user's prompt added to an `offload.code` that came without
 * one; undefined when the user gave none (the command is then not run). Any other command as it is.
 */
export async function withPrompt(
  command: string,
  args: unknown[],
  ask: () => Thenable<string | undefined>,
): Promise<unknown[] | undefined> {
  const [arg] = args;
  if (command !== "offload.code" || typeof arg !== "object" || arg === null || "prompt" in arg) return args;
  const prompt = (await ask())?.trim();
  return prompt ? [{ ...arg, prompt }] : undefined;
}
