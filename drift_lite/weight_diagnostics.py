"""Diagnostics of a weighting: group sizes, effective sample sizes, weight on never-solved trajectories,
dropped and clipped rows, per group and overall; and their few-line summary for the terminal."""

from __future__ import annotations

import math
from dataclasses import asdict

from drift_lite.recipe import WeightsConfig


class Stats:
    """Running sums for the diagnostics."""

    def __init__(self) -> None:
        self.sizes: list[int] = []
        self.ess: list[float] = []
        self.ess_fraction: list[float] = []
        self.weight_total: list[float] = []
        self.weight_failed: list[float] = []
        self.max_weight = 0.0
        self.equal_groups = 0
        self.equal_all_failed = 0
        self.rows_dropped = 0
        self.groups_dropped = 0
        self.failed_groups = 0
        self.rows_clipped = 0
        self.per_group: list[dict] = []

    def add_group(self, prompt_id: str, weights: list[float], solved: list[int], dropped: str | None) -> None:
        """Account for one group: its effective sample size and the weight share on failed trajectories."""
        total = math.fsum(weights)
        squares = math.fsum(w * w for w in weights)
        ess = total * total / squares if squares > 0 else 0.0
        failed = math.fsum(w for w, ok in zip(weights, solved) if not ok)
        self.per_group.append(
            {
                "prompt_id": prompt_id,
                "size": len(weights),
                "solved": sum(solved),
                "ess": ess,
                "failed_weight_share": failed / total if total > 0 else 0.0,
                "dropped": dropped,
            }
        )
        if dropped:
            return
        self.ess.append(ess)
        self.ess_fraction.append(ess / len(weights))
        self.weight_total.append(total)
        self.weight_failed.append(failed)
        self.max_weight = max(self.max_weight, max(weights))


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def diagnostics(stats: Stats, n_rows: int, settings: WeightsConfig) -> dict:
    """The diagnostics dict written beside a weighted file (`<OUT>.diagnostics.json`)."""
    total = math.fsum(stats.weight_total)
    return {
        "rows": n_rows,
        "rows_written": n_rows - stats.rows_dropped,
        "rows_dropped": stats.rows_dropped,
        "groups": len(stats.sizes),
        "groups_dropped": stats.groups_dropped,
        "group_size": {"min": min(stats.sizes), "mean": _mean(stats.sizes), "max": max(stats.sizes)},
        "ess": {
            "mean": _mean(stats.ess),
            "min": min(stats.ess, default=0.0),
            "mean_fraction_of_group": _mean(stats.ess_fraction),
        },
        "failed_weight_share": math.fsum(stats.weight_failed) / total if total > 0 else 0.0,
        "equal_return_groups": stats.equal_groups,
        "equal_return_groups_all_failed": stats.equal_all_failed,
        "all_failed_groups": stats.failed_groups,
        "rows_clipped": stats.rows_clipped,
        "max_weight": stats.max_weight,
        "settings": asdict(settings),
        "per_group": stats.per_group,
    }


def format_diagnostics(d: dict) -> str:
    """A short human-readable summary of weight_file's diagnostics (a few lines)."""
    size, ess, s = d["group_size"], d["ess"], d["settings"]
    dropped = ""
    if d["rows_dropped"]:
        dropped = f"; dropped {d['rows_dropped']} rows ({d['groups_dropped']} groups)"
    equal_note = "dropped" if s["drop_equal_groups"] else "kept at weight 1 (drop_equal_groups drops them)"
    failed_note = "dropped" if s["drop_failed_groups"] else "kept (drop_failed_groups drops them)"
    clip = f"; {d['rows_clipped']} clipped at {s['max_weight']}" if s["max_weight"] is not None else ""
    return "\n".join(
        [
            f"rows: {d['rows']} in {d['groups']} groups (size {size['min']}..{size['max']}, "
            f"mean {size['mean']:.2f}); written {d['rows_written']}{dropped}",
            f"effective sample size per group: mean {ess['mean']:.2f}, min {ess['min']:.2f} "
            f"({100 * ess['mean_fraction_of_group']:.0f}% of group size on average)",
            f"weight on never-solved trajectories: {100 * d['failed_weight_share']:.1f}% of total; "
            f"largest weight {d['max_weight']:.3g}{clip}",
            f"groups with no success: {d['all_failed_groups']}: {failed_note}",
            f"groups with all-equal returns: {d['equal_return_groups']} "
            f"({d['equal_return_groups_all_failed']} all failed): {equal_note}",
            f"settings: scheme={s['scheme']} gamma={s['gamma']} beta={s['beta']} "
            f"repeat_coef={s['repeat_coef']}",
        ]
    )
