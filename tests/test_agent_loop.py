"""The agent loop end to end: the stand-in plays the model, the sandbox is real Docker.

Every conversation runs on both APIs, streamed and not: the happy path with its evidence, the
freeform apply_patch, each budget, a model repeating itself, the context kept small, cancels.
"""

from __future__ import annotations

import threading

import pytest

from offload.server.agent.loop import Budget
from tests.agent_support import MODES, run, sandbox, shared_sandbox  # noqa: F401 - fixtures
from tests.fakemodel import apply_patch, hang, say, shell
from tests.scenarios import UNITTEST, chunk_of, fix_and_cite

pytestmark = pytest.mark.docker


@pytest.mark.parametrize("api,stream", MODES)
def test_fixes_the_bug_commits_and_every_citation_holds(sandbox, api, stream):
    r = run(sandbox, fix_and_cite, api, stream)

    assert (r.result.outcome, r.result.reason) == ("completed", "the model finished")
    assert "return a + b" in sandbox.read_file("calc.py").decode()
    assert r.result.commit and r.of("commit") == [{"commit": r.result.commit}]
    # each tool output is a chunk, numbered in order, named to the model on its first line
    results = r.of("tool.result")
    assert [e["chunk"] for e in results] == ["c1", "c2", "c3", "c4"]
    assert all(e["output"].startswith(f"Chunk: {e['chunk']}\n") for e in results)
    assert [e["exit_code"] for e in results if "exit_code" in e] == [1, 0, 0]
    # every citation was checked against the final tree and the chunks, and holds
    cites = r.of("citations")
    assert len(cites) == 1 and cites[0]["flagged"] == 0
    assert {(c["kind"], c["citation"]) for c in cites[0]["citations"]} >= {("file", "calc.py:L4-L5"), ("chunk", "c4")}
    assert r.result.citations == cites[0]["citations"]
    # the commit message is the summary, without the chunk ids that mean nothing outside the task
    log = sandbox.git("log", "-1", "--format=%B").output
    assert log.startswith("`add` returns `a + b` now (calc.py:L4-L5)") and "[c4]" not in log
    # tokens for every call; no price for this model name, so no cost
    replies = r.of("model.reply")
    assert len(replies) == 5 and all(e["input_tokens"] > 0 and e["output_tokens"] > 0 for e in replies)
    assert r.result.input_tokens == sum(e["input_tokens"] for e in replies) and r.result.model_calls == 5
    assert r.result.cost_usd is None and all(e["cost_usd"] is None for e in replies)
    assert r.kinds()[-1] == "agent.end" and r.of("agent.end")[0]["outcome"] == "completed"


@pytest.mark.parametrize("api,stream", MODES)
def test_a_known_model_has_its_cost_counted(sandbox, api, stream):
    r = run(sandbox, fix_and_cite, api, stream, name="gpt-4.1")
    replies = r.of("model.reply")
    assert r.result.outcome == "completed"
    expected = sum((e["input_tokens"] * 2.0 + e["output_tokens"] * 8.0) / 1e6 for e in replies)
    assert r.result.cost_usd == pytest.approx(expected) and r.result.cost_usd > 0
    assert replies[-1]["total_cost_usd"] == pytest.approx(expected)


@pytest.mark.parametrize("api,stream", MODES)
def test_apply_patch_is_freeform_on_the_responses_api(sandbox, api, stream):
    r = run(sandbox, fix_and_cite, api, stream)
    assert r.result.outcome == "completed"
    first, last = r.model.requests[0], r.model.requests[-1]
    patch_tool = next(t for t in first.tools if "apply_patch" in (t.get("name"), t.get("function", {}).get("name")))
    if api == "responses":
        assert patch_tool["type"] == "custom" and patch_tool["format"]["syntax"] == "lark"
        assert "*** Begin Patch" in patch_tool["format"]["definition"]
        kinds = [item.get("type") for item in last.body["input"]]
        assert "custom_tool_call" in kinds and "custom_tool_call_output" in kinds
        assert [c["custom"] for c in r.of("tool.call")] == [False, False, True, False]
    else:
        assert patch_tool["type"] == "function"


@pytest.mark.parametrize("stream", [False, True])
def test_freeform_patch_can_be_turned_off(sandbox, stream):
    r = run(sandbox, fix_and_cite, "responses", stream, model_options={"freeform_patch": False})
    assert r.result.outcome == "completed"
    assert all(t["type"] == "function" for t in r.model.requests[0].tools)
    assert "custom_tool_call" not in [item.get("type") for item in r.model.requests[-1].body["input"]]


@pytest.mark.parametrize("api,stream", MODES)
def test_step_budget(sandbox, api, stream):
    r = run(sandbox, fix_and_cite, api, stream, budget=Budget(max_steps=2))
    assert r.result.outcome == "budget"
    assert "step budget" in r.result.reason and "budget.max_steps = 2" in r.result.reason
    assert len(r.of("model.reply")) == 2 and r.result.commit is None and not r.of("citations")
    assert r.of("agent.end")[0]["reason"] == r.result.reason


@pytest.mark.parametrize("api,stream", MODES)
def test_token_budget(sandbox, api, stream):
    r = run(sandbox, fix_and_cite, api, stream, budget=Budget(max_tokens=1))
    assert r.result.outcome == "budget" and "budget.max_tokens = 1)" in r.result.reason
    assert r.result.input_tokens + r.result.output_tokens > 1 and len(r.of("model.reply")) == 1


@pytest.mark.parametrize("api,stream", MODES)
def test_cost_budget(sandbox, api, stream):
    r = run(sandbox, fix_and_cite, api, stream, name="gpt-5", budget=Budget(max_cost_usd=0.0001))
    assert r.result.outcome == "budget" and "budget.max_cost_usd = 0.0001" in r.result.reason
    assert r.result.cost_usd >= 0.0001 and len(r.of("model.reply")) == 1


@pytest.mark.parametrize("api,stream", MODES)
def test_time_budget_stops_a_running_command(sandbox, api, stream):
    def slow(req):
        yield shell(["sleep", "30"])
        yield say("not reached")

    r = run(sandbox, slow, api, stream, budget=Budget(max_minutes=0.02))
    assert r.result.outcome == "budget" and "budget.max_minutes" in r.result.reason
    (result,) = r.of("tool.result")
    assert result["killed"] and "the task is ending" in result["output"]
    assert sandbox.run(["pgrep", "-f", "^sleep 30"]).exit_code == 1  # nothing left running


@pytest.mark.parametrize("api,stream", MODES)
def test_a_model_repeating_itself_is_told_then_stopped(sandbox, api, stream):
    def repeating(req):
        seen = []
        for _ in range(4):
            out = yield shell(["cat", "calc.py"])
            seen.append("3 times in a row" in out)
            if len(seen) == 3:
                assert seen == [False, False, True], seen  # told on the third, not before
        yield say("not reached")

    r = run(sandbox, repeating, api, stream)
    assert r.result.outcome == "failed"
    assert r.result.reason == "stopped a loop: the model made the same shell call 4 times in a row"
    assert len(r.of("tool.result")) == 3 and r.of("loop")[0]["repeats"] == 4


@pytest.mark.parametrize("api,stream", MODES)
def test_old_outputs_are_hidden_behind_their_chunk_but_kept_in_the_log(sandbox, api, stream):
    def chatty(req):
        for n in range(5):
            yield shell(["bash", "-c", f"printf 'output number {n} %.0s' $(seq 40)"])
        yield say("## Summary\nNothing to change.")

    r = run(sandbox, chatty, api, stream, keep_outputs=2)
    assert r.result.outcome == "completed"
    outputs = [item[2] for item in r.model.requests[-1].items if item[0] == "output"]
    hidden = [o for o in outputs if o.startswith("[output hidden")]
    # over the limit, it hides down to half of it, so the conversation's start stays put for a while
    assert [e["hidden"] for e in r.of("context")] == [["c1", "c2"], ["c3", "c4"]]
    assert hidden == [f"[output hidden to save context; it is in the task log as chunk c{n}]" for n in (1, 2, 3, 4)]
    assert outputs[4:] == [r.of("tool.result")[4]["output"]]
    assert "output number 0" in r.of("tool.result")[0]["output"]  # the log keeps everything


@pytest.mark.parametrize("api,stream", MODES)
def test_a_byte_budget_hides_outputs_too(sandbox, api, stream):
    def big(req):
        for n in range(3):
            yield shell(["bash", "-c", f"head -c 3000 /dev/zero | tr '\\0' '{n}'"])
        yield say("done")

    r = run(sandbox, big, api, stream, context_bytes=5000)
    outputs = [item[2] for item in r.model.requests[-1].items if item[0] == "output"]
    assert outputs[0].startswith("[output hidden") and not outputs[2].startswith("[output hidden")


@pytest.mark.parametrize("api,stream", MODES)
def test_cancel_while_waiting_on_the_model(sandbox, api, stream):
    cancel = threading.Event()

    def slow_model(req):
        cancel.set()  # the user cancels while this request is being answered
        yield hang(30)
        yield say("not reached")

    r = run(sandbox, slow_model, api, stream, cancel=cancel)
    assert (r.result.outcome, r.result.reason) == ("cancelled", "cancelled by the user")
    assert not r.of("model.reply") and not r.of("model.error")  # abandoned, not timed out


@pytest.mark.parametrize("api,stream", MODES)
def test_cancel_while_a_command_runs(sandbox, api, stream):
    cancel = threading.Event()

    def on_event(kind, data):
        if kind == "tool.output" and "started" in data["chunk"]:
            cancel.set()

    def sleeper(req):
        yield shell(["bash", "-c", "echo started; sleep 30"])
        yield say("not reached")

    r = run(sandbox, sleeper, api, stream, cancel=cancel, on_event=on_event)
    assert r.result.outcome == "cancelled"
    assert r.kinds()[-3:] == ["tool.output", "tool.result", "agent.end"]
    assert r.of("tool.result")[0]["killed"]
    assert sandbox.run(["pgrep", "-f", "^sleep 30"]).exit_code == 1
    assert sandbox.git("status", "--porcelain").output == ""


@pytest.mark.parametrize("api,stream", MODES)
def test_cancel_between_steps(sandbox, api, stream):
    cancel = threading.Event()
    r = run(sandbox, fix_and_cite, api, stream, cancel=cancel,
            on_event=lambda kind, data: kind == "tool.result" and cancel.set())
    assert r.result.outcome == "cancelled" and len(r.model.requests) == 1
    assert len(r.of("tool.result")) == 1 and r.result.commit is None


@pytest.mark.parametrize("api,stream", MODES)
def test_cancel_during_a_patch_leaves_it_whole(sandbox, api, stream):
    cancel = threading.Event()
    patch = ("*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a + b\n"
             "*** Add File: notes.txt\n+patched\n*** End Patch")

    def patcher(req):
        yield apply_patch(patch)
        yield say("not reached")

    r = run(sandbox, patcher, api, stream, cancel=cancel,
            on_event=lambda kind, data: kind == "tool.call" and cancel.set())
    assert r.result.outcome == "cancelled"
    assert "Success" in r.of("tool.result")[0]["output"]
    assert "return a + b" in sandbox.read_file("calc.py").decode()
    assert sandbox.read_file("notes.txt") == b"patched\n"


@pytest.mark.parametrize("api,stream", MODES)
def test_citations_are_checked_and_flagged(sandbox, api, stream):
    def careless(req):
        out = yield shell(UNITTEST)
        failing = chunk_of(out)
        yield say("## Summary\n- Fixed add (calc.py:L4-L5), also calc.py:L40-L42 and missing.py:L1, see [c9].\n\n"
                  f"## Testing\n- `python3 -m unittest -q` passed [{failing}]\n- `ruff check` passed\n")

    r = run(sandbox, careless, api, stream)
    assert r.result.outcome == "completed"
    (event,) = r.of("citations")
    verdicts = {c["citation"]: (c["ok"], c.get("reason", "")) for c in event["citations"]}
    assert verdicts["calc.py:L4-L5"] == (True, "")
    assert verdicts["calc.py:L40-L42"] == (False, "lines 40-42 are outside the file's 9 lines")
    assert verdicts["missing.py:L1"] == (False, "no such file in the final tree")
    assert verdicts["c9"] == (False, "no such chunk (the task's chunks: c1)")
    assert verdicts["c1"] == (True, "")
    assert verdicts["`python3 -m unittest -q` passed [c1]"] == (False, "claims passed, but c1 exited 1")
    assert verdicts["`ruff check` passed"] == (False, "cites no chunk")
    assert event["flagged"] == 5
