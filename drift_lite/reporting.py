"""The report across run directories (`report.md` and `plots/*.png`) and the end-of-run summary.

Reading runs is `report_runs.py`, the Markdown tables `report_tables.py`, the plots `report_plots.py`.
A run directory may be partial (a killed or still-running job): every section shows what exists and the
report lists what is missing. Outputs are written through a temp file and renamed, so a reader never sees
half a file.
"""

from __future__ import annotations

from pathlib import Path

from drift_lite.errors import UserError
from drift_lite.files import atomic_writer
from drift_lite.report_plots import write_plots
from drift_lite.report_runs import LABEL_ORDER, RunSummary, is_number, load_run, sample_weights
from drift_lite.report_tables import (
    fmt,
    loss_section,
    md_text,
    metrics_section,
    missing_section,
    multi_keys,
    runs_section,
    timings_section,
    weights_section,
)


def _named(runs: list[RunSummary]) -> list[tuple[str, RunSummary]]:
    """Give each run a unique display name: the recipe name, plus the folder when names collide."""
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.name] = counts.get(run.name, 0) + 1
    named, used = [], set()
    for run in runs:
        name = run.name if counts[run.name] == 1 else f"{run.name} ({run.path.name})"
        base, i = name, 2
        while name in used:
            name, i = f"{base} #{i}", i + 1
        used.add(name)
        named.append((name, run))
    return named


def write_report(run_dirs: list[Path], out_dir: Path, plots: bool = True) -> Path:
    """Write `out_dir/report.md` (and `out_dir/plots/*.png` unless `plots` is False); return report.md."""
    if not run_dirs:
        raise UserError("no run directories given to report on")
    runs = _named([load_run(d) for d in run_dirs])
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a directory")
    sets = sorted({s for _, run in runs for s in run.eval_sets()})
    samples = {name: sample_weights(run.weighted_path) for name, run in runs if run.weighted_path is not None}
    made: list[tuple[str, str]] = []
    if plots:
        (out_dir / "plots").mkdir(parents=True, exist_ok=True)
        made = write_plots(runs, sets, samples, out_dir / "plots")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
    title = "drift-lite report: " + ", ".join(md_text(name) for name, _ in runs)
    lines = [f"# {title}", ""]
    lines += runs_section(runs)
    lines += metrics_section(runs, sets)
    lines += weights_section(runs, samples)
    lines += loss_section(runs)
    lines += timings_section(runs)
    lines += ["## Plots", ""]
    lines += [f"![{md_text(caption)}](plots/{name})\n" for caption, name in made] or ["No plots.", ""]
    lines += missing_section(runs)
    report = out_dir / "report.md"
    with atomic_writer(report) as handle:
        handle.write(("\n".join(lines).rstrip() + "\n").encode("utf-8"))
    return report


def _plain(value: object) -> str:
    return "n/a" if value is None else fmt(value)  # ASCII for terminals


def _delta(before: object, after: object) -> str:
    if is_number(before) and is_number(after):
        return f" ({after - before:+.3f})"
    return ""


def summary_lines(run_dir: str | Path) -> list[str]:
    """A one-screen summary for the end of `drift-lite run`: multi@1 / multi@K per eval set, report path."""
    run = load_run(run_dir)
    lines = [f"Run {run.name} ({run.path})"]
    sets = run.eval_sets()
    if not sets:
        lines.append("  no evaluation results yet")
    ref, trained = run.evals.get("reference", {}), run.evals.get("trained", {})
    for eval_set in sets:
        before, after = ref.get(eval_set), trained.get(eval_set)
        keys = multi_keys([m for m in (before, after) if m is not None])
        parts = []
        for key in dict.fromkeys([keys[0], keys[-1]]) if keys else []:
            b = before.get(key) if before else None
            a = after.get(key) if after else None
            parts.append(f"{key} {_plain(b)} -> {_plain(a)}{_delta(b, a)}")
        lines.append(f"  {eval_set} (reference -> trained): " + ("; ".join(parts) or "no multi@k values"))
        for label in run.labels():
            metrics = run.evals[label].get(eval_set)
            if label in LABEL_ORDER or metrics is None:
                continue
            own = multi_keys([metrics])
            shown = (
                "; ".join(f"{k} {_plain(metrics.get(k))}" for k in dict.fromkeys([own[0], own[-1]]))
                if own
                else ""
            )
            lines.append(f"  {eval_set} ({label}): {shown or 'no multi@k values'}")
    if run.missing:
        lines.append(f"  missing: {', '.join(run.missing)}")
    report = run.path / "report.md"
    lines.append(f"Report: {report}" if report.is_file() else f"Report: not written yet ({report})")
    return lines
