"""Per problem class and family of the toy tasks: when trajectories succeed, and how many turns drop the tags.

Reads rollout-schema JSONL files (a run's `rollouts.jsonl`, or `eval-reference/eval-toy.jsonl`) and prints,
per (class, family): the prompts, how many trajectories succeed at turn 1, 2, ... or never, how many prompts
have at least one success ("any"), and the turns without an answer (format errors). For a greedy evaluation
(one trajectory per prompt) the counts are problems; for rollouts (N per prompt), trajectories. Run:

    .venv/bin/python scripts/toy_classes.py runs/toy-drift/eval-reference/eval-toy.jsonl \\
        runs/toy-drift/eval-trained/eval-toy.jsonl runs/toy-drift/rollouts.jsonl
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict

from drift_lite import records
from drift_lite.tasks import toy


def toy_cell(prompt_id: str) -> tuple[str, str]:
    """(class, family) of a toy problem id."""
    family, a, b = toy.parse_id(prompt_id)
    return toy.problem_class(a, b), family


def summarize(path: str) -> None:
    """Print the per-class table of one file."""
    solved_at: dict[tuple, Counter] = defaultdict(Counter)
    any_success: dict[tuple, set] = defaultdict(set)
    prompts: dict[tuple, set] = defaultdict(set)
    untagged: Counter = Counter()
    turns = 0
    for row in records.iter_rows(path):
        cell = toy_cell(row["prompt_id"])
        prompts[cell].add(row["prompt_id"])
        solved_at[cell][row["t_star"] or "never"] += 1
        if row["t_star"] is not None:
            any_success[cell].add(row["prompt_id"])
        untagged[cell] += sum(d["actions"] == [] for d in row["reward_details"].values())
        turns = max(turns, len(row["turn_rewards"]))
    print(f"{path}")
    head = " ".join(f"t{k:<4d}" for k in range(1, turns + 1))
    print(f"  {'class':9s} {'family':7s} {'prompts':>7s}  solved at: {head} never  any  untagged turns")
    for cell in sorted(prompts, key=lambda c: (toy.CLASSES.index(c[0]), c[1])):
        counts = " ".join(f"{solved_at[cell][k]:<5d}" for k in range(1, turns + 1))
        print(
            f"  {cell[0]:9s} {cell[1]:7s} {len(prompts[cell]):7d}             {counts} "
            f"{solved_at[cell]['never']:<5d} {len(any_success[cell]):<4d} {untagged[cell]}"
        )
    total = sum(len(p) for p in prompts.values())
    print(f"  prompts with at least one success: {sum(len(s) for s in any_success.values())} of {total}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for name in sys.argv[1:]:
        summarize(name)
