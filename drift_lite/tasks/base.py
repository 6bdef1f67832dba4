"""What every task family yields: problems with a gold answer, and a checker for answers."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from drift_lite.errors import UserError


@dataclass(frozen=True)
class Problem:
    """One question of a task: `id` becomes the rollout row's `prompt_id`."""

    id: str
    question: str
    gold: str
    family: str = "math"  # "math" | "choice" | "tools": picks the instruction and feedback
    meta: dict = field(default_factory=dict, compare=False)


class Checker(Protocol):
    """Decides whether an answer (the first `||` part, stripped) matches the gold answer."""

    name: str

    def normalize(self, answer: str) -> str:
        """The form stored in `answer_norms` and used for repetition counting."""
        ...

    def is_correct(self, answer: str, gold: str) -> bool:
        """True when `answer` solves the problem whose gold answer is `gold`."""
        ...


def exact_normalize(text: str) -> str:
    """The release's normalization: lowercase, all whitespace removed."""
    return "".join(text.lower().split())


class ExactChecker:
    """The release's checker: normalized exact string match."""

    name = "exact"

    def normalize(self, answer: str) -> str:
        return exact_normalize(answer)

    def is_correct(self, answer: str, gold: str) -> bool:
        return exact_normalize(answer) == exact_normalize(gold)


def exact_counts(size: int, shares: dict) -> dict:
    """Whole counts summing to `size` in proportion to `shares` (largest remainder; ties in key order)."""
    quota = {key: size * share for key, share in shares.items()}
    counts = {key: int(q) for key, q in quota.items()}
    for key in sorted(quota, key=lambda k: -(quota[k] - counts[k]))[: size - sum(counts.values())]:
        counts[key] += 1
    return counts


def unordered(a: int, b: int) -> tuple[int, int]:
    """An operand pair in a fixed order (smaller first): a + b and b + a are one pair."""
    return (a, b) if a <= b else (b, a)


def draw_mix(
    task: str,
    split: str,
    size: int | None,
    seed: int,
    default_sizes: dict[str, int],
    shares: dict,
    pool: Callable[..., Iterable[tuple[int, int]]],
    make: Callable[..., Problem],
) -> list[Problem]:
    """`size` problems of a synthetic task's mix from `split` ("train" | "eval"), deterministic in `seed`.

    `shares` maps each cell (a class, or a tuple such as (family, class)) to its share; the cell's counts are
    exact (`exact_counts`). `pool(split, *cell)` lists the cell's operand pairs in a fixed order, shuffled by
    (task, split, cell, seed) before the first ones are taken; `make(*cell, a, b)` builds a problem. The whole
    list is shuffled last.
    """
    if split not in default_sizes:
        raise UserError(f"{task} task: unknown split {split!r} (use 'train' or 'eval')")
    size = default_sizes[split] if size is None else size
    if size < 0:
        raise UserError(f"{task} task: size must be >= 0, got {size}")
    problems = []
    for cell, count in exact_counts(size, shares).items():
        parts = cell if isinstance(cell, tuple) else (cell,)
        pairs = list(pool(split, *parts))
        if count > len(pairs):
            what = "/".join(parts)
            raise UserError(f"{task} task: {split} has only {len(pairs)} {what} problems, {count} asked")
        random.Random(f"{task}-{split}-{'-'.join(parts)}-{seed}").shuffle(pairs)
        problems += [make(*parts, a, b) for a, b in pairs[:count]]
    random.Random(f"{task}-{split}-order-{seed}").shuffle(problems)
    return problems
