"""Run the apply_patch corpus and print its figures beside their goals.

    python bench/patch_corpus.py [-v]

-v also lists every case that missed, with the reason. Exits non-zero when a goal is missed.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.patch_corpus import load_cases, run_case  # noqa: E402


def share(n: int, d: int) -> str:
    return f"{n}/{d} = {100.0 * n / d if d else 100.0:.1f}%"


def main(argv: list[str]) -> int:
    cases = load_cases()
    for case in cases[:20]:  # warm up, so the timing reflects steady state
        run_case(case)
    outcomes = [run_case(c) for c in cases]
    one_answer = [o for o in outcomes if o.case.expect is not None]
    must_refuse = [o for o in outcomes if o.case.expect is None]
    applied_ok = sum(o.ok for o in one_answer)
    refused = sum(o.refused for o in must_refuse)
    refused_ok = sum(o.ok for o in must_refuse)
    misapplied = sum(o.misapplied for o in outcomes)
    crashed = sum(o.detail.startswith("crashed") for o in outcomes)
    times = sorted(o.seconds * 1000 for o in outcomes)
    p95 = times[int(0.95 * (len(times) - 1))]

    rows = [
        ("one right answer: applied correctly", share(applied_ok, len(one_answer)), "≥ 99%",
         applied_ok >= 0.99 * len(one_answer)),
        ("must be refused: refused", share(refused, len(must_refuse)), "100%", refused == len(must_refuse)),
        ("  … with the expected message", share(refused_ok, len(must_refuse)), "100%", refused_ok == len(must_refuse)),
        ("misapplied (wrong changes returned)", str(misapplied), "0", misapplied == 0),
        ("crashed (not a PatchError)", str(crashed), "0", crashed == 0),
        ("per-case time p50", f"{statistics.median(times):.3f} ms (p95 {p95:.3f} ms)", "", True),
    ]
    print(f"apply_patch corpus: {len(cases)} cases ({len(one_answer)} with one right answer, {len(must_refuse)} to refuse)")
    width = max(len(label) for label, *_ in rows)
    for label, value, goal, met in rows:
        verdict = ("ok" if met else "MISSED") if goal else ""
        print(f"  {label:<{width}}  {value:<28} {'goal ' + goal if goal else '':<11} {verdict}".rstrip())
    if "-v" in argv:
        for o in outcomes:
            if not o.ok:
                print(f"\n--- [{o.case.source}] {o.case.name}\n{o.detail}")
    return 0 if all(met for *_, met in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
