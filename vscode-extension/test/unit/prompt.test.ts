import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { withPrompt } from "../../src/prompt";

const WHERE = { uri: "file:///repo/calc.py", range: { start: { line: 3, character: 0 }, end: { line: 5, character: 0 } } };

describe("do… on a selection", () => {
  test("an offload.code without a prompt gets the user's", async () => {
    assert.deepEqual(await withPrompt("offload.code", [WHERE], async () => "  make it iterative "),
      [{ ...WHERE, prompt: "make it iterative" }]);
  });

  test("nothing runs when the user gives no prompt", async () => {
    assert.equal(await withPrompt("offload.code", [WHERE], async () => undefined), undefined);
    assert.equal(await withPrompt("offload.code", [WHERE], async () => "   "), undefined);
  });

  test("other commands, and an offload.code with its prompt, go as they are without asking", async () => {
    const never = async (): Promise<string> => assert.fail("asked");
    const fix = [{ ...WHERE, prompt: "Fix this problem" }];
    assert.equal(await withPrompt("offload.code", fix, never), fix);
    const accept = [{ taskId: "t", hunkId: "calc.py#1" }];
    assert.equal(await withPrompt("offload.acceptHunk", accept, never), accept);
  });
});
