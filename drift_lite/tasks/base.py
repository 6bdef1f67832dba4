"""What every task family yields: problems with a gold answer, and a checker for answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


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
