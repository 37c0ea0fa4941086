"""Named scenarios shared by the agent's tests and by editor end-to-end runs.

They are written against the sample repository ``examples/calc`` (``calc.py`` whose ``add``
subtracts; ``test_calc.py`` run with ``python3 -m unittest -q``) but read what the tools return,
so a tool that misbehaves makes them fail or answer differently instead of passing on a script.
"""

import re

from tests.fakemodel import apply_patch, call, fail, hang, say, scenario, shell

UNITTEST = ["python3", "-m", "unittest", "-q"]
_MARKS = {"passed": "✅", "failed": "❌", "blocked": "⚠️"}


def report(summary: list[str], testing: list[tuple[str, ...]]) -> str:
    """Codex's final-message shape: a Summary whose claims cite ``path:Lstart-Lend`` ranges, and a
    Testing section marking each check passed, failed or blocked (by the environment), citing the
    chunk of its run when one is given: ``(command, status)`` or ``(command, status, output)``."""
    lines = ["## Summary", *(f"- {claim}" for claim in summary), "", "## Testing"]
    lines += [f"- {_MARKS[status]} `{command}` {status}" + (f" [{chunk_of(out[0])}]" if out else "")
              for command, status, *out in testing]
    return "\n".join(lines)


def output_text(out: str) -> str:
    """The command's own output from a shell tool reply (``Exit code: …\\nWall time: …\\nOutput:\\n…``)."""
    return out.split("Output:\n", 1)[1] if "Output:\n" in out else out


# The one-line fix of the sample's bug, as several scenarios patch it.
FIX_ADD = "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a + b\n*** End Patch"


@scenario("fix-failing-test")
def fix_failing_test(req):
    """Runs the tests, finds ``add``'s lines, patches it, re-runs the tests and reports."""
    out = yield shell(UNITTEST)
    if "FAILED" not in out:
        return (yield say("Tests already pass; nothing to change."))
    out = yield shell(["grep", "-n", "-e", "def add", "-e", "return a - b", "calc.py"])
    lines = [int(n) for n in re.findall(r"^(\d+):", output_text(out), re.M)]
    assert len(lines) == 2, f"expected grep to find add's two lines, got:\n{out}"
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    status = "passed" if re.search(r"^OK", output_text(out), re.M) and "FAILED" not in out else "failed"
    yield say(report([f"Fixed `add` to return `a + b` instead of `a - b` (calc.py:L{lines[0]}-L{lines[1]})."],
                     [(" ".join(UNITTEST), status, out)]))


@scenario("fix-after-rate-limit")
def fix_after_rate_limit(req):
    """The same fix behind one 429 with a short Retry-After: the client must wait and retry."""
    yield fail(429, retry_after=0.2)
    yield from fix_failing_test(req)


@scenario("ask-explain")
def ask_explain(req):
    """An Ask: greps for the definition the question names, reads its file, answers citing its lines."""
    out = yield shell(["grep", "-rnE", r"^\s*(def|class) \w+", "--include=*.py", "."])
    hits = re.findall(r"^(?:\./)?([^:\n]+):(\d+):\s*(?:def|class) (\w+)", output_text(out), re.M)
    assert hits, f"grep found no definitions:\n{out}"
    question = "\n".join(req.user_messages)  # the prompt may come after AGENTS.md or other context
    path, start, name = next((h for h in hits if re.search(rf"\b{h[2]}\b", question)), hits[0])
    out = yield shell(["cat", path])
    source = output_text(out).splitlines()
    first = last = int(start)
    while last < len(source) and (source[last].startswith((" ", "\t")) or not source[last].strip()):
        last += 1
    while last > first and not source[last - 1].strip():
        last -= 1
    snippet = "\n".join(source[first - 1:last])
    yield say(f"`{name}` is defined at {path}:L{first}-L{last}:\n\n```python\n{snippet}\n```")


@scenario("fix-and-document")
def fix_and_document(req):
    """Two hunks in one file: the fix, and a comment on ``multiply`` that a reviewer may reject."""
    out = yield apply_patch("*** Begin Patch\n*** Update File: calc.py\n@@ def add(a, b):\n-    return a - b\n"
                            "+    return a + b\n@@ def multiply(a, b):\n+    # the product of a and b\n"
                            "     return a * b\n*** End Patch")
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    status = "passed" if re.search(r"^OK", output_text(out), re.M) else "failed"
    return (yield say(report(["Fixed `add` and documented `multiply` (calc.py:L4-L10)."],
                             [(" ".join(UNITTEST), status, out)])))


@scenario("slow-command")
def slow_command(req):
    """Starts a command that takes a minute: something to cancel or kill a process during."""
    out = yield shell(["sleep", "60"])
    yield say(report(["Waited."], [("sleep 60", "passed" if "Exit code: 0" in out else "failed", out)]))


@scenario("slow-then-fix")
def slow_then_fix(req):
    """`slow-command` when the prompt asks to wait, else `fix-failing-test`: one model for a task to
    kill a process during and a later one that must finish."""
    return (yield from (slow_command if "wait" in req.prompt else fix_failing_test)(req))


def chunk_of(out: str) -> str:
    """The chunk id a tool output starts with (``Chunk: c3``), which a final message cites."""
    match = re.match(r"Chunk: (c\d+)\n", out)
    assert match, f"the tool output names no chunk:\n{out[:200]}"
    return match.group(1)


@scenario("fix-and-cite")
def fix_and_cite(req):
    """The fix of ``fix-failing-test``, reported as the system prompt asks: the Summary cites the lines
    as they are after the patch, and the Testing section cites the chunk of the last test run."""
    out = yield shell(UNITTEST)
    assert "FAILED" in out, out
    out = yield shell(["grep", "-n", "return a - b", "calc.py"])
    line = int(re.findall(r"^(\d+):", output_text(out), re.M)[0])
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    status = "passed" if out.split("\n")[1] == "Exit code: 0" else "failed"
    yield say(report([f"`add` returns `a + b` now (calc.py:L{line - 1}-L{line})."],
                     [(" ".join(UNITTEST), status)]) + f" [{chunk_of(out)}]")


@scenario("follow-up")
def follow_up(req):
    """The two-hunk change; then, asked to follow up, checks the rejected hunk is gone and adds a docstring."""
    followup = yield from fix_and_document(req)
    assert "rejected" in followup and "the product of a and b" in followup, followup
    out = yield shell(["grep", "-c", "the product", "calc.py"])
    assert output_text(out).strip() == "0", out  # the rejected hunk is undone in the workspace
    out = yield apply_patch('*** Begin Patch\n*** Update File: calc.py\n@@ def add(a, b):\n+    """Sum of a and b."""\n'
                            "     return a + b\n*** End Patch")
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    yield say(report(["Documented `add` (calc.py:L4-L6)."],
                     [(" ".join(UNITTEST), "passed" if "OK" in out else "failed", out)]))


@scenario("rewrite-add")
def rewrite_add(req):
    """A different fix of the same line as ``fix-failing-test``: applying both must conflict."""
    out = yield apply_patch("*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return sum((a, b))\n"
                            "*** End Patch")
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    status = "passed" if re.search(r"^OK", output_text(out), re.M) else "failed"
    yield say(report(["Rewrote `add` with `sum` (calc.py:L4-L5)."], [(" ".join(UNITTEST), status, out)]))


@scenario("give-up")
def give_up(req):
    """Runs the tests, sees them fail, changes nothing and says so honestly."""
    out = yield shell(UNITTEST)
    status = "failed" if "FAILED" in out else "passed"
    yield say(report(["Found the failure but did not fix it."], [(" ".join(UNITTEST), status, out)]))


@scenario("ask-tries-to-write")
def ask_tries_to_write(req):
    """An Ask task that tries to change the workspace anyway: the sandbox must refuse."""
    assert "apply_patch" not in req.tool_names, req.tool_names
    out = yield shell(["sh", "-c", "echo x >> calc.py; touch new.txt; rm test_calc.py; git commit -qam x --allow-empty"])
    refused = not out.startswith("Exit code: 0")
    out = yield shell(["grep", "-n", "def add", "calc.py"])
    yield say(f"`add` is defined at calc.py:L4-L5. Writing was {'refused' if refused else 'ALLOWED'}.")


@scenario("skip-checks")
def skip_checks(req):
    """Edits and stops without running the checks AGENTS.md lists; when reminded, still doesn't."""
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    reminder = yield say("## Summary\nFixed add (calc.py:L4-L5).")
    assert "python3 -m unittest -q" in reminder, reminder
    followup = yield say("## Summary\nFixed add (calc.py:L4-L5).")
    # a follow-up hears what the harness ran after the final message, as a message, not a stray output
    assert "Offload ran this check" in followup and "Exit code: 0" in followup, followup
    yield say("## Summary\nThe checks Offload ran passed; nothing more to do.")


@scenario("checks-after-reminder")
def checks_after_reminder(req):
    """Edits, forgets the checks, and runs them once reminded."""
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    yield say("## Summary\nFixed add (calc.py:L4-L5).\n## Testing\n- none run")  # answered by a reminder
    out = yield shell(UNITTEST)
    yield say(report(["Fixed add (calc.py:L4-L5)."],
                     [(" ".join(UNITTEST), "passed" if "OK" in out else "failed", out)]))


@scenario("best-of-three", variants=True)
def best_of_three(req):
    """Three plays of one task, for best-of-N: a wrong fix whose tests fail, a right fix that also
    rewrites the docstring (a larger diff), and the minimal right fix. Each cites its last test run,
    and a follow-up shows the file's first line as that attempt left it."""
    patch = [
        "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a * b\n*** End Patch",
        '*** Begin Patch\n*** Update File: calc.py\n@@\n-"""A tiny calculator with a bug for Offload to fix."""\n'
        '+"""A tiny calculator."""\n@@\n-    return a - b\n+    return a + b\n*** End Patch',
        FIX_ADD,
    ][req.variant % 3]
    out = yield apply_patch(patch)
    assert "Success" in out, out
    out = yield shell(UNITTEST)
    status = "passed" if out.split("\n")[1] == "Exit code: 0" else "failed"
    yield say(report(["Changed `add` (calc.py:L4-L5)."], [(" ".join(UNITTEST), status)]) + f" [{chunk_of(out)}]")
    # a follow-up continues this attempt's conversation: it shows the file, then tests again
    out = yield shell(["cat", "calc.py"])
    first = output_text(out).splitlines()[0]
    out = yield shell(UNITTEST)
    status = "passed" if out.split("\n")[1] == "Exit code: 0" else "failed"
    yield say(report([f"calc.py begins `{first}` (calc.py:L1)."], [(" ".join(UNITTEST), status)])
              + f" [{chunk_of(out)}]")


@scenario("fix-slowly-and-quietly")
def fix_slowly_and_quietly(req):
    """The fix behind a model step of 75 s and a command silent for 70 s, as a local or reasoning
    model and a quiet `npm install` give them: the sandbox must still answer afterwards."""
    yield hang(75)
    out = yield shell("sleep 70; echo quiet-done")
    assert "Exit code: 0" in out and "quiet-done" in out, out
    yield from fix_failing_test(req)


WRONG_FIX = "*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a - b\n+    return a * b\n*** End Patch"


@scenario("forge-pass")
def forge_pass(req):
    """A wrong or undone fix reported as passing, the citation forged as the prompt's last word says:
    ``patch`` cites the patch's output, ``failing`` a failing run, ``stale`` a run before the last
    edit, ``other`` a run of another command."""
    how = req.prompt.split()[-1]
    if how == "stale":
        yield apply_patch(FIX_ADD)
        cited = yield shell(UNITTEST)
        assert "Exit code: 0" in cited, cited
        out = yield apply_patch("*** Begin Patch\n*** Update File: calc.py\n@@\n-    return a + b\n+    return a * b\n"
                                "*** End Patch")
    else:
        out = cited = yield apply_patch(WRONG_FIX)
        if how == "failing":
            cited = yield shell(UNITTEST)
        elif how == "other":
            cited = yield shell(["python3", "-c", "print('all good')"])
    assert "Success" in out, out
    yield say(report(["`add` is fixed (calc.py:L4-L5)."], [(" ".join(UNITTEST), "passed", cited)]))


def offered(req) -> dict[str, list[int]]:
    """The candidate numbers the system prompt offers, by command (``N. `command` — …``)."""
    numbers: dict[str, list[int]] = {}
    for n, command in re.findall(r"^(\d+)\. `([^`]+)` — ", req.instructions, re.M):
        numbers.setdefault(command, []).append(int(n))
    return numbers


@scenario("declare-and-prove")
def declare_and_prove(req):
    """Under an AGENTS.md with its commands in a code block under "## Testing instructions" (one with a
    placeholder) and a nested tools/AGENTS.md: declares the three checks that apply, the placeholder
    filled and the nested one in its directory, dismisses the rest with reasons, fixes ``add``, runs
    each check after the edit in a spelling of its own, and reports each citing its run."""
    cands = offered(req)
    root_suite, tools_suite = cands["python3 -m unittest -q"]
    (one_case,) = cands["python3 -m unittest -q test_calc.<TestCase>"]
    out = yield shell(UNITTEST)
    assert "FAILED" in out, out
    out = yield call("declare_checks", {"checks": [{"candidate": one_case,
                                                    "command": "python3 -m unittest -q test_calc.<TestCase>"}]})
    assert "fill in the placeholder(s) `<TestCase>`" in out, out
    out = yield call("declare_checks", {
        "checks": [{"candidate": root_suite, "command": "python3 -m unittest -q"},
                   {"candidate": one_case, "command": "python3 -m unittest -q test_calc.CalcTest"},
                   {"candidate": tools_suite, "command": "python3 -m unittest -q"}],
        "dismissed": [{"candidate": n, "reason": "AGENTS.md says not to; it needs the network or a maintainer"}
                      for command, numbers in cands.items() if "unittest" not in command for n in numbers]})
    assert "Declared" in out and "Not accepted" not in out and "neither declared nor dismissed" not in out, out
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    yield say((yield from _run_the_three_checks("`add` returns `a + b` now (calc.py:L4-L5).")))
    # a follow-up: one more edit, then the same checks again, without declaring them anew
    out = yield apply_patch('*** Begin Patch\n*** Update File: calc.py\n@@ def add(a, b):\n+    """Sum of a and b."""\n'
                            "     return a + b\n*** End Patch")
    assert "Success" in out, out
    yield say((yield from _run_the_three_checks("`add` has a docstring (calc.py:L4-L6).")))


def _run_the_three_checks(summary: str):
    """``declare-and-prove``'s checks, each run in a spelling of its own, and the report citing each run."""
    whole = yield shell("python3 -m unittest -q 2>&1")
    one = yield shell(["python3", "-m", "unittest", "-q", "test_calc.CalcTest"])
    tools = yield shell("cd tools && python3 -m unittest -v")
    return report([summary], [
        ("python3 -m unittest -q", "passed" if "Exit code: 0" in whole else "failed", whole),
        ("python3 -m unittest -q test_calc.CalcTest", "passed" if "Exit code: 0" in one else "failed", one),
        ("cd tools && python3 -m unittest -q", "passed" if "Exit code: 0" in tools else "failed", tools)])


@scenario("declare-then-skip")
def declare_then_skip(req):
    """Declares the suite, fixes ``add``, and claims the pass from the run before the fix; reminded,
    sends the same message again."""
    (suite,) = offered(req)["python3 -m unittest -q"][:1]
    out = yield call("declare_checks", {"checks": [{"candidate": suite, "command": "python3 -m unittest -q"}],
                                        "dismissed": [{"candidate": n, "reason": "not needed"}
                                                      for c, ns in offered(req).items() for n in ns if n != suite]})
    before = yield shell(UNITTEST)
    yield apply_patch(FIX_ADD)
    message = report(["`add` is fixed (calc.py:L4-L5)."], [(" ".join(UNITTEST), "passed", before)])
    reminder = yield say(message)
    assert "have not run since yours" in reminder and "python3 -m unittest -q" in reminder, reminder
    yield say(message)


@scenario("killed-then-told")
def killed_then_told(req):
    """Fixes ``add``, then waits in a command during which the test kills the run; the follow-up must
    say that the edit is gone, and the model makes it again."""
    out = yield apply_patch(FIX_ADD)
    assert "Success" in out, out
    yield shell(["sleep", "60"])
    told = req.user_messages[-1]
    assert "interrupted" in told and "none of your edits are in it" in told, told
    out = yield shell(["grep", "-c", "return a + b", "calc.py"])
    assert output_text(out).strip() == "0", out
    yield apply_patch(FIX_ADD)
    out = yield shell(UNITTEST)
    yield say(report(["`add` is fixed again (calc.py:L4-L5)."],
                     [(" ".join(UNITTEST), "passed" if "Exit code: 0" in out else "failed", out)]))


@scenario("ignore-candidates")
def ignore_candidates(req):
    """Fixes ``add`` and reports its proven test run without a word about AGENTS.md's candidates;
    reminded of them, sends the same message again."""
    yield apply_patch(FIX_ADD)
    out = yield shell(UNITTEST)
    message = report(["`add` is fixed (calc.py:L4-L5)."], [(" ".join(UNITTEST), "passed", out)])
    reminder = yield say(message)
    assert "neither declared nor dismissed" in reminder and "declare_checks" in reminder, reminder
    yield say(message)


@scenario("cite-before-rejection")
def cite_before_rejection(req):
    """The two-hunk change with its passing tests; asked to follow up after a hunk was rejected, it
    reports the same run again instead of running the tests on the files as they now are."""
    out = yield apply_patch("*** Begin Patch\n*** Update File: calc.py\n@@ def add(a, b):\n-    return a - b\n"
                            "+    return a + b\n@@ def multiply(a, b):\n+    # the product of a and b\n"
                            "     return a * b\n*** End Patch")
    assert "Success" in out, out
    tests = yield shell(UNITTEST)
    followup = yield say(report(["Fixed `add` and documented `multiply` (calc.py:L4-L10)."],
                                [(" ".join(UNITTEST), "passed", tests)]))
    assert "rejected" in followup, followup
    yield say(report(["Nothing more to change (calc.py:L4-L5)."], [(" ".join(UNITTEST), "passed", tests)]))


@scenario("run-the-script")
def run_the_script(req):
    """Runs the shell script in the prompt's ```sh block as one command, then reports: the tests of
    the return path make a sandbox's change of any shape (binaries, symlinks, 20,000 files, crafted
    git objects) with it."""
    script = re.search(r"```sh\n(.*?)```", req.prompt, re.S).group(1)
    out = yield shell(script, timeout_ms=600_000)
    status = "passed" if "Exit code: 0" in out else "failed"
    yield say(report(["Ran the script."], [("the script", status)]))
    # reminded of the repository's checks (the script changed files): the same report, and the harness runs them
    yield say(report(["Ran the script."], [("the script", status)]))


@scenario("flood-output")
def flood_output(req):
    """A command that prints 200,000 characters: the editor gets a summary, the log the whole."""
    out = yield shell(["python3", "-c", "print('x' * 200000)"])
    yield say(report(["Printed a lot."], [("python3 -c print", "passed" if "Exit code: 0" in out else "failed", out)]))


# A "formatter": a script that rewrites calc.py in place (a header comment, trailing spaces stripped).
FORMAT = ("python3 - <<'EOF'\nimport pathlib\np = pathlib.Path('calc.py')\nlines = p.read_text().splitlines()\n"
          "p.write_text('\\n'.join(['# formatted'] + [line.rstrip() for line in lines]) + '\\n')\nEOF")


@scenario("edit-by-command")
def edit_by_command(req):
    """Files changed by shell commands, as the prompt's last word says, then a report citing the
    passing run: ``sed-after-test`` breaks the fix with ``sed -i`` after the tests passed;
    ``formatter`` rewrites calc.py with a script after they passed; ``test-after-sed`` fixes with
    ``sed -i`` and then runs them; ``edit-and-test`` fixes and tests in one command;
    ``ignored-cache`` runs a command that writes only ignored caches after they passed. Asked to
    follow up, it reports the same run again."""
    how = req.prompt.split()[-1]
    if how in ("test-after-sed", "edit-and-test"):
        fix = "sed -i 's/a - b/a + b/' calc.py"
        out = yield shell(f"{fix} && python3 -m unittest -q" if how == "edit-and-test" else fix)
        assert "Files changed by this command: calc.py" in out, out
        cited = out if how == "edit-and-test" else (yield shell(UNITTEST))
    else:
        assert "Success" in (yield apply_patch(FIX_ADD))
        cited = yield shell(UNITTEST)
        after = {"sed-after-test": "sed -i 's/a + b/a - b/' calc.py", "formatter": FORMAT,
                 "ignored-cache": "env -u PYTHONDONTWRITEBYTECODE python3 -m compileall -q ."}[how]
        out = yield shell(after)
        assert "Exit code: 0" in out and ("Files changed" in out) == (how != "ignored-cache"), out
    assert "Exit code: 0" in cited, cited
    message = report(["`add` is fixed (calc.py:L1-L2)."], [(" ".join(UNITTEST), "passed", cited)])
    yield say(message)
    yield say(message)
