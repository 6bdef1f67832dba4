"""`drift-lite theory`: run the bandit check (drift_lite/theory.py) and write theory.json, theory.md and
theory-kl.png from its entries."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from drift_lite.errors import UserError
from drift_lite.files import atomic_writer, write_json_atomic
from drift_lite.theory import BETAS, sbon_via_kit_weights, theory_entries, tv, weighted_empirical

_FLOOR = 1e-9  # log axes cannot show 0: smaller KLs are drawn at this floor


def _pick(entries: list[dict], **where) -> list[dict]:
    return [e for e in entries if all(e[k] == v for k, v in where.items())]


def _one(entries: list[dict], **where) -> dict:
    (entry,) = _pick(entries, **where)
    return entry


def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.2e}" if x < 1e-3 else f"{x:.4f}"


def _probs(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def _table_by_n(entries, prompts, ns, value, regime: str = "fresh") -> list[str]:
    lines = ["| prompt | β | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|---|" + "---:|" * len(ns)]
    for name in prompts:
        for beta in BETAS:
            cells = [value(_one(entries, prompt=name, beta=beta, n=n, regime=regime)) for n in ns]
            lines.append(f"| {name} | {beta} | " + " | ".join(cells) + " |")
    return lines + [""]


def _worst(entries: list[dict]) -> str:
    """The largest fresh-regime KL(trained‖SBoN_N) and where it is."""
    e = max(_pick(entries, regime="fresh"), key=lambda e: e["kl_trained_sbon"])
    return f"{_fmt(e['kl_trained_sbon'])} ({e['prompt']}, β = {e['beta']}, N = {e['n']})"


def _kit_identity_gap(entries: list[dict]) -> float:
    """Largest |SBoN_N - E[(1/N) Σ w_i δ(a_i)] with the kit's weights| over the entries with N ≤ 8."""
    gap = 0.0
    for e in _pick(entries, regime="fresh"):
        if e["n"] <= 8:
            via_kit = sbon_via_kit_weights(e["pi_ref"], e["reward"], e["beta"], e["n"])
            gap = max(gap, max(abs(a - b) for a, b in zip(via_kit, e["sbon"])))
    return gap


def theory_markdown(entries: list[dict], context: dict) -> str:
    """The report: setup, what each quantity is, the KL tables and the fixed regime, in plain words."""
    ns, schedule, bandits = context["ns"], context["schedule"], context["bandits"]
    prompts = [b.name for b in bandits]
    lines = [
        "# Theory check: DRIFT's weighted SFT trains toward Soft Best-of-N",
        "",
        "Written by `drift-lite theory --out DIR` (drift_lite/theory.py). Every number below is in "
        "`theory.json`; its `pi_star` and `sbon` recompute from each entry's `pi_ref`, `reward`, `beta`, `n` "
        "(`drift_lite.theory.pi_star`, `sbon_exact`).",
        "",
        "## Setup",
        "",
        f"Single-turn bandits: {len(bandits)} prompts with K = {len(bandits[0].reward)} answers each, a "
        "known reference policy π_ref and a reward per answer (answer 0 is the correct one; `hard` is the "
        "prompt where π_ref rarely says it).",
        "",
        "| prompt | π_ref | reward |",
        "|---|---|---|",
        *[f"| {b.name} | {_probs(list(b.pi_ref))} | {list(b.reward)} |" for b in bandits],
        "",
        "- **π\\*** = π_ref·exp(R/β), normalized: the KL-regularized optimum DRIFT's theory aims at.",
        "- **SBoN_N** (Soft Best-of-N): draw N answers from π_ref, keep one with probability ∝ exp(R/β). "
        "Computed exactly by enumerating every count vector of N draws over K answers.",
        "- **trained**: a softmax policy (one logit vector per prompt, started at π_ref) trained with the "
        "kit's own weights (`drift_lite.weights.group_weights`) and loss (`drift_lite.loss.sequence_nll`, "
        "`weighted_loss`, `normalize: mean`) on groups of N answers drawn from π_ref.",
        f"  - `fresh`: {schedule.fresh_groups} new groups of N per prompt every step, {schedule.fresh_steps} "
        f"Adam steps, learning rate decaying geometrically from {schedule.fresh_lr} to "
        f"{schedule.fresh_lr_end}.",
        f"  - `fixed`: one group of N per prompt drawn once (the same group for every β), full batch, "
        f"{schedule.fixed_steps} Adam steps, learning rate from {schedule.fixed_lr} to "
        f"{schedule.fixed_lr_end}.",
        "",
        "## What the weighted data is distributed as",
        "",
        "With weights w_i = exp(R_i/β) / mean_j exp(R_j/β), a group of N answers puts mass "
        "(1/N) Σ_i w_i on each answer it holds; averaged over the groups π_ref draws, that mass is exactly "
        "SBoN_N, not π\\*. The weighted loss's expected gradient is that of the cross-entropy to SBoN_N, so "
        "a policy trained on fresh groups converges to SBoN_N. This run enumerated E[(1/N) Σ_i w_i δ(a_i)] "
        "with the kit's `group_weights` (its all-equal-returns rule included) for every entry with N ≤ 8: it "
        f"differs from the exact SBoN_N by at most {_kit_identity_gap(entries):.1e} (float rounding and the "
        "kit's 1e-12 guard in the normalizer).",
        "",
        "## SBoN_N approaches π\\* as N grows",
        "",
        "KL(SBoN_N ‖ π\\*) per prompt and β. The gap is O(1/N) once N is large enough that the best answer "
        "shows up in most groups; until then (the `hard` prompt at small β) SBoN_N can only reweight what "
        "π_ref happened to draw, and the gap stays large. N·KL is given in brackets: it levels off where the "
        "1/N rate has set in (β = 1); where the best answer is likely and β small it falls faster still, as "
        "the chance that a group lacks the best answer falls exponentially in N.",
        "",
        *_table_by_n(
            entries, prompts, ns, lambda e: f"{_fmt(e['kl_sbon_star'])} [{e['n'] * e['kl_sbon_star']:.3g}]"
        ),
        "## Fresh regime: the trained policy lands on SBoN_N",
        "",
        f"KL(trained ‖ SBoN_N), below: at most {_worst(entries)} (what is left is the sampling noise of "
        "the last steps and, at small β, the logits of answers SBoN_N all but excludes still on their way "
        "down), while KL(trained ‖ π\\*) follows KL(SBoN_N ‖ π\\*) above. The kit's loss trains to "
        "SBoN_N, and reaches π\\* only as fast as SBoN_N does.",
        "",
        *_table_by_n(entries, prompts, ns, lambda e: _fmt(e["kl_trained_sbon"])),
        "KL(trained ‖ π\\*), fresh:",
        "",
        *_table_by_n(entries, prompts, ns, lambda e: _fmt(e["kl_trained_star"])),
        *_fixed_section(entries, context, prompts, ns),
        "## The figure",
        "",
        "`theory-kl.png`: one panel per β, N on a log axis, KL on a log axis, one colour per prompt. "
        "Solid line: KL(SBoN_N ‖ π\\*), the exact gap between what the weighted data is distributed as "
        "and π\\*. Dashed: KL(trained ‖ SBoN_N) in the fresh regime, how far the trained policy is from "
        "SBoN_N (far below the solid line wherever SBoN_N and π\\* differ clearly: it lands on SBoN_N). "
        "Dotted: KL(trained ‖ π\\*) in the fixed regime, one sample set per prompt (noisy, falling with N "
        f"only on the whole). Grey: a 1/N slope for reference. Values below {_FLOOR:g} are drawn at that "
        "floor.",
        "",
    ]
    return "\n".join(lines)


def _fixed_section(entries, context, prompts, ns) -> list[str]:
    sets, bandits = context["fixed_sets"], context["bandits"]
    gaps = []
    for e in _pick(entries, regime="fixed"):
        i = prompts.index(e["prompt"])
        target = weighted_empirical(e["reward"], e["beta"], sets[e["n"]][i])
        gaps.append(tv(e["pi_trained"], target))
    lines = [
        "## Fixed regime: one sample set, trained to convergence",
        "",
        "On one group of N answers the loss's minimum is that group's weighted empirical distribution "
        "(1/N) Σ_i w_i δ(a_i): zero on every answer the group lacks, and a single noisy draw whose average "
        "(not itself) is SBoN_N. The trained policy ends within TV "
        f"{max(gaps):.1e} of it (largest over the entries; answers the group lacks keep a sliver of mass "
        "because their logits only drift down as their probability vanishes). With small N the group often "
        "misses the best answer (counts below), and no amount of training puts mass back there: π\\* cannot "
        "be reached from data that never shows it.",
        "",
        "Answer counts of each prompt's fixed group:",
        "",
        "| prompt | " + " | ".join(f"N={n}" for n in ns) + " |",
        "|---|" + "---|" * len(ns),
    ]
    for i, bandit in enumerate(bandits):
        k = len(bandit.reward)
        cells = []
        for n in ns:
            counts = Counter(sets[n][i])
            cells.append(str([counts.get(a, 0) for a in range(k)]))
        lines.append(f"| {bandit.name} | " + " | ".join(cells) + " |")
    lines += ["", "KL(trained ‖ π\\*), fixed:", ""]
    lines += _table_by_n(entries, prompts, ns, lambda e: _fmt(e["kl_trained_star"]), "fixed")
    lines += ["TV(trained, π\\*), fixed:", ""]
    lines += _table_by_n(entries, prompts, ns, lambda e: f"{e['tv_trained_star']:.3f}", "fixed")
    return lines


def write_kl_plot(entries: list[dict], path: Path) -> None:
    """theory-kl.png: per β, KL(SBoN‖π*), fresh KL(trained‖SBoN) and fixed KL(trained‖π*) against N."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede the pyplot import
    import matplotlib.pyplot as plt

    prompts = list(dict.fromkeys(e["prompt"] for e in entries))
    ns = sorted({e["n"] for e in entries})
    fig, axes = plt.subplots(1, len(BETAS), figsize=(4.2 * len(BETAS), 4.8), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, beta in zip(axes, BETAS):
        top = _FLOOR
        for colour, name in zip(colours, prompts):

            def series(key: str, regime: str, name: str = name, beta: float = beta) -> list[float]:
                rows = [_one(entries, prompt=name, beta=beta, n=n, regime=regime) for n in ns]
                return [max(r[key], _FLOOR) for r in rows]

            sbon = series("kl_sbon_star", "fresh")
            top = max(top, *sbon)
            ax.plot(ns, sbon, "-o", color=colour, label=f"{name}: KL(SBoN‖π*)")
            ax.plot(
                ns, series("kl_trained_sbon", "fresh"), "--x", color=colour, label=f"{name}: fresh KL(π‖SBoN)"
            )
            ax.plot(
                ns, series("kl_trained_star", "fixed"), ":^", color=colour, label=f"{name}: fixed KL(π‖π*)"
            )
        ax.plot(ns, [top * ns[0] / n for n in ns], color="0.6", lw=1, label="1/N slope")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(ns, [str(n) for n in ns])
        ax.set_title(f"β = {beta}")
        ax.set_xlabel("N (samples per prompt)")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("KL (nats)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))  # room for the legend below the panels
    with atomic_writer(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def run_theory(out_dir: Path, *, tiny: bool = False, show_progress: bool = True) -> dict:
    """Write theory.json, theory.md and theory-kl.png under out_dir; return paths, entry count, wall time."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    entries, context = theory_entries(tiny=tiny, show_progress=show_progress)
    paths = {"json": out_dir / "theory.json", "md": out_dir / "theory.md", "plot": out_dir / "theory-kl.png"}
    write_json_atomic(paths["json"], entries)
    write_kl_plot(entries, paths["plot"])
    with atomic_writer(paths["md"]) as handle:
        handle.write(theory_markdown(entries, context).encode("utf-8"))
    return {
        "entries": len(entries),
        "wall_s": round(time.perf_counter() - start, 1),
        **{k: str(v) for k, v in paths.items()},
    }
