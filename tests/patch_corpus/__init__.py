"""The apply_patch corpus: patches written the way models really write them, with the one right outcome.

Cases live in the `*.toml` files beside this module, grouped by theme. Each is a `[[case]]`
table with these keys:

    name        unique across the corpus; the test id
    why         optional: what the case is about
    patch       the apply_patch input, verbatim
    patch_crlf  optional: send the patch with CRLF line endings
    crlf        optional: paths whose text (before and after) uses CRLF
    files       sub-table: the workspace before, path = text
    expect      sub-table: every file the patch creates or changes, with its exact text after
    deleted     paths the patch removes
    summary     optional: the exact success summary
    refused     true, or text the error message must contain: the patch must be refused

A refused case has no `expect`/`deleted`. Every file not named in `expect` or `deleted` must
come out untouched. Literal strings (three single quotes) keep text verbatim; basic strings
(three double quotes) are used where a case needs visible escapes: tabs, NBSP, CRLF, NUL.
"""

from __future__ import annotations

import time
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path

from offload.server.agent.patch import PatchError, apply_patch

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Case:
    name: str
    source: str
    patch: str
    files: dict[str, bytes]
    expect: dict[str, bytes] | None  # the whole workspace after; None when it must be refused
    refused: str | None  # substring the error must hold ("" for any refusal)
    summary: str | None = None


@dataclass
class Outcome:
    """How one case went: `ok` is the verdict; `refused` means a PatchError; `misapplied` means
    changes came back that are wrong (for a case that must be refused, any changes at all)."""

    case: Case
    ok: bool
    refused: bool
    misapplied: bool
    seconds: float
    detail: str = ""


def _bytes(text: str, crlf: bool) -> bytes:
    return (text.replace("\n", "\r\n") if crlf else text).encode("utf-8", "surrogateescape")


def load_cases() -> list[Case]:
    cases: list[Case] = []
    for toml in sorted(HERE.glob("*.toml")):
        for raw in tomllib.loads(toml.read_text(encoding="utf-8"))["case"]:
            crlf = set(raw.get("crlf", ()))
            files = {p: _bytes(t, p in crlf) for p, t in raw.get("files", {}).items()}
            patch = raw["patch"].replace("\n", "\r\n") if raw.get("patch_crlf") else raw["patch"]
            refused = raw.get("refused")
            if refused is not None:
                if "expect" in raw or "deleted" in raw:
                    raise ValueError(f"{toml.name}: {raw['name']}: a refused case has no expect/deleted")
                expect = None
                refused = "" if refused is True else refused
            else:
                expect = dict(files)
                for p in raw.get("deleted", ()):
                    del expect[p]
                expect.update({p: _bytes(t, p in crlf) for p, t in raw.get("expect", {}).items()})
            cases.append(Case(raw["name"], toml.stem, patch, files, expect, refused, raw.get("summary")))
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate case names: {sorted({n for n in names if names.count(n) > 1})}")
    return cases


def run_case(case: Case) -> Outcome:
    t0 = time.perf_counter()
    try:
        changes, summary = apply_patch(case.patch, case.files.get)
    except PatchError as e:
        elapsed = time.perf_counter() - t0
        if case.expect is not None:
            return Outcome(case, False, True, False, elapsed, f"refused a patch with one right answer:\n{e}")
        if case.refused and case.refused not in str(e):
            return Outcome(case, False, True, False, elapsed, f"refused, but the message lacks {case.refused!r}:\n{e}")
        return Outcome(case, True, True, False, elapsed, str(e))
    except Exception:
        return Outcome(case, False, False, False, time.perf_counter() - t0, f"crashed:\n{traceback.format_exc()}")
    elapsed = time.perf_counter() - t0
    after = dict(case.files)
    for c in changes:
        if c.kind == "delete" or c.new_path:
            after.pop(c.path, None)
        if c.content is not None:
            after[c.new_path or c.path] = c.content
    if case.expect is None:
        return Outcome(case, False, False, True, elapsed, f"applied a patch that must be refused:\n{summary}")
    if after != case.expect:
        diffs = [
            f"{p}: expected {case.expect.get(p)!r}\n{' ' * len(p)}  got      {after.get(p)!r}"
            for p in sorted(set(after) | set(case.expect))
            if after.get(p) != case.expect.get(p)
        ]
        return Outcome(case, False, False, True, elapsed, "wrong result:\n" + "\n".join(diffs))
    if case.summary is not None and summary != case.summary:
        return Outcome(case, False, False, False, elapsed, f"summary {summary!r} != {case.summary!r}")
    return Outcome(case, True, False, False, elapsed, summary)
