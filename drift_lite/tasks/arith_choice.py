"""Additions as four-option multiple choice: a task where a small chat model can correct itself.

"What is 7+35?" with options "A. 51", "B. 42", "C. 40", "D. 33", gold the letter of the sum, family `choice`
(the release's multiple-choice instruction, letters A-D), checked by the `letter` checker. The operands come
from the `arith` task's pools: the same classes, the same held-out pairs and the same mix (the draw itself is
this task's own).

Why this task: on plain additions SmolLM2-135M-Instruct never corrects itself after "Incorrect. Please think
again." (its later answers repeat the first, or answer another sum; docs/cpu-model.md). With four options a
later turn can always succeed: a policy that never repeats a wrong letter solves every problem within four
turns, so not repeating is itself progress, and DRIFT's return (earlier success, fewer repeated answers) has
something to teach.

The three distractors are near misses of the sum (±1, ±2, ±10, ±11, ±9; positive, distinct), and the gold
letter's position is uniform; both are drawn from a generator seeded by the ordered operand pair only, so a
problem is the same under every seed and on every machine. Ids name the content (`arith_choice-7+35`).
"""

from __future__ import annotations

import random

from drift_lite.tasks import arith
from drift_lite.tasks.base import Problem, draw_mix
from drift_lite.tasks.choice import LETTERS, LetterChecker, with_options

TASK = "arith_choice"
N_OPTIONS = 4
NEAR_MISSES = (1, -1, 2, -2, 10, -10, 11, -11, 9, -9)


def options_for(a: int, b: int) -> tuple[list[int], int]:
    """The four option values of a + b and the index of the sum among them (fixed by the pair alone)."""
    total = a + b
    rng = random.Random(f"{TASK}-{a}+{b}")
    misses = [total + d for d in NEAR_MISSES if total + d > 0]
    values = [total, *rng.sample(misses, N_OPTIONS - 1)]
    rng.shuffle(values)
    return values, values.index(total)


def make_problem(a: int, b: int) -> Problem:
    """The problem a + b as four-option multiple choice (operands 1-99)."""
    values, gold = options_for(a, b)
    question = with_options(f"What is {a}+{b}?", [str(v) for v in values])
    meta = {
        "a": a,
        "b": b,
        "class": arith.problem_class(a, b),
        "task": TASK,
        "letters": "A-D",
        "options": values,
    }
    return Problem(f"{TASK}-{a}+{b}", question, LETTERS[gold], family="choice", meta=meta)


def solution(problem: Problem) -> str:
    """The assistant content of a perfect solver: `<think>a+b=s</think><answer>L</answer>`."""
    a, b = problem.meta["a"], problem.meta["b"]
    return f"<think>{a}+{b}={a + b}</think><answer>{problem.gold}</answer>"


def load(split: str, size: int | None, seed: int) -> list[Problem]:
    """`size` problems of the `arith` mix and split, as multiple choice, deterministic in `seed`."""
    make = lambda c, a, b: make_problem(a, b)  # noqa: E731
    return draw_mix(TASK, split, size, seed, arith.DEFAULT_SIZES, arith.MIX, arith.pool, make)


def worked_examples(n: int, avoid: Problem | None = None) -> list[tuple[Problem, str]]:
    """`n` worked examples from the train split (the `arith` task's order), skipping `avoid`'s pair."""
    pairs = arith.shot_pairs(n, avoid, TASK)
    return [(problem, solution(problem)) for problem in (make_problem(a, b) for a, b in pairs)]


def checker() -> LetterChecker:
    """The task's checker: the first standalone letter must be the gold letter."""
    return LetterChecker()
