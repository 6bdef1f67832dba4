"""Multi-turn evaluation metrics, computed from trajectories in the rollout-row schema.

One row is one episode (a problem × a repeat). A row's *horizon* is the last turn it executed: `t_star` when
it was solved, else its number of turn keys (an unsolved episode runs to the end). With K turns (the
`max_turns` argument, by default the largest number of keys in `turn_rewards` over the rows):

- ``multi@k`` (k = 1..K): share of rows first solved at a turn ≤ k (``t_star <= k``).
- ``per_turn[t-1]``: rows solved exactly at turn t / rows still active at turn t (not solved before t and
  having a turn t); ``None`` when no row is active at t.
- ``correction_rate``: among rows not solved at turn 1, the share solved at a later turn (``None`` if every
  row was solved at turn 1).
- ``repeat_rate``: share of answers after an episode's first answer that repeat an earlier normalized answer
  of the same episode, pooled over rows: Σ(len(a) − len(set(a))) / Σ max(len(a) − 1, 0) over the
  ``answer_norms`` lists (``None`` when no episode gave two answers).
- ``format_error_rate``: share of executed turns that gave no answer (unparsable or empty), pooled:
  Σ(horizon − len(answer_norms)) / Σ horizon.
- ``mean_turns``: mean horizon (executed turns per episode).

All rates are exact ratios of integer counts, so recomputing them from the same rows gives identical floats.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable

from drift_lite.errors import UserError

PathLike = str | os.PathLike[str]

# Keys after the multi@k block, in the order the eval JSON lists them.
TAIL_KEYS = ("per_turn", "correction_rate", "repeat_rate", "format_error_rate", "mean_turns")


def _ratio(num: int, den: int) -> float | None:
    return num / den if den else None


class MetricTally:
    """Running integer counts over rows; `result` turns them into the eval JSON. Holds no row data."""

    def __init__(self) -> None:
        self.n = 0
        self.solved_at: Counter[int] = Counter()  # t_star -> rows
        self.horizon_at: Counter[int] = Counter()  # last executed turn -> rows
        self.max_row_turns = 0
        self.missed_first = 0  # rows not solved at turn 1
        self.corrected = 0  # ... of which solved later
        self.repeats = 0
        self.repeat_chances = 0
        self.turns = 0
        self.no_answer_turns = 0

    def add(self, row: dict, where: str = "row") -> None:
        """Count one trajectory row; UserError naming `where` if it lacks a field or is inconsistent."""
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected a JSON object")
        turn_keys = row.get("turn_rewards", row.get("verifier"))
        if not isinstance(turn_keys, dict) or not turn_keys:
            raise UserError(f"{where}: field 'turn_rewards': missing or empty")
        if "t_star" not in row:
            raise UserError(f"{where}: field 't_star': missing")
        answers = row.get("answer_norms")
        if not isinstance(answers, list):
            raise UserError(f"{where}: field 'answer_norms': missing or not a list")
        n_turns = len(turn_keys)
        t_star = row["t_star"]
        if t_star is not None and (
            isinstance(t_star, bool) or not isinstance(t_star, int) or not 1 <= t_star <= n_turns
        ):
            raise UserError(
                f"{where}: field 't_star': expected null or a turn in 1..{n_turns}, got {t_star!r}"
            )
        horizon = n_turns if t_star is None else t_star
        if len(answers) > horizon:
            raise UserError(f"{where}: {len(answers)} answers in {horizon} executed turns")
        self.n += 1
        self.max_row_turns = max(self.max_row_turns, n_turns)
        self.horizon_at[horizon] += 1
        if t_star is not None:
            self.solved_at[t_star] += 1
        if t_star != 1:
            self.missed_first += 1
            if t_star is not None:
                self.corrected += 1
        # Answers are hashable strings in the schema; repr() keeps odd rows (numbers, lists) countable.
        distinct = len({a if isinstance(a, str) else repr(a) for a in answers})
        self.repeats += len(answers) - distinct
        self.repeat_chances += max(len(answers) - 1, 0)
        self.turns += horizon
        self.no_answer_turns += horizon - len(answers)

    def result(self, max_turns: int | None = None) -> dict:
        """The eval JSON for the rows counted so far, over `max_turns` turns (default: the rows' own)."""
        if self.n == 0:
            raise UserError("no trajectory rows to compute metrics from")
        k_max = self.max_row_turns if max_turns is None else max_turns
        if isinstance(k_max, bool) or not isinstance(k_max, int) or k_max < 1:
            raise UserError(f"max_turns must be a positive integer, got {max_turns!r}")
        if self.max_row_turns > k_max:
            raise UserError(f"rows have up to {self.max_row_turns} turns but max_turns is {k_max}")
        out: dict = {"n": self.n}
        solved = 0
        for k in range(1, k_max + 1):
            solved += self.solved_at[k]
            out[f"multi@{k}"] = solved / self.n
        per_turn = []
        active = self.n  # rows whose horizon reaches t
        for t in range(1, k_max + 1):
            per_turn.append(_ratio(self.solved_at[t], active))
            active -= self.horizon_at[t]
        out["per_turn"] = per_turn
        out["correction_rate"] = _ratio(self.corrected, self.missed_first)
        out["repeat_rate"] = _ratio(self.repeats, self.repeat_chances)
        out["format_error_rate"] = _ratio(self.no_answer_turns, self.turns)
        out["mean_turns"] = self.turns / self.n
        return out


def _where(index: int, row: object) -> str:
    pid = row.get("prompt_id") if isinstance(row, dict) else None
    return f"row {index}" + (f" (prompt_id {pid!r})" if pid is not None else "")


def compute_metrics(rows: Iterable[dict], max_turns: int | None = None) -> dict:
    """The eval JSON (`n`, `multi@1..K`, `per_turn`, rates, `mean_turns`) of a stream of trajectory rows."""
    tally = MetricTally()
    for i, row in enumerate(rows, 1):
        tally.add(row, _where(i, row))
    return tally.result(max_turns)


def metrics_by(
    rows: Iterable[dict], key_fn: Callable[[dict], str], max_turns: int | None = None
) -> dict[str, dict]:
    """compute_metrics per group (`key_fn(row)`), sorted by key; all groups share one turn horizon K."""
    tallies: dict[str, MetricTally] = {}
    for i, row in enumerate(rows, 1):
        key = str(key_fn(row))
        tallies.setdefault(key, MetricTally()).add(row, _where(i, row))
    if not tallies:
        raise UserError("no trajectory rows to compute metrics from")
    # One K for every group, so their tables line up even if a group's rows are shorter.
    k_max = max_turns if max_turns is not None else max(t.max_row_turns for t in tallies.values())
    return {key: tallies[key].result(k_max) for key in sorted(tallies)}


def prompt_family(row: dict) -> str:
    """The prompt_id without its trailing index (`carry-12` → `carry`, `sample_3` → `sample`): a key_fn."""
    pid = str(row.get("prompt_id", ""))
    for sep in ("-", "_", ":", "/"):
        head, found, tail = pid.rpartition(sep)
        if found and head and tail.isdigit():
            return head
    return pid


def _same(a: object, b: object) -> bool:
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def recompute_matches(json_path: PathLike, jsonl_path: PathLike) -> list[str]:
    """Keys of an eval-<set>.json whose values differ from compute_metrics on its eval-<set>.jsonl."""
    from drift_lite import records  # the kit's strict JSONL reader (names file:line on bad rows)

    try:
        with open(json_path, encoding="utf-8") as handle:
            stored = json.load(handle)
    except FileNotFoundError:
        raise UserError(f"{os.fspath(json_path)}: no such file") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"{os.fspath(json_path)}: cannot read eval JSON ({exc})") from None
    if not isinstance(stored, dict):
        raise UserError(f"{os.fspath(json_path)}: expected a JSON object")
    # Recompute over the horizon the stored file used, so a 3-turn evaluation is compared as one.
    k_stored = sum(1 for key in stored if key.startswith("multi@")) or None
    fresh = compute_metrics(records.iter_rows(jsonl_path), k_stored)
    keys = list(fresh) + [k for k in stored if k.startswith("multi@") and k not in fresh]
    return [k for k in keys if k not in stored or k not in fresh or not _same(stored[k], fresh[k])]
