"""Reading AGENTS.md as real projects write it: the candidates offered, the declarations accepted.

The corpus (tests/agents_md_corpus) holds every style the field has: code blocks with comments,
sentences, labelled bullets, tables, nested files, placeholders, subdirectory commands,
conditions and warnings. Recall of the checks a careful engineer would name must stay ≥ 90%, and
the harness itself may run only a team's fixed list (`## Checks`, a ```checks block).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from offload.server.agent.agents_md import AgentsFile, candidates, find_source, fits
from offload.server.agent.checks import CheckBook
from tests.agents_md_corpus import load_cases

CASES = load_cases()


def _plain(text: str) -> str:
    return " ".join(text.split())


def book_for(case: dict, root: Path) -> CheckBook:
    for name, text in case["files"].items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return CheckBook(root, case.get("subdir", ""))


def number_of(book: CheckBook, template: str) -> int:
    numbers = [n for n, c in enumerate(book.candidates, 1) if _plain(c.command) == _plain(template)]
    assert numbers, f"no candidate `{template}` among {[c.command for c in book.candidates]}"
    return numbers[0]


def item(book: CheckBook, entry: dict, **fields) -> dict:
    named = {"candidate": number_of(book, entry["template"])} if "template" in entry else {"source": entry["source"]}
    return {**named, **fields}


def found(book: CheckBook, wanted: dict) -> bool:
    return any(_plain(c.command) == _plain(wanted["command"]) and c.directory == wanted.get("directory", c.directory)
               for c in book.candidates)


def test_recall_of_the_checks_a_careful_engineer_names(tmp_path):
    hits = total = 0
    missed = []
    for i, case in enumerate(CASES):
        book = book_for(case, tmp_path / str(i))
        for wanted in case["required"]:
            total += 1
            if found(book, wanted):
                hits += 1
            else:
                missed.append(f"{case['name']}: {wanted}")
    print(f"\nAGENTS.md corpus: {hits} of {total} checks found as candidates ({hits / total:.0%}); missed: {missed}")
    assert total >= 40 and hits / total >= 0.9, missed


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case(case, tmp_path):
    book = book_for(case, tmp_path)
    by_command = {_plain(c.command): c for c in book.candidates}
    # the harness runs only a team's fixed list, never a harmful command
    assert sorted(c.command for c in book.required) == sorted(case.get("strict", []))
    assert not {_plain(h) for h in case.get("harmful", [])} & {_plain(c.command) for c in book.required}
    for harmful in case.get("harmful", []):  # offered at all, it comes with the reason not to run it
        if _plain(harmful) in by_command:
            assert by_command[_plain(harmful)].notes, harmful
    for warned in case.get("warned", []):
        assert any(n.startswith("AGENTS.md warns") for n in by_command[_plain(warned)].notes), warned
    for conditional in case.get("conditional", []):
        assert any(n.startswith(("condition", "AGENTS.md warns")) for n in by_command[_plain(conditional)].notes)
    # the scripted model's declarations and dismissals are accepted, each in its directory
    for entry in case.get("declare", []):
        fields = {"command": entry["command"], **({"workdir": entry["workdir"]} if "workdir" in entry else {})}
        reply, event = book.declare({"checks": [item(book, entry, **fields)]})
        assert event["errors"] == [], reply
        assert event["declared"][0]["directory"] == entry.get("directory", ".")
    for entry in case.get("dismiss", []):
        reply, event = book.declare({"dismissed": [item(book, entry, reason=entry["reason"])]})
        assert event["errors"] == [] and event["dismissed"], reply
    if case.get("declare") or case.get("dismiss"):
        assert len(book.dismissals()) == len(case.get("dismiss", []))
    for entry in case.get("refuse", []):
        reply, event = book.declare({"checks": [item(book, entry, command=entry["command"])]})
        assert event["declared"] == [] and entry["why"] in " ".join(event["errors"]), reply


def test_a_declaration_must_name_real_text_and_a_fitting_command(tmp_path):
    (tmp_path / "AGENTS.md").write_text("## Testing instructions\n```bash\npytest tests/<module>  # one module\n```\n")
    book = CheckBook(tmp_path)
    reply, event = book.declare({"checks": [
        {"candidate": 9, "command": "pytest"},
        {"command": "pytest"},
        {"source": "pytest tests/<module>", "command": ""},
        {"source": "pytest tests/<module>", "command": "pytest tests/calc", "workdir": "../.."},
        {"source": "pytest tests/<module>", "command": "pytest tests/calc"},
    ], "dismissed": [{"candidate": 1, "reason": " "}]})
    assert event["errors"] == [
        "checks[0] ('pytest'): there is no candidate 9 (they are 1 to 1)",
        "checks[1] ('pytest'): name a candidate by its number, or quote the AGENTS.md text it comes from as source",
        "checks[2] (''): give the command",
        "checks[3] ('pytest tests/calc'): workdir '../..' is outside the workspace",
        "dismissed[0]: give the reason",
    ]
    assert [d["command"] for d in event["declared"]] == ["pytest tests/calc"]
    assert "Declared" in reply and "Not accepted" in reply and book.undecided() == []


def test_required_checks_with_placeholders_are_never_run_as_written(tmp_path):
    (tmp_path / "AGENTS.md").write_text("## Checks\n- `pytest <project_name>`\n- `make test`\n")
    assert [c.command for c in CheckBook(tmp_path).required] == ["make test"]


def test_nested_files_apply_below_the_task_directory_only(tmp_path):
    for d in ("", "a", "a/b", "c"):
        (tmp_path / d).mkdir(exist_ok=True)
        (tmp_path / d / "AGENTS.md").write_text(f"Run `make test-{d.replace('/', '-') or 'root'}`.\n")
    (tmp_path / "node_modules" / "x").mkdir(parents=True)
    (tmp_path / "node_modules" / "x" / "AGENTS.md").write_text("Run `make vendored`.\n")
    book = CheckBook(tmp_path, "a")
    assert [(c.command, c.directory) for c in book.candidates] == [
        ("make test-root", "."), ("make test-a", "a"), ("make test-a-b", "a/b")]


def test_a_quoted_source_is_found_whatever_its_markup_and_wrapping():
    files = [AgentsFile("AGENTS.md", ".", "# T\n\n- Run `make lint` before\n  submitting a **PR**.\n")]
    assert find_source(files, "Run make lint before submitting a PR")[1] == 3
    assert find_source(files, "Run `make test`") is None


@pytest.mark.parametrize(("template", "command", "fit"), [
    ("pytest tests/<module>", "python3 -m pytest tests/calc", True),
    ("pytest tests/<module>", "pytest tests/a tests/b", False),
    ("npm test", "npm run test 2>&1", True),
    ("pytest [options]", "pytest -k add", True),
    ("make test", "make test-all", False),
    ("cd web && npm test", "cd web && npm test", True),
])
def test_a_command_fits_its_template_with_placeholders_filled(template, command, fit):
    assert fits(template, command) is fit


def test_candidates_are_listed_once_in_file_order():
    files = [AgentsFile("AGENTS.md", ".", "Run `make test`.\n```\nmake test\nmake lint\n```\n")]
    assert [c.command for c in candidates(files)] == ["make test", "make lint"]


def test_an_indented_block_is_code_but_a_list_items_indented_paragraph_is_not():
    files = [AgentsFile("AGENTS.md", ".", "Run these:\n\n    make test\n    make lint\n\n- An item\n\n    make deploy\n")]
    assert [(c.command, c.line) for c in candidates(files)] == [("make test", 3), ("make lint", 4)]


def test_a_check_dismissed_after_its_declaration_is_no_longer_declared(tmp_path):
    (tmp_path / "AGENTS.md").write_text("Run `make test` and `make lint`.\n")
    book = CheckBook(tmp_path)
    book.declare({"checks": [{"candidate": 1, "command": "make test"}, {"candidate": 2, "command": "make lint"}]})
    book.declare({"dismissed": [{"candidate": 2, "reason": "no code changed"}]})
    assert [c.command for c in book.must_run()] == ["make test"] and book.undecided() == []


@pytest.mark.parametrize(("command", "flagged"), [
    ("npm ci", True), ("pnpm install", True), ("cargo insta accept", True), ("yarn test:watch", True),
    ("npx prettier --write .", True), ("make ci", False), ("ruff format --check .", False), ("pytest", False),
])
def test_commands_that_change_files_or_never_end_are_flagged(command, flagged):
    (cand,) = candidates([AgentsFile("AGENTS.md", ".", f"Run `{command}`.\n")])
    assert any("likely not a check" in n for n in cand.notes) is flagged


def test_a_code_lines_comment_goes_along_with_its_command():
    text = "```bash\npytest -q   # the unit tests\nmake lint  # only if you touched C code\n```\n"
    assert [c.notes for c in candidates([AgentsFile("AGENTS.md", ".", text)])] == [
        ("“the unit tests”",), ("condition: “only if you touched C code”",)]
