"""results.md of a comparison, from the numbers drift_lite.compare_stats collected (results.json's)."""

from __future__ import annotations

from drift_lite.compare_stats import NAMES, QUALITY, paired_keys, stage_order


def pm(stat: dict, signed: bool = False, digits: int = 3, err: str = "sd") -> str:
    """`mean ± sd` (or ± se with err="se") of a mean_sd / paired dict; a dash when missing."""
    mean = stat.get("mean")
    if mean is None:
        return "–"
    spread = stat.get(err)
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text + (f" ± {spread:.{digits}f}" if spread is not None else "")


def _num(value: object, digits: int = 0) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def _seeds(values: list) -> str:
    return " / ".join("–" if v is None else f"{v:.3f}" for v in values)


def markdown(results: dict) -> str:
    """results.md: quality, paired differences, per-turn accuracy, cost and the cost ratio."""
    from drift_lite.report_tables import table

    k = results["top_k"]
    top = f"multi@{k}"
    methods = results["methods"]
    ref_name = results["reference_method"]
    ref_label = methods[ref_name]["label"]
    seeds = ", ".join(str(s) for s in results["seeds"])
    lines = [
        "# Comparison",
        "",
        f"Spec `{results['spec']}`, seeds {seeds}, eval set `{results['eval_set']}` (eval-trained; the "
        f"reference model from {ref_label}'s eval-reference). Mean ± sd over seeds; every per-seed value "
        "is in results.json.",
        "",
        "## Quality",
        "",
    ]
    header = ["method", "multi@1", top, f"{top} per seed"] + [NAMES[q] for q in QUALITY]
    rows = []
    for label, entry in [("reference model", results["reference_model"])] + [
        (m["label"], m) for m in methods.values()
    ]:
        s = entry["summary"]
        rows.append(
            [label, pm(s["multi@1"]), pm(s[top]), _seeds(entry["per_seed"][top])]
            + [pm(s[q]) for q in QUALITY]
        )
    lines += table(header, rows)
    lines += ["", f"## Paired differences against {ref_label} (per seed; mean ± standard error)", ""]
    keys = paired_keys(k)
    header = ["method"] + [f"Δ {NAMES.get(key, key)}" for key in keys] + [f"Δ {top} per seed"]
    rows = [
        [m["label"]]
        + [pm(m["paired"][key], signed=True, err="se") for key in keys]
        + [" / ".join("–" if d is None else f"{d:+.3f}" for d in m["paired"][top]["per_seed"])]
        for name, m in methods.items()
        if name != ref_name
    ]
    lines += table(header, rows)
    lines += ["", "## Per-turn accuracy (solved at turn t / still active at t)", ""]
    header = ["method"] + [f"turn {t}" for t in range(1, k + 1)]
    rows = [["reference model"] + [pm(s) for s in results["reference_model"]["per_turn"]["summary"]]]
    rows += [[m["label"]] + [pm(s) for s in m["per_turn"]["summary"]] for m in methods.values()]
    lines += table(header, rows)
    lines += _cost_lines(results, table)
    lines += _ratio_lines(results)
    missing = [run for m in methods.values() for run in m["missing"]]
    if missing:
        lines += ["", f"**Missing evaluations** (not counted): {', '.join(missing)}"]
    return "\n".join(lines) + "\n"


def _cost_lines(results: dict, table) -> list[str]:
    methods = results["methods"]
    stages = sorted({s for m in methods.values() for s in m["cost"]["stage_seconds"]}, key=stage_order)
    header = ["method"] + [f"{s} s" for s in stages]
    header += ["training s", "generated tokens", "trained tokens", "optimizer steps"]
    rows = []
    notes = []
    for m in methods.values():
        c = m["cost"]
        rows.append(
            [m["label"]]
            + [_num(c["stage_seconds"][s]["mean"], 1) if s in c["stage_seconds"] else "–" for s in stages]
            + [_num(c["train_seconds"]["mean"], 1)]
            + [_num(c[key]["mean"]) for key in ("generated_tokens", "train_tokens", "steps")]
        )
        if c["shared"]:
            notes.append(
                f"{m['label']}: {', '.join(c['shared'])} shared with another method's run (same settings)"
            )
        if c["resumed"]:
            notes.append(
                f"{m['label']}: {', '.join(c['resumed'])} resumed (seconds cover the last part only)"
            )
    lines = [
        "",
        "## Cost (mean over seeds)",
        "",
        "Wall time per stage; training s = the stages that make the model (all but evaluation); generated "
        "tokens are those of the training stages; trained tokens = non-padding tokens the optimizer saw.",
        "",
    ]
    lines += table(header, rows)
    if notes:
        lines += ["", "Shared stages are measured once and charged to every run that uses them:", ""]
        lines += [f"- {n}" for n in notes]
    return lines


def _subset_note(results: dict, name: str, label: str, ref_label: str) -> list[str]:
    """A warning when the curve was scored on fewer problems than the evaluation the target comes from."""
    size = results["methods"][name].get("curve_eval_size")
    ref = results["methods"][results["reference_method"]]["per_seed"].get("n") or []
    n = max((v for v in ref if v is not None), default=None)
    if size is None or n is None or size >= n:
        return []
    return [
        "",
        f"Note: {label}'s curve was scored on the first {size} of the {n} evaluation problems "
        f"(`online.eval_size`), {ref_label}'s target on all {n}: the crossing is approximate.",
    ]


def _ratio_lines(results: dict) -> list[str]:
    lines = []
    ref_label = results["methods"][results["reference_method"]]["label"]
    for name, ratio in results["cost_ratio"].items():
        label = results["methods"][name]["label"]
        key = ratio["metric"]
        lines += [
            "",
            f"## Cost ratio: {label} against {ref_label}",
            "",
            f"{label}'s generated tokens and training wall time until its curve first reaches "
            f"{ref_label}'s mean {key} ({_num(ratio['target'], 3)}), over {ref_label}'s training totals "
            f"({_num(ratio['reference_generated_tokens'])} generated tokens, "
            f"{_num(ratio['reference_train_seconds'], 1)} s). Reached in {ratio['reached']} of "
            f"{ratio['seeds']} seeds; where it was not, its best point is used.",
            *_subset_note(results, name, label, ref_label),
            "",
            f"**Generated tokens: {pm(ratio['token_ratio'], digits=2)}x; wall time: "
            f"{pm(ratio['wall_ratio'], digits=2)}x** (mean ± sd over seeds)",
            "",
            "| seed | reached | iteration | "
            + key
            + " | generated tokens | wall s | token ratio | wall ratio |",
            "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for seed, p in zip(results["seeds"], ratio["per_seed"]):
            if p is None:
                lines.append(f"| {seed} | no curve | | | | | | |")
                continue
            lines.append(
                f"| {seed} | {'yes' if p['reached'] else 'no (best point)'} | {p['iteration']} | "
                f"{p[key]:.3f} | {_num(p['generated_tokens'])} | {_num(p['wall_s'], 1)} | "
                f"{_num(p['token_ratio'], 2)} | {_num(p['wall_ratio'], 2)} |"
            )
    return lines
