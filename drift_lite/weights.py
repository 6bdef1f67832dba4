"""Returns and per-group self-normalized weights (DRIFT), baseline schemes, and diagnostics.

Return of a trajectory (DESIGN.md "Return"):
    R = sum_k gamma^(k-1) * turn_rewards["tk"] + format_penalty - repeat_coef * (1 - unique / answers)
where `unique` counts distinct non-empty `answer_norms`, `answers` counts all of them (no penalty without
answers) and turns are summed in numeric order of k.

Weights per `prompt_id` group, by scheme:
- ``drift``: w_i = exp(R_i/beta - m) / (mean_j exp(R_j/beta - m) + 1e-12), m = max_j R_j/beta.
- ``uniform``: 1 everywhere (plain SFT).
- ``correct_only``: 1 if the trajectory ever succeeded (t_star not null or some turn reward > 0), else 0
  (rejection-sampling SFT). Plain 1/0: no rescaling, so the mean weight of a dataset is its success share.
A group whose returns are all equal (a group of one included) gets weight exactly 1 under ``drift``; with
`drop_equal_groups` such groups are left out of the output instead, whatever the scheme. Weight controls:
`drop_failed_groups` leaves out groups in which no trajectory succeeded (under ``drift`` they train their
wrong answers at mean weight 1); `max_weight` clips weights after normalizing, without renormalizing
(iw-SFT clips sequence weights to [0, 16]). The diagnostics give, per group, the effective sample size
(sum w)^2 / sum w^2 and the weight share on never-solved trajectories.

All settings are one object, the recipe's `weights` section (`drift_lite.recipe.WeightsConfig`), applied here
only: the rollout does not depend on them, so changing one reruns weight → train → eval, never the rollout.

`weight_file` streams: pass 1 validates every row and keeps only (group index, return, success flag) per row;
pass 2 re-reads the input and copies each kept line verbatim with `, "return": R, "weight": w` spliced before
its closing brace (floats as repr, so they round-trip exactly). A row that already has `return` / `weight`
keys (a re-weighted file) is re-serialized without them instead, so the new values are appended once.
Diagnostics go to `<OUT>.diagnostics.json` (e.g. `weighted.jsonl.diagnostics.json`), written just before OUT's
temp file is renamed into place: both change, or neither. Blank input lines are not copied.
"""

from __future__ import annotations

import math
import os
import stat
import sys
from array import array
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, fields, replace

from tqdm import tqdm

from drift_lite.errors import UserError
from drift_lite.files import PathLike, atomic_writer, check_output_path, write_json_atomic
from drift_lite.recipe import WEIGHT_SCHEMES, WeightsConfig, check_weights
from drift_lite.records import (
    dumps_row,
    iter_raw_lines,
    open_for_reading,
    parse_json_line,
    turn_index,
    validate_row,
)
from drift_lite.weight_diagnostics import Stats, diagnostics, format_diagnostics  # noqa: F401 (re-exported)

SCHEMES = WEIGHT_SCHEMES
NORMALIZER_EPS = 1e-12  # the release's guard in the denominator of the self-normalized weights
_ADDED_KEYS = ("return", "weight")
_PROGRESS_EVERY = 4096  # rows between progress-bar updates: tqdm per row would cost more than the parsing


def settings_of(settings: WeightsConfig | None = None, **overrides: object) -> WeightsConfig:
    """`settings` (the recipe's `weights` section; defaults when None) with `overrides`, checked."""
    base = settings if settings is not None else WeightsConfig()
    unknown = sorted(set(overrides) - {f.name for f in fields(WeightsConfig)})
    if unknown:
        raise UserError(f"unknown weight setting(s): {', '.join(unknown)}")
    return check_weights(replace(base, **overrides) if overrides else base)


# ---------------------------------------------------------------------------------------------------------
# The formulas (one copy, shared by the file and in-memory paths)


def _return_of(row: dict, gamma: float, repeat_coef: float) -> float:
    turns = sorted([(turn_index(key), value) for key, value in row["turn_rewards"].items()])
    total = 0.0
    for k, reward in turns:
        total += gamma ** (k - 1) * reward
    total += row.get("format_penalty", 0.0)
    norms = row.get("answer_norms")
    if norms:
        unique = len({answer for answer in norms if answer})
        total -= repeat_coef * (1.0 - unique / len(norms))
    return total


def trajectory_return(row: dict, settings: WeightsConfig | None = None, **overrides: object) -> float:
    """The discounted return of one rollout row (validated first), with format and repetition penalties.

    >>> trajectory_return(row, gamma=0.9)  # or trajectory_return(row, recipe.weights)
    """
    s = settings_of(settings, **overrides)
    return _return_of(validate_row(row, "row"), s.gamma, s.repeat_coef)


def ever_succeeded(row: dict) -> bool:
    """True when the trajectory solved its problem at some turn (t_star set or a positive turn reward)."""
    return row.get("t_star") is not None or any(reward > 0 for reward in row["turn_rewards"].values())


def _drift_weights(returns: list[float], beta: float) -> list[float]:
    if max(returns) == min(returns):
        return [1.0] * len(returns)
    scaled = [value / beta for value in returns]
    top = max(scaled)
    if not math.isfinite(top) or not math.isfinite(min(scaled)):
        raise UserError(f"beta={beta!r} is too small for returns as large as {max(map(abs, returns))!r}")
    exps = [math.exp(value - top) for value in scaled]
    denominator = math.fsum(exps) / len(exps) + NORMALIZER_EPS
    return [value / denominator for value in exps]


def group_weights(returns: list[float], beta: float) -> list[float]:
    """DRIFT self-normalized weights of one group (mean 1; all ones when the returns are all equal)."""
    settings_of(beta=beta)
    if not returns:
        return []
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in returns):
        raise UserError("returns must be finite numbers")
    return _drift_weights([float(value) for value in returns], beta)


def _scheme_weights(scheme: str, returns: list[float], solved: list[int], beta: float) -> list[float]:
    if scheme == "drift":
        return _drift_weights(returns, beta)
    if scheme == "uniform":
        return [1.0] * len(returns)
    return [1.0 if flag else 0.0 for flag in solved]


# ---------------------------------------------------------------------------------------------------------
# Pass 1 state and the per-group plan


class _Collector:
    """What pass 1 keeps per row: its group index, its return and whether it ever succeeded. No row text."""

    def __init__(self, settings: WeightsConfig) -> None:
        self.settings = settings
        self.group_of: dict[str, int] = {}
        self.groups = array("i")
        self.returns = array("d")
        self.solved = bytearray()

    def add(self, row: dict, where: str) -> None:
        """Record one validated row."""
        value = _return_of(row, self.settings.gamma, self.settings.repeat_coef)
        if not math.isfinite(value):
            raise UserError(f"{where}: return is not finite (turn rewards or penalties too large)")
        group = self.group_of.setdefault(row["prompt_id"], len(self.group_of))
        self.groups.append(group)
        self.returns.append(value)
        self.solved.append(ever_succeeded(row))

    def __len__(self) -> int:
        return len(self.returns)


@dataclass
class _Plan:
    weights: array
    keep: bytearray
    diagnostics: dict


def _rows_by_group(groups: array, n_groups: int) -> tuple[array, list[int]]:
    """Row indices sorted by group (stable counting sort) and each group's start offset (plus the end)."""
    counts = [0] * n_groups
    for group in groups:
        counts[group] += 1
    starts = [0] * (n_groups + 1)
    for group in range(n_groups):
        starts[group + 1] = starts[group] + counts[group]
    order = array("i", bytes(4 * len(groups)))
    cursor = starts[:-1]
    for index, group in enumerate(groups):
        order[cursor[group]] = index
        cursor[group] += 1
    return order, starts


def _plan(collector: _Collector) -> _Plan:
    settings = collector.settings
    n_rows, n_groups = len(collector), len(collector.group_of)
    order, starts = _rows_by_group(collector.groups, n_groups)
    ids = list(collector.group_of)  # insertion order: group index -> prompt_id
    weights = array("d", bytes(8 * n_rows))
    keep = bytearray(b"\x01") * n_rows
    stats = Stats()
    for group in range(n_groups):
        rows = order[starts[group] : starts[group + 1]]
        returns = [collector.returns[i] for i in rows]
        solved = [collector.solved[i] for i in rows]
        stats.sizes.append(len(rows))
        equal, failed = max(returns) == min(returns), not any(solved)
        stats.equal_groups += equal
        stats.equal_all_failed += equal and failed
        stats.failed_groups += failed
        group_w = _scheme_weights(settings.scheme, returns, solved, settings.beta)
        if settings.max_weight is not None:
            stats.rows_clipped += sum(w > settings.max_weight for w in group_w)
            group_w = [min(w, settings.max_weight) for w in group_w]
        dropped = None
        if settings.drop_failed_groups and failed:
            dropped = "all failed"
        elif settings.drop_equal_groups and equal:
            dropped = "equal returns"
        stats.add_group(ids[group], group_w, solved, dropped)
        if dropped:
            stats.rows_dropped += len(rows)
            stats.groups_dropped += 1
            for i in rows:
                keep[i] = 0
            continue
        for i, w in zip(rows, group_w):
            weights[i] = w
    return _Plan(weights, keep, diagnostics(stats, n_rows, settings))


# ---------------------------------------------------------------------------------------------------------
# In-memory API


def _with_weight(row: dict, value: float, weight: float) -> dict:
    out = {key: item for key, item in row.items() if key not in _ADDED_KEYS}
    out["return"] = value
    out["weight"] = weight
    return out


def weight_rows(
    rows: Iterable[dict], settings: WeightsConfig | None = None, **overrides: object
) -> list[dict]:
    """Validated copies of `rows` plus `return` and `weight`, in input order (dropped groups left out).

    >>> weight_rows(rows, beta=0.3)  # or weight_rows(rows, recipe.weights)
    """
    settings = settings_of(settings, **overrides)
    rows = list(rows)
    collector = _Collector(settings)
    for index, row in enumerate(rows):
        where = f"rows[{index}]"
        collector.add(validate_row(row, where), where)
    if not rows:
        raise UserError("no rows to weight")
    plan = _plan(collector)
    return [
        _with_weight(row, collector.returns[i], plan.weights[i]) for i, row in enumerate(rows) if plan.keep[i]
    ]


# ---------------------------------------------------------------------------------------------------------
# Streaming file API


def diagnostics_path(out_path: PathLike) -> str:
    """Where weight_file writes its diagnostics: `<OUT>.diagnostics.json`."""
    return os.fspath(out_path) + ".diagnostics.json"


def _progress(total: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
    )


def _check_paths(in_path: PathLike, out_path: PathLike) -> None:
    check_output_path(out_path)
    if os.path.exists(out_path) and os.path.exists(in_path) and os.path.samefile(in_path, out_path):
        raise UserError(f"{os.fspath(out_path)}: output is the input file; choose another output path")


def _read_pass(in_path: PathLike, collector: _Collector, show_progress: bool) -> tuple[set[int], tuple]:
    """Pass 1: validate every row and collect returns; the rows that need re-serializing; a file signature."""
    name = os.fspath(in_path)
    reserialize: set[int] = set()
    with open_for_reading(in_path) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UserError(f"{name}: not a regular file (it is read twice)")
        with _progress(info.st_size, "weight: read", show_progress) as bar:
            done = 0
            for lineno, raw in iter_raw_lines(handle):
                where = f"{name}:{lineno}"
                row = validate_row(parse_json_line(raw, where), where)
                if "return" in row or "weight" in row:
                    reserialize.add(len(collector))
                collector.add(row, where)
                done += len(raw)
                if len(collector) % _PROGRESS_EVERY == 0:
                    bar.update(done)
                    done = 0
            bar.update(done)
    if not len(collector):
        raise UserError(f"{name}: no rows")
    return reserialize, (info.st_size, info.st_mtime_ns, info.st_ino)


def _write_pass(
    in_path: PathLike,
    out_path: PathLike,
    collector: _Collector,
    plan: _Plan,
    reserialize: set[int],
    signature: tuple,
    show_progress: bool,
    before_rename: Callable[[], None] = lambda: None,
) -> None:
    """Pass 2: copy each kept line with return and weight spliced in, through a temp file and a rename.

    `before_rename` runs once the temp file is complete, before it replaces `out_path`: if it raises, the
    output is left untouched (it writes the diagnostics, so that OUT and its diagnostics change together).
    """
    name = os.fspath(in_path)
    changed = f"{name}: changed while it was being weighted; run again"
    returns, weights, keep = collector.returns, plan.weights, plan.keep
    with open_for_reading(in_path) as handle, atomic_writer(out_path) as out:
        info = os.fstat(handle.fileno())
        if (info.st_size, info.st_mtime_ns, info.st_ino) != signature:
            raise UserError(changed)
        with _progress(info.st_size, "weight: write", show_progress) as bar:
            index = done = 0
            for _lineno, raw in iter_raw_lines(handle):
                if index >= len(keep):
                    raise UserError(changed)
                if keep[index]:
                    suffix = f', "return": {returns[index]!r}, "weight": {weights[index]!r}}}\n'
                    if index in reserialize:
                        row = validate_row(parse_json_line(raw, name), name)
                        out.write(dumps_row(_with_weight(row, returns[index], weights[index])).encode())
                    else:
                        body = raw.rstrip()
                        if not body.endswith(b"}"):
                            raise UserError(changed)
                        out.write(memoryview(body)[:-1])
                        out.write(suffix.encode())
                index += 1
                done += len(raw)
                if index % _PROGRESS_EVERY == 0:
                    bar.update(done)
                    done = 0
            bar.update(done)
        if index != len(keep):
            raise UserError(changed)
        before_rename()


def weight_file(
    in_path: PathLike,
    out_path: PathLike,
    settings: WeightsConfig | None = None,
    *,
    show_progress: bool = True,
    **overrides: object,
) -> dict:
    """Stream a rollout JSONL into a weighted JSONL (two passes, atomic); write and return the diagnostics.

    >>> weight_file("rollouts.jsonl", "weighted.jsonl", recipe.weights)  # or: beta=0.3, max_weight=16
    """
    settings = settings_of(settings, **overrides)
    _check_paths(in_path, out_path)
    collector = _Collector(settings)
    reserialize, signature = _read_pass(in_path, collector, show_progress)
    plan = _plan(collector)
    if not any(plan.keep):
        name = os.fspath(in_path)
        raise UserError(
            f"{name}: every group was dropped (drop_equal_groups / drop_failed_groups left no rows)"
        )
    diagnostics = {"input": os.fspath(in_path), "output": os.fspath(out_path), **plan.diagnostics}
    diag_path = diagnostics_path(out_path)
    check_output_path(diag_path)
    # The diagnostics are written while OUT is still a complete temp file: a failure there leaves OUT as it
    # was (the message "nothing written" is then true), and a failure to rename OUT removes them again.
    wrote_diagnostics = False

    def write_diagnostics() -> None:
        nonlocal wrote_diagnostics
        write_json_atomic(diag_path, diagnostics)
        wrote_diagnostics = True

    try:
        _write_pass(
            in_path, out_path, collector, plan, reserialize, signature, show_progress, write_diagnostics
        )
    except BaseException:
        if wrote_diagnostics:
            with suppress(OSError):
                os.unlink(diag_path)
        raise
    return diagnostics
