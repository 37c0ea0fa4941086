"""Every corpus case as its own test: the one right answer applied exactly, or a refusal."""

from __future__ import annotations

import pytest

from tests.patch_corpus import Case, load_cases, run_case

CASES = load_cases()


def test_corpus_is_large_and_varied() -> None:
    assert len(CASES) >= 200
    assert sum(c.expect is None for c in CASES) >= 50  # plenty of patches that must be refused


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case(case: Case) -> None:
    outcome = run_case(case)
    assert outcome.ok, f"[{case.source}] {case.name}: {outcome.detail}"
