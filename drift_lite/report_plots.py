"""PNG plots of the report: multi@k, per-turn accuracy, the weight histogram, the training loss.

Each plot is written through `files.atomic_writer`, so a reader never sees half a file.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from drift_lite.files import atomic_writer
from drift_lite.report_runs import LABEL_ORDER, RunSummary, is_number, label_key
from drift_lite.report_tables import eval_rows, multi_keys

FIGSIZE = (6, 4)
DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "set"


def _save(fig, path: Path, tight: bool = False) -> None:
    with atomic_writer(path) as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight" if tight else None)


def _styles(runs: list[tuple[str, RunSummary]]) -> dict[tuple[str, str], dict]:
    """One colour per run, one line style / marker per label, so run and label read apart."""
    palette = [f"C{i}" for i in range(10)]
    dashes = {"reference": "--", "trained": "-"}
    others = [":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    markers = {"reference": "o", "trained": "s"}
    extra = ["^", "v", "D", "P", "X"]
    all_labels = sorted({lab for _, run in runs for lab in run.evals}, key=label_key)
    styles = {}
    for i, (name, _) in enumerate(runs):
        for j, label in enumerate(all_labels):
            k = j - len(LABEL_ORDER)
            styles[(name, label)] = {
                "color": palette[i % len(palette)],
                "linestyle": dashes.get(label, others[k % len(others)]),
                "marker": markers.get(label, extra[k % len(extra)]),
            }
    return styles


def _plot_multi(plt, runs, eval_set: str, path: Path) -> None:
    styles = _styles(runs)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for name, run in runs:
        for label in run.labels():
            metrics = run.evals[label].get(eval_set)
            if metrics is None:
                continue
            keys = multi_keys([metrics])
            xs = [int(k.split("@")[1]) for k in keys]
            ys = [metrics.get(k) if is_number(metrics.get(k)) else math.nan for k in keys]
            ax.plot(xs, ys, label=f"{name} / {label}", **styles[(name, label)])
    ax.set_title(f"multi@k — {eval_set}")
    ax.set_xlabel("turn budget k")
    ax.set_ylabel("multi@k (solved by turn k)")
    ax.set_ylim(-0.02, 1.02)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _plot_per_turn(plt, runs, eval_set: str, path: Path) -> None:
    series = [(who, m.get("per_turn") or []) for who, m in eval_rows(runs, eval_set)]
    width_t = max(len(values) for _, values in series)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    bar = 0.8 / len(series)
    styles = _styles(runs)
    for i, (who, values) in enumerate(series):
        name, label = who.rsplit(" / ", 1)
        xs = [t + 1 + (i - (len(series) - 1) / 2) * bar for t in range(len(values))]
        ys = [v if is_number(v) else math.nan for v in values]
        color = styles[(name, label)]["color"]
        # Same run, same colour: the label is told apart by hatching (reference) or solid fill (trained).
        hatch = "//" if label == "reference" else ("" if label == "trained" else "..")
        ax.bar(
            xs,
            ys,
            width=bar,
            label=who,
            color=color,
            alpha=0.55 if hatch else 0.9,
            hatch=hatch,
            edgecolor=color,
        )
    ax.set_title(f"Per-turn accuracy — {eval_set}")
    ax.set_xlabel("turn t")
    ax.set_ylabel("solved at t / active at t")
    ax.set_xticks(range(1, width_t + 1))
    ax.set_ylim(0, 1.05)
    ax.grid(axis="y", alpha=0.3)
    # Below the axes: bars fill the plot area, a legend inside would hide some of them.
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    fig.tight_layout()
    _save(fig, path, tight=True)
    plt.close(fig)


def _plot_weights(plt, samples: dict[str, tuple[list[float], int]], path: Path) -> None:
    import numpy as np

    everything = [v for values, _ in samples.values() for v in values]
    low, high = min(everything), max(everything)
    bins = np.linspace(low, high if high > low else low + 1.0, 41)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    single = len(samples) == 1
    for i, (name, (values, count)) in enumerate(samples.items()):
        note = f"{count} rows" + (f", {len(values)} sampled" if len(values) < count else "")
        ax.hist(
            values,
            bins=bins,
            histtype="stepfilled" if single else "step",
            linewidth=1.6,
            alpha=0.75 if single else 1.0,
            color=f"C{i % 10}",
            label=f"{name} ({note})",
        )
    ax.set_yscale("log")
    _plain_log_ticks(ax, max(np.histogram(values, bins=bins)[0].max() for values, _ in samples.values()))
    ax.set_title("Trajectory weights (weighted.jsonl)")
    ax.set_xlabel("weight (mean 1 within each prompt group)")
    ax.set_ylabel("trajectories (log scale)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _plain_log_ticks(ax, top: float) -> None:
    """Counts as plain numbers (1, 2, 5, 10...) instead of 3×10^0 on a log axis."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if top < 1000 else (1.0,)  # fewer ticks once the axis spans many decades
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.set_ylim(0.7, top * 1.5)


def _plot_loss(plt, runs, path: Path) -> None:
    fig, ax = plt.subplots(figsize=FIGSIZE)
    for i, (name, run) in enumerate(runs):
        if run.losses:
            steps, losses = zip(*run.losses)
            ax.plot(steps, losses, color=f"C{i % 10}", marker="." if len(steps) <= 50 else None, label=name)
    ax.set_title("Training loss (weighted SFT)")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_plots(runs, sets, samples, plot_dir: Path) -> list[tuple[str, str]]:
    """Draw every plot the data allows; return (caption, file name) pairs."""
    plt = _pyplot()
    # Run and set names are literal text: a `$` in one must not start matplotlib's math mode (`a$b$` would be
    # set as math, and an unbalanced TeX command inside raises when the figure is drawn).
    with plt.rc_context({"text.parse_math": False}):
        return _write_plots(plt, runs, sets, samples, plot_dir)


def _write_plots(plt, runs, sets, samples, plot_dir: Path) -> list[tuple[str, str]]:
    made: list[tuple[str, str]] = []
    for eval_set in sets:
        name = f"multi_at_k_{_safe(eval_set)}.png"
        _plot_multi(plt, runs, eval_set, plot_dir / name)
        made.append((f"multi@k, {eval_set}", name))
        name = f"per_turn_{_safe(eval_set)}.png"
        _plot_per_turn(plt, runs, eval_set, plot_dir / name)
        made.append((f"per-turn accuracy, {eval_set}", name))
    if any(values for values, _ in samples.values()):
        _plot_weights(plt, {k: v for k, v in samples.items() if v[0]}, plot_dir / "weights.png")
        made.append(("weight distribution", "weights.png"))
    if any(run.losses for _, run in runs):
        _plot_loss(plt, runs, plot_dir / "loss.png")
        made.append(("training loss", "loss.png"))
    return made
