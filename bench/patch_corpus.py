"""Run the apply_patch corpus and print its figures beside their goals.

    python bench/patch_corpus.py [-v]

-v lists every case that missed its goal with the reason.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.patch_corpus import load_cases, run_case  # noqa: E402


def main(argv: list[str]) -> int:
    cases = load_cases()
    for case in cases[:20]:  # warm caches so the timing reflects steady state
        run_case(case)
    outcomes = [run_case(c) for c in cases]
    apply = [o for o in outcomes if o.case.expect is not None]
    refuse = [o for o in outcomes if o.case.expect is None]
    applied_ok = sum(o.ok for o in apply)
    refused = sum(not o.misapplied for o in refuse)
    refused_ok = sum(o.ok for o in refuse)
    misapplied = sum(o.misapplied for o in outcomes)
    times = sorted(o.seconds * 1000 for o in outcomes)
    p50 = statistics.median(times)
    p95 = times[int(0.95 * (len(times) - 1))]

    def pct(n: int, d: int) -> float:
        return 100.0 * n / d if d else 100.0

    rows = [
        ("cases with one right answer, applied correctly", f"{applied_ok}/{len(apply)} = {pct(applied_ok, len(apply)):.1f}%",
         "≥ 99%", pct(applied_ok, len(apply)) >= 99.0),
        ("cases that must be refused, refused", f"{refused}/{len(refuse)} = {pct(refused, len(refuse)):.1f}%",
         "100%", refused == len(refuse)),
        ("  … with the expected message", f"{refused_ok}/{len(refuse)} = {pct(refused_ok, len(refuse)):.1f}%",
         "100%", refused_ok == len(refuse)),
        ("misapplied (changes returned that are wrong)", str(misapplied), "0", misapplied == 0),
        ("per-case time p50", f"{p50:.3f} ms (p95 {p95:.3f} ms)", "-", True),
    ]
    print(f"apply_patch corpus: {len(cases)} cases ({len(apply)} with one right answer, {len(refuse)} to refuse)")
    width = max(len(r[0]) for r in rows)
    for label, value, goal, met in rows:
        mark = "" if goal == "-" else ("  ok" if met else "  MISSED")
        print(f"  {label:<{width}}  {value:<26} goal {goal:<6}{mark}")
    if "-v" in argv:
        for o in outcomes:
            if not o.ok:
                print(f"\n--- [{o.case.source}] {o.case.name}\n{o.detail}")
    return 0 if all(met for *_, met in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
