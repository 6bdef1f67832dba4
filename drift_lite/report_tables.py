"""Markdown tables of the report: runs, multi-turn metrics, per-turn accuracy, weights, loss, timings."""

from __future__ import annotations

import json
import math
import re

from drift_lite.report_runs import RunSummary, is_number

METRIC_COLUMNS = (
    ("correction_rate", "correction"),
    ("repeat_rate", "repeats"),
    ("format_error_rate", "format errors"),
    ("mean_turns", "mean turns"),
)


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#&~$!])")


def md_text(text: str) -> str:
    """`text` (a run or set name) as literal inline Markdown: specials backslash-escaped, one line.

    Pipes are left to `table`, which escapes every cell's pipes (a second escape would break the cell).
    """
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _md_or_none(value: object) -> object:
    return md_text(value) if isinstance(value, str) else value


def labels(run: RunSummary) -> str:
    """The run's evaluated labels (folder names eval-<label>), escaped, comma-separated."""
    return ", ".join(md_text(label) for label in run.labels())


def _escaped(runs: list[tuple[str, RunSummary]]) -> list[tuple[str, RunSummary]]:
    return [(md_text(name), run) for name, run in runs]


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
        i > 0 and all(v is None or is_number(v) for v in (r[i] if i < len(r) else None for r in rows))
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


def multi_keys(metrics: list[dict]) -> list[str]:
    """`multi@1` .. `multi@K` for the largest K among the metrics."""
    k_max = max((sum(1 for k in m if k.startswith("multi@")) for m in metrics), default=0)
    return [f"multi@{k}" for k in range(1, k_max + 1)]


def eval_rows(runs: list[tuple[str, RunSummary]], eval_set: str) -> list[tuple[str, dict]]:
    """(`run / label`, metrics) for every run and label that evaluated `eval_set`."""
    return [
        (f"{name} / {label}", run.evals[label][eval_set])
        for name, run in runs
        for label in run.labels()
        if eval_set in run.evals[label]
    ]


def metrics_section(runs: list[tuple[str, RunSummary]], sets: list[str]) -> list[str]:
    """Multi-turn metrics and per-turn accuracy tables, one per eval set."""
    lines = ["## Multi-turn metrics", ""]
    runs = _escaped(runs)
    if not sets:
        return lines + ["No evaluation results (no `eval-*/eval-*.json`).", ""]
    for eval_set in sets:
        rows = eval_rows(runs, eval_set)
        keys = multi_keys([m for _, m in rows])
        header = ["run / label", "n", *keys, *(title for _, title in METRIC_COLUMNS)]
        body = [
            [who, m.get("n"), *(m.get(k) for k in keys), *(m.get(k) for k, _ in METRIC_COLUMNS)]
            for who, m in rows
        ]
        lines += [f"### {md_text(eval_set)}", "", *table(header, body), ""]
    lines += ["## Per-turn accuracy", "", "Solved at turn t / still active at turn t.", ""]
    for eval_set in sets:
        rows = eval_rows(runs, eval_set)
        width = max((len(m.get("per_turn") or []) for _, m in rows), default=0)
        body = []
        for who, m in rows:
            per_turn = list(m.get("per_turn") or [])
            body.append([who, *per_turn, *([None] * (width - len(per_turn)))])
        lines += [
            f"### {md_text(eval_set)}",
            "",
            *table(["run / label", *(f"t{t}" for t in range(1, width + 1))], body),
        ]
        lines.append("")
    return lines


def weights_section(
    runs: list[tuple[str, RunSummary]], samples: dict[str, tuple[list[float], int]]
) -> list[str]:
    """Weight diagnostics and the spread of the weights in `weighted.jsonl`."""
    lines = ["## Weights", ""]
    runs = _escaped(runs)
    with_diag = [(name, run.diagnostics) for name, run in runs if run.diagnostics is not None]
    if with_diag:
        # per_group (one entry per prompt) stays in the diagnostics file: a table cell cannot show it
        flat = [(name, _flatten({k: v for k, v in d.items() if k != "per_group"})) for name, d in with_diag]
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
            low, high = min(values, default=None), max(values, default=None)
            body.append([md_text(name), count, low, median, high, near_zero])
        header = ["run", "rows", "min", "median", "max", "share < 0.01"]
        lines += ["Weights in `weighted.jsonl`:", "", *table(header, body), ""]
    return lines


def loss_section(runs: list[tuple[str, RunSummary]]) -> list[str]:
    """First, last and lowest training loss of each run."""
    lines = ["## Training loss", ""]
    runs = _escaped(runs)
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


def timings_section(runs: list[tuple[str, RunSummary]]) -> list[str]:
    """Wall time and token counts of each stage of each run."""
    lines = ["## Wall time and tokens", ""]
    runs = _escaped(runs)
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
            seconds = float(seconds) if is_number(seconds) else None
            generated = generated if is_number(generated) else None
            trained = trained if is_number(trained) else None
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


def runs_section(runs: list[tuple[str, RunSummary]]) -> list[str]:
    """Which runs the report covers: folder, model, task, seed, evaluated labels."""
    runs = _escaped(runs)
    body = [
        [name, md_text(str(run.path)), _md_or_none(run.model), _md_or_none(run.task), run.seed, labels(run)]
        for name, run in runs
    ]
    return ["## Runs", "", *table(["run", "directory", "model", "task", "seed", "evaluated"], body), ""]


def missing_section(runs: list[tuple[str, RunSummary]]) -> list[str]:
    """The expected files each run lacks."""
    lines = ["## Missing", ""]
    runs = _escaped(runs)
    gaps = [(name, run.missing) for name, run in runs if run.missing]
    if not gaps:
        return lines + ["Every run has all expected files.", ""]
    lines += [f"- **{name}**: {', '.join(f'`{m}`' for m in missing)}" for name, missing in gaps]
    return lines + [""]
