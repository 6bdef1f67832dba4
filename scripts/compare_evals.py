"""Paired comparison of two evaluations of the same problems (e.g. reference vs trained), from trajectories.

Prints, per turn budget k in (1, max turns): solved by each, problems gained and lost, the difference with its
paired standard error; and, for the synthetic addition tasks (`toy` add, `arith`), how many later turns (after
the first) restate the problem's own sum in their thinking. Run:

    .venv/bin/python scripts/compare_evals.py runs/cpu-smollm2-arith/eval-reference/eval-arith.jsonl \\
        runs/cpu-smollm2-arith/eval-trained/eval-arith.jsonl
"""

from __future__ import annotations

import math
import re
import sys

from drift_lite import records

SUM = re.compile(r"What is (\d+)\+(\d+)\?")


def _solved(row: dict, k: int) -> int:
    return int(row["t_star"] is not None and row["t_star"] <= k)


def _later_turns(row: dict) -> tuple[int, int]:
    """(later turns, later turns whose thinking restates a+b or b+a) of one trajectory of an addition task."""
    asked = [SUM.search(m["content"]) for m in row["messages"] if m["role"] == "user"]
    asked = [m for m in asked if m]
    if not asked:
        return 0, 0
    a, b = asked[-1].groups()  # worked examples come first: the last problem asked is the episode's own
    own = (f"{a}+{b}", f"{b}+{a}")
    played = row["t_star"] or len(row["turn_rewards"])  # the episode's own turns are the last ones
    later = [m["content"] for m in row["messages"] if m["role"] == "assistant"][-played:][1:]
    return len(later), sum(any(s in turn.split("</think>")[0] for s in own) for turn in later)


def main(path_a: str, path_b: str) -> None:
    """Print the paired comparison of evaluation A (e.g. the reference) and B (e.g. trained)."""
    a = {r["prompt_id"]: r for r in records.iter_rows(path_a)}
    b = {r["prompt_id"]: r for r in records.iter_rows(path_b)}
    ids = sorted(set(a) & set(b))
    turns = max(len(r["turn_rewards"]) for r in a.values())
    print(f"{len(ids)} problems in both")
    for k in sorted({1, turns}):
        d = [_solved(b[i], k) - _solved(a[i], k) for i in ids]
        mean = sum(d) / len(d)
        sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1)) if len(d) > 1 else 0.0
        print(
            f"multi@{k}: A {sum(_solved(a[i], k) for i in ids)}, B {sum(_solved(b[i], k) for i in ids)}, "
            f"gained {d.count(1)}, lost {d.count(-1)}, "
            f"B-A {mean:+.3f} ± {sd / math.sqrt(len(d)):.3f} (paired SE)"
        )
    for name, rows in (("A", a), ("B", b)):
        later = [_later_turns(rows[i]) for i in ids]
        total, own = sum(x for x, _ in later), sum(y for _, y in later)
        if total:
            print(f"{name}: {total - own} of {total} later turns do not restate the problem's own sum")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
