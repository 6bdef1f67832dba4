"""The PNG plots of a comparison, drawn from results.json's numbers only (so they are recomputable from it).

- `multi_at_k.png`: multi@1..K per method (and the reference model), bars at the mean, sd error bars;
- `online-<method>.png` for a method with online curves: multi@K against cumulative generated tokens and
  against cumulative training wall time, one line per seed, the reference method's (DRIFT's) training cost
  marked as a vertical line and its mean multi@K ± sd as a point.
"""

from __future__ import annotations

from pathlib import Path

from drift_lite.files import atomic_writer

FIGSIZE = (7, 4)
DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_writer(path) as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight")


def write_plots(results: dict, plot_dir: Path) -> list[str]:
    """Draw the comparison's plots into `plot_dir`; returns their paths relative to its parent."""
    plt = _pyplot()
    plot_dir.mkdir(parents=True, exist_ok=True)
    written = []
    path = plot_dir / "multi_at_k.png"
    _plot_bars(plt, results, path)
    written.append(path)
    for name, entry in results["methods"].items():
        if any(entry["curves"]):
            path = plot_dir / f"online-{name}.png"
            _plot_online(plt, results, name, path)
            written.append(path)
    return [str(p.relative_to(plot_dir.parent)) for p in written]


def _plot_bars(plt, results: dict, path: Path) -> None:
    k = results["top_k"]
    keys = [f"multi@{i}" for i in range(1, k + 1)]
    groups = [("reference model", results["reference_model"])]
    groups += [(m["label"], m) for m in results["methods"].values()]
    width = 0.8 / len(groups)
    fig, ax = plt.subplots(figsize=(max(FIGSIZE[0], 0.18 * k * len(groups) + 2), FIGSIZE[1]))
    for j, (label, entry) in enumerate(groups):
        means = [entry["summary"][key]["mean"] for key in keys]
        sds = [entry["summary"][key]["sd"] or 0.0 for key in keys]
        xs = [i + (j - (len(groups) - 1) / 2) * width for i in range(k)]
        heights = [m if m is not None else 0.0 for m in means]
        ax.bar(xs, heights, width, yerr=sds, capsize=2, label=label, color=f"C{j % 10}")
    ax.set_xticks(range(k))
    ax.set_xticklabels(keys)
    ax.set_ylabel("share of problems solved")
    ax.set_ylim(0, 1.05)
    seeds = len(results["seeds"])
    ax.set_title(f"multi@k on {results['eval_set']}: mean ± sd over {seeds} seed{'s' * (seeds > 1)}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def _plot_online(plt, results: dict, name: str, path: Path) -> None:
    k = results["top_k"]
    key = f"multi@{k}"
    entry = results["methods"][name]
    ref = results["methods"][results["reference_method"]]
    ref_score = ref["summary"][key]
    ref_cost = ref["cost"]
    fig, axes = plt.subplots(1, 2, figsize=(2 * FIGSIZE[0] - 2, FIGSIZE[1]), sharey=True)
    # token counts as thousands: full numbers overlap on the axis
    axes[0].xaxis.set_major_formatter(plt.FuncFormatter(lambda x, _: f"{x / 1000:g}"))
    for ax, x_key, ref_x, xlabel in (
        (
            axes[0],
            "generated_tokens",
            ref_cost["generated_tokens"],
            "generated tokens, thousands (cumulative, training)",
        ),
        (axes[1], "wall_s", ref_cost["train_seconds"], "training wall time, s (cumulative)"),
    ):
        for seed, curve in zip(results["seeds"], entry["curves"]):
            points = [r for r in curve if r.get(x_key) is not None and r.get(key) is not None]
            if points:
                ax.plot(
                    [r[x_key] for r in points], [r[key] for r in points], marker=".", label=f"seed {seed}"
                )
        if ref_score["mean"] is not None:
            ax.axhline(ref_score["mean"], color="grey", linestyle=":", linewidth=1)
        if ref_x["mean"] is not None:
            ax.axvline(
                ref_x["mean"], color="k", linestyle="--", linewidth=1, label=f"{ref['label']} total cost"
            )
            if ref_score["mean"] is not None:
                ax.errorbar(
                    [ref_x["mean"]],
                    [ref_score["mean"]],
                    xerr=[ref_x["sd"] or 0.0],
                    yerr=[ref_score["sd"] or 0.0],
                    color="k",
                    marker="*",
                    markersize=10,
                    capsize=3,
                    label=f"{ref['label']} mean {key}",
                )
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(key)
    axes[0].set_ylim(0, 1.05)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.suptitle(f"{entry['label']}: {key} over its iterations, against {ref['label']}'s cost")
    _save(fig, path)
    plt.close(fig)
