"""Markdown report and PNG plots across run directories, plus the end-of-run summary.

A run directory may be partial (a killed or still-running job): every section shows what exists and the
report lists what is missing. Files are read as they are written by the other stages:

- ``recipe.yaml`` (name, model, task, seed), ``rollouts.jsonl``, ``weighted.jsonl`` (only ``weight`` is read,
  streamed) and its diagnostics JSON, ``adapter/train_log.jsonl`` (``step``/``loss`` per logging step),
- ``eval-<label>/eval-<set>.json`` for every label folder (reference, trained, baselines...),
- ``timings.json`` (``{stage: {seconds, generated_tokens?}}``).

Outputs (``report.md``, ``plots/*.png``) are written through a temp file and renamed, so a reader never sees
half a file.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drift_lite import records
from drift_lite.errors import UserError

WEIGHT_SAMPLE = 200_000  # weights kept for the histogram; larger files are reservoir-sampled
DIAGNOSTICS_NAMES = ("weighted.diagnostics.json", "weighted.jsonl.diagnostics.json")
EXPECTED = (
    "recipe.yaml",
    "rollouts.jsonl",
    "weighted.jsonl",
    "weighted.diagnostics.json",
    "adapter/train_log.jsonl",
    "eval-reference/",
    "eval-trained/",
    "timings.json",
)
LABEL_ORDER = ("reference", "trained")
METRIC_COLUMNS = (
    ("correction_rate", "correction"),
    ("repeat_rate", "repeats"),
    ("format_error_rate", "format errors"),
    ("mean_turns", "mean turns"),
)
FIGSIZE = (6, 4)
DPI = 120
_WEIGHT_TAIL = re.compile(rb'"weight":\s*(-?[0-9][0-9.eE+-]*)\s*}\s*$')


@dataclass
class RunSummary:
    """What one run directory holds, read into memory (except the weighted rows, which stay on disk)."""

    path: Path
    name: str
    model: str | None = None
    task: str | None = None
    seed: object = None
    evals: dict[str, dict[str, dict]] = field(default_factory=dict)  # label -> set -> metrics
    diagnostics: dict | None = None
    losses: list[tuple[float, float]] = field(default_factory=list)  # (step, loss)
    bad_log_lines: int = 0
    timings: dict | None = None
    weighted_path: Path | None = None
    missing: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        """Eval labels: reference, trained, then the others alphabetically."""
        return sorted(self.evals, key=_label_key)

    def eval_sets(self) -> list[str]:
        """Every eval set name seen under any label, sorted."""
        return sorted({s for sets in self.evals.values() for s in sets})


def _label_key(label: str) -> tuple[int, str]:
    return (LABEL_ORDER.index(label) if label in LABEL_ORDER else len(LABEL_ORDER), label)


# ---------------------------------------------------------------------------------------------------------
# Reading a run directory


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read JSON ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).splitlines()[0][:120]


def _read_recipe(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read recipe ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def _section_name(value: object) -> str | None:
    """`model: {name: x}` or `model: x` → x."""
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)


def _read_train_log(path: Path) -> tuple[list[tuple[float, float]], int]:
    """(step, loss) pairs; lines that do not parse are counted, not fatal (a killed run cuts the last one)."""
    losses: list[tuple[float, float]] = []
    bad = 0
    with path.open("rb") as handle:
        for index, raw in enumerate(handle):
            if raw.isspace():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                bad += 1
                continue
            loss = entry.get("loss") if isinstance(entry, dict) else None
            if not _is_number(loss) or not math.isfinite(loss):
                continue  # e.g. an end-of-training summary line without a per-step loss
            step = entry.get("step", index)
            losses.append((float(step) if _is_number(step) else float(index), float(loss)))
    return losses, bad


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_evals(run_dir: Path) -> dict[str, dict[str, dict]]:
    evals: dict[str, dict[str, dict]] = {}
    for folder in sorted(p for p in run_dir.glob("eval-*") if p.is_dir()):
        sets = {}
        for path in sorted(folder.glob("eval-*.json")):
            data = _read_json(path)
            if isinstance(data, dict):
                sets[path.stem[len("eval-") :]] = data
        if sets:
            evals[folder.name[len("eval-") :]] = sets
    return evals


def load_run(run_dir: str | Path) -> RunSummary:
    """Read a run directory (partial is fine); UserError if it is missing or holds none of a run's files."""
    path = Path(run_dir)
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such run directory"
        raise UserError(f"{path}: {what}")
    recipe_path = path / "recipe.yaml"
    recipe = _read_recipe(recipe_path) if recipe_path.is_file() else {}
    run = RunSummary(
        path=path,
        name=str(recipe.get("name") or path.name),
        model=_section_name(recipe.get("model")),
        task=_section_name(recipe.get("task")),
        seed=recipe.get("seed"),
        evals=_read_evals(path),
    )
    diagnostics = next((path / n for n in DIAGNOSTICS_NAMES if (path / n).is_file()), None)
    if diagnostics is not None:
        data = _read_json(diagnostics)
        run.diagnostics = data if isinstance(data, dict) else {"value": data}
    log = path / "adapter" / "train_log.jsonl"
    if log.is_file():
        run.losses, run.bad_log_lines = _read_train_log(log)
    if (path / "timings.json").is_file():
        data = _read_json(path / "timings.json")
        run.timings = data if isinstance(data, dict) else None
    if (path / "weighted.jsonl").is_file():
        run.weighted_path = path / "weighted.jsonl"
    present = {
        "recipe.yaml": recipe_path.is_file(),
        "rollouts.jsonl": (path / "rollouts.jsonl").is_file(),
        "weighted.jsonl": run.weighted_path is not None,
        "weighted.diagnostics.json": diagnostics is not None,
        "adapter/train_log.jsonl": log.is_file(),
        "eval-reference/": "reference" in run.evals,
        "eval-trained/": "trained" in run.evals,
        "timings.json": run.timings is not None,
    }
    run.missing = [name for name in EXPECTED if not present[name]]
    if not any(present.values()) and not run.evals:
        raise UserError(f"{path}: not a run directory (none of {', '.join(EXPECTED)} found)")
    return run


def iter_weights(path: Path) -> Iterator[float]:
    """Stream the `weight` of each row of a weighted JSONL, parsing only the line's tail when possible."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            if raw.isspace():
                continue
            # weights.py appends `"return": R, "weight": w}` to each line: read that without parsing messages.
            match = _WEIGHT_TAIL.search(raw[-80:])
            if match is not None:
                try:
                    yield float(match.group(1))
                    continue
                except ValueError:
                    pass
            row = records.parse_json_line(raw, f"{path}:{lineno}")
            weight = row.get("weight") if isinstance(row, dict) else None
            if not _is_number(weight):
                raise UserError(f"{path}:{lineno}: field 'weight': missing or not a number")
            yield float(weight)


def sample_weights(path: Path, cap: int = WEIGHT_SAMPLE, seed: int = 0) -> tuple[list[float], int]:
    """(at most `cap` weights, reservoir-sampled with a fixed seed, total rows) of a weighted JSONL."""
    rng = random.Random(seed)
    sample: list[float] = []
    count = 0
    for weight in iter_weights(path):
        count += 1
        if len(sample) < cap:
            sample.append(weight)
        else:
            j = rng.randrange(count)
            if j < cap:
                sample[j] = weight
    return sample, count


# ---------------------------------------------------------------------------------------------------------
# Markdown


def fmt(value: object) -> str:
    """A table cell: floats to 3 decimals, None as a dash, nested values as compact JSON."""
    if value is None:
        return "–"
    if isinstance(value, int):  # bool included
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}" if math.isfinite(value) else str(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def _cell(value: object) -> str:
    return fmt(value).replace("|", "\\|").replace("\n", " ")


def table(header: list[str], rows: list[list[object]]) -> list[str]:
    """A Markdown table (cells formatted with `fmt`, pipes escaped)."""
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |"]
    # Numbers right-aligned (they line up by magnitude), text left-aligned.
    numeric = [
        i > 0 and all(v is None or _is_number(v) for v in (r[i] if i < len(r) else None for r in rows))
        for i in range(len(header))
    ]
    lines.append("|" + "|".join(" ---: " if num else " --- " for num in numeric) + "|")
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def _flatten(data: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _multi_keys(metrics: list[dict]) -> list[str]:
    k_max = max((sum(1 for k in m if k.startswith("multi@")) for m in metrics), default=0)
    return [f"multi@{k}" for k in range(1, k_max + 1)]


def _eval_rows(runs: list[tuple[str, RunSummary]], eval_set: str) -> list[tuple[str, dict]]:
    """(`run / label`, metrics) for every run and label that evaluated `eval_set`."""
    return [
        (f"{name} / {label}", run.evals[label][eval_set])
        for name, run in runs
        for label in run.labels()
        if eval_set in run.evals[label]
    ]


def _metrics_section(runs: list[tuple[str, RunSummary]], sets: list[str]) -> list[str]:
    lines = ["## Multi-turn metrics", ""]
    if not sets:
        return lines + ["No evaluation results (no `eval-*/eval-*.json`).", ""]
    for eval_set in sets:
        rows = _eval_rows(runs, eval_set)
        keys = _multi_keys([m for _, m in rows])
        header = ["run / label", "n", *keys, *(title for _, title in METRIC_COLUMNS)]
        body = [
            [who, m.get("n"), *(m.get(k) for k in keys), *(m.get(k) for k, _ in METRIC_COLUMNS)]
            for who, m in rows
        ]
        lines += [f"### {eval_set}", "", *table(header, body), ""]
    lines += ["## Per-turn accuracy", "", "Solved at turn t / still active at turn t.", ""]
    for eval_set in sets:
        rows = _eval_rows(runs, eval_set)
        width = max((len(m.get("per_turn") or []) for _, m in rows), default=0)
        body = []
        for who, m in rows:
            per_turn = list(m.get("per_turn") or [])
            body.append([who, *per_turn, *([None] * (width - len(per_turn)))])
        lines += [
            f"### {eval_set}",
            "",
            *table(["run / label", *(f"t{t}" for t in range(1, width + 1))], body),
        ]
        lines.append("")
    return lines


def _weights_section(
    runs: list[tuple[str, RunSummary]], samples: dict[str, tuple[list[float], int]]
) -> list[str]:
    lines = ["## Weights", ""]
    with_diag = [(name, run.diagnostics) for name, run in runs if run.diagnostics is not None]
    if with_diag:
        flat = [(name, _flatten(d)) for name, d in with_diag]
        keys: list[str] = []
        for _, d in flat:
            keys += [k for k in d if k not in keys]
        body = [[key, *(d.get(key) for _, d in flat)] for key in keys]
        lines += ["Weight diagnostics:", "", *table(["diagnostic", *(name for name, _ in flat)], body), ""]
    else:
        lines += ["No weight diagnostics.", ""]
    if samples:
        body = []
        for name, (values, count) in samples.items():
            ordered = sorted(values)
            median = ordered[len(ordered) // 2] if ordered else None
            near_zero = sum(v < 0.01 for v in values) / len(values) if values else None
            body.append(
                [name, count, min(values, default=None), median, max(values, default=None), near_zero]
            )
        header = ["run", "rows", "min", "median", "max", "share < 0.01"]
        lines += ["Weights in `weighted.jsonl`:", "", *table(header, body), ""]
    return lines


def _loss_section(runs: list[tuple[str, RunSummary]]) -> list[str]:
    lines = ["## Training loss", ""]
    body = []
    for name, run in runs:
        if not run.losses:
            continue
        steps, losses = zip(*run.losses)
        low = min(range(len(losses)), key=losses.__getitem__)
        body.append([name, len(losses), losses[0], losses[-1], losses[low], _step(steps[low])])
    if not body:
        return lines + ["No training log (`adapter/train_log.jsonl`).", ""]
    lines += table(["run", "logged steps", "first", "last", "min", "min at step"], body)
    for name, run in runs:
        if run.bad_log_lines:
            lines += ["", f"{name}: {run.bad_log_lines} unreadable line(s) in the training log were skipped."]
    return lines + [""]


def _step(value: float) -> object:
    return int(value) if float(value).is_integer() else value


def _timings_section(runs: list[tuple[str, RunSummary]]) -> list[str]:
    lines = ["## Wall time and tokens", ""]
    body = []
    for name, run in runs:
        if not run.timings:
            continue
        total_s, total_gen, total_train = 0.0, 0, 0
        for stage, entry in run.timings.items():
            entry = entry if isinstance(entry, dict) else {"seconds": entry}
            seconds, generated, trained = (
                entry.get(k) for k in ("seconds", "generated_tokens", "train_tokens")
            )
            seconds = float(seconds) if _is_number(seconds) else None
            generated = generated if _is_number(generated) else None
            trained = trained if _is_number(trained) else None
            total_s += seconds or 0.0
            total_gen += generated or 0
            total_train += trained or 0
            tokens = generated if generated is not None else trained
            rate = tokens / seconds if tokens is not None and seconds else None
            body.append([name, stage, seconds, generated, trained, rate])
        body.append([name, "**total**", total_s, total_gen, total_train, None])
    if not body:
        return lines + ["No timings (`timings.json`).", ""]
    header = ["run", "stage", "seconds", "generated tokens", "trained tokens", "tokens/s"]
    note = "Trained tokens: non-padding tokens the training step ran through (prompt and target)."
    return lines + table(header, body) + ["", note, ""]


def _runs_section(runs: list[tuple[str, RunSummary]]) -> list[str]:
    body = [
        [name, str(run.path), run.model, run.task, run.seed, ", ".join(run.labels())] for name, run in runs
    ]
    return ["## Runs", "", *table(["run", "directory", "model", "task", "seed", "evaluated"], body), ""]


def _missing_section(runs: list[tuple[str, RunSummary]]) -> list[str]:
    lines = ["## Missing", ""]
    gaps = [(name, run.missing) for name, run in runs if run.missing]
    if not gaps:
        return lines + ["Every run has all expected files.", ""]
    lines += [f"- **{name}**: {', '.join(f'`{m}`' for m in missing)}" for name, missing in gaps]
    return lines + [""]


# ---------------------------------------------------------------------------------------------------------
# Plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede the pyplot import
    import matplotlib.pyplot as plt

    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "set"


def _save(fig, path: Path, tight: bool = False) -> None:
    with records.atomic_writer(path) as handle:
        fig.savefig(handle, format="png", dpi=DPI, bbox_inches="tight" if tight else None)


def _styles(runs: list[tuple[str, RunSummary]]) -> dict[tuple[str, str], dict]:
    """One colour per run, one line style / marker per label, so run and label read apart."""
    palette = [f"C{i}" for i in range(10)]
    dashes = {"reference": "--", "trained": "-"}
    others = [":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
    markers = {"reference": "o", "trained": "s"}
    extra = ["^", "v", "D", "P", "X"]
    all_labels = sorted({lab for _, run in runs for lab in run.evals}, key=_label_key)
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
            keys = _multi_keys([metrics])
            xs = [int(k.split("@")[1]) for k in keys]
            ys = [metrics.get(k) if _is_number(metrics.get(k)) else math.nan for k in keys]
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
    series = [(who, m.get("per_turn") or []) for who, m in _eval_rows(runs, eval_set)]
    width_t = max(len(values) for _, values in series)
    fig, ax = plt.subplots(figsize=FIGSIZE)
    bar = 0.8 / len(series)
    styles = _styles(runs)
    for i, (who, values) in enumerate(series):
        name, label = who.rsplit(" / ", 1)
        xs = [t + 1 + (i - (len(series) - 1) / 2) * bar for t in range(len(values))]
        ys = [v if _is_number(v) else math.nan for v in values]
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


def _write_plots(runs, sets, samples, plot_dir: Path) -> list[tuple[str, str]]:
    """Draw every plot the data allows; return (caption, file name) pairs."""
    plt = _pyplot()
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


# ---------------------------------------------------------------------------------------------------------
# Entry points


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
        made = _write_plots(runs, sets, samples, out_dir / "plots")
    else:
        out_dir.mkdir(parents=True, exist_ok=True)
    title = "drift-lite report: " + ", ".join(name for name, _ in runs)
    lines = [f"# {title}", ""]
    lines += _runs_section(runs)
    lines += _metrics_section(runs, sets)
    lines += _weights_section(runs, samples)
    lines += _loss_section(runs)
    lines += _timings_section(runs)
    lines += ["## Plots", ""]
    lines += [f"![{caption}](plots/{name})\n" for caption, name in made] or ["No plots.", ""]
    lines += _missing_section(runs)
    report = out_dir / "report.md"
    with records.atomic_writer(report) as handle:
        handle.write(("\n".join(lines).rstrip() + "\n").encode("utf-8"))
    return report


def _plain(value: object) -> str:
    return "n/a" if value is None else fmt(value)  # ASCII for terminals


def _delta(before: object, after: object) -> str:
    if _is_number(before) and _is_number(after):
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
        keys = _multi_keys([m for m in (before, after) if m is not None])
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
            own = _multi_keys([metrics])
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
