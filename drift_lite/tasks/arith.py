"""Plain additions for real small chat models (the CPU recipe's SmolLM2-135M): a task they partly solve.

"What is 7+35?", gold "42", family `math`, checked by the release's exact match. No scratchpad: the worked
solution is `<think>7+35=42</think><answer>42</answer>`. The toy tasks' digit scratchpad is made for the toy
reference; SmolLM2-135M writes wrong digit sums in it and solves none (docs/cpu-model.md), while it solves
most one-digit sums and some two-digit ones in this plain form.

Every problem has a class by the digits of its operands: `1+1` (both 1-9), `1+2` (one 1-9, one 10-99, in
either order), `2+2` (both 10-99; sums up to 198). Default mix (`load`): a third of each class, in exact
proportions (largest remainder), then shuffled. Splits are disjoint by content: an unordered operand pair
belongs to `eval` when the toy tasks' fixed hash of it (`toy.split_of`, seed-independent) falls in one bucket
of five, so the two tasks agree on which two-digit pairs are held out. An id names the content
(`arith-7+35`), so the same id is the same problem under every seed; `7+35` and `35+7` are two problems of
one split. Worked examples for `env.shots` come from the train split and skip the problem's own pair.
"""

from __future__ import annotations

import random
from functools import cache
from itertools import zip_longest

from drift_lite.errors import UserError
from drift_lite.tasks.base import ExactChecker, Problem, draw_mix, unordered
from drift_lite.tasks.toy import split_of

CLASSES = ("1+1", "1+2", "2+2")
MIX = {"1+1": 1 / 3, "1+2": 1 / 3, "2+2": 1 / 3}  # SmolLM2-135M greedy, one turn: ~83% / 25% / 29% solved
# What `size=None` gives. The 81 `1+1` problems (56 train, 25 eval) bound the sizes: a third is `1+1`.
DEFAULT_SIZES = {"train": 150, "eval": 72}
ONE_DIGIT, TWO_DIGIT = range(1, 10), range(10, 100)
FIRST_SHOT = (27, 15)  # the worked example measured with SmolLM2 (docs/cpu-model.md); train split


def problem_class(a: int, b: int) -> str:
    """`1+1`, `1+2` or `2+2`: the operands' digit counts, smaller first."""
    return "+".join(sorted(str(len(str(x))) for x in (a, b)))


def make_problem(a: int, b: int) -> Problem:
    """The problem a + b (operands 1-99)."""
    meta = {"a": a, "b": b, "class": problem_class(a, b), "task": "arith"}
    return Problem(f"arith-{a}+{b}", f"What is {a}+{b}?", str(a + b), family="math", meta=meta)


def solution(problem: Problem) -> str:
    """The assistant content of a perfect solver: `<think>a+b=s</think><answer>s</answer>`."""
    a, b = problem.meta["a"], problem.meta["b"]
    return f"<think>{a}+{b}={a + b}</think><answer>{a + b}</answer>"


@cache
def pool(split: str, cls: str) -> tuple[tuple[int, int], ...]:
    """Every ordered operand pair of one split and class, in a fixed order (also `arith_choice`'s pool)."""
    operands = [*ONE_DIGIT, *TWO_DIGIT]
    return tuple(
        (a, b) for a in operands for b in operands if problem_class(a, b) == cls and split_of(a, b) == split
    )


def load(split: str, size: int | None, seed: int) -> list[Problem]:
    """`size` problems of the default mix from `split` ("train" | "eval"), deterministic in `seed`."""
    return draw_mix("arith", split, size, seed, DEFAULT_SIZES, MIX, pool, lambda c, a, b: make_problem(a, b))


@cache
def _shot_order() -> tuple[tuple[int, int], ...]:
    """Train-split pairs for worked examples, distinct as unordered pairs: `FIRST_SHOT`, then the classes in
    turn (2+2, 1+2, 1+1, 2+2, ...), each in a fixed shuffled order."""
    per_class = []
    for cls in reversed(CLASSES):
        pairs = sorted({unordered(a, b) for a, b in pool("train", cls)} - {unordered(*FIRST_SHOT)})
        random.Random(f"arith-shots-{cls}").shuffle(pairs)
        per_class.append(pairs)
    return (FIRST_SHOT, *(p for row in zip_longest(*per_class) for p in row if p is not None))


def shot_pairs(n: int, avoid: Problem | None = None, task: str = "arith") -> list[tuple[int, int]]:
    """The operand pairs of `n` distinct worked examples: the same for every problem, except that the pair of
    `avoid` (in either order) is skipped, so no problem is shown its own answer."""
    skip = unordered(avoid.meta["a"], avoid.meta["b"]) if avoid is not None else None
    pairs = [pair for pair in _shot_order() if unordered(*pair) != skip][:n]
    if len(pairs) < n:
        raise UserError(f"env.shots: the {task} train split has only {len(pairs)} examples, {n} asked")
    return pairs


def worked_examples(n: int, avoid: Problem | None = None) -> list[tuple[Problem, str]]:
    """`n` distinct worked examples (problem, perfect assistant content): `shot_pairs` as problems."""
    return [(problem, solution(problem)) for problem in (make_problem(a, b) for a, b in shot_pairs(n, avoid))]


def checker() -> ExactChecker:
    """The arith task's checker: the release's exact match (integers need nothing more)."""
    return ExactChecker()
