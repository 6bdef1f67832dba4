"""The numbers of a comparison, read from its run folders: means ± sd over seeds, paired differences, costs,
and the online-RL cost ratio.

Every figure is stored with the per-seed values it was computed from, so results.json can be checked by hand:
- quality: the first eval set's `eval-trained/eval-<set>.json` of each run (the reference model: the
  reference method's `eval-reference/`), mean and sample sd over seeds;
- paired differences: per seed, method − reference method; mean and standard error (sd / √seeds);
- cost: `timings.json` of each run; stages whose name starts with `eval` are evaluation, the others training
  (rollout, weight, train, online-train ...); per stage and in total, mean over seeds;
- cost ratio: for a method with `online/curve.jsonl`, per seed the first curve point whose multi@K reaches the
  reference method's mean multi@K (or its best point, if none does: `reached` false), its cumulative generated
  tokens and wall time divided by the reference method's mean training-stage totals.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from drift_lite.files import read_json

QUALITY = ("correction_rate", "repeat_rate", "format_error_rate", "mean_turns")
COUNTS = ("n",)
PAIRED = ("multi@1", "multi@K", "correction_rate", "repeat_rate")
NAMES = {
    "correction_rate": "correction",
    "repeat_rate": "repeats",
    "format_error_rate": "format errors",
    "mean_turns": "mean turns",
}


def run_name(method: str, seed: int) -> str:
    """The run folder of a method at a seed, under DIR/runs/."""
    return f"{method}-s{seed}"


def mean_sd(values: list) -> dict:
    """{"mean", "sd", "n"} of the non-missing values (sample sd; None below two values)."""
    xs = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "sd": statistics.stdev(xs) if len(xs) > 1 else None,
        "n": len(xs),
    }


def paired(values: list, against: list) -> dict:
    """Per-seed differences `values − against` with their mean and standard error (sd / √n)."""
    diffs = [None if a is None or b is None else a - b for a, b in zip(values, against)]
    xs = [d for d in diffs if d is not None]
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return {"per_seed": diffs, "mean": statistics.fmean(xs) if xs else None, "se": se, "n": len(xs)}


def read_curve(path: Path) -> list[dict]:
    """The rows of an online/curve.jsonl, by iteration (a cut last line of a killed run is skipped)."""
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "iteration" in row:
            rows.append(row)
    return sorted(rows, key=lambda r: r["iteration"])


def _cost(timings: dict) -> dict:
    """One run's cost from its timings.json: seconds per stage, training totals, evaluation totals."""
    stages = {k: v for k, v in timings.items() if isinstance(v, dict)}
    train = {k: v for k, v in stages.items() if not k.startswith("eval")}

    def total(parts: dict, key: str) -> float | None:
        found = [v[key] for v in parts.values() if isinstance(v.get(key), (int, float))]
        return sum(found) if found else None

    return {
        "stage_seconds": {k: v.get("seconds") for k, v in stages.items()},
        "train_seconds": total(train, "seconds"),
        "generated_tokens": total(train, "generated_tokens"),
        "train_tokens": total(train, "train_tokens"),
        "steps": total(train, "steps"),
        "eval_seconds": total({k: v for k, v in stages.items() if k not in train}, "seconds"),
        "shared": sorted(k for k, v in stages.items() if v.get("shared_from")),
        "resumed": sorted(k for k, v in stages.items() if v.get("resumed")),
    }


def _top_k(metrics: list[dict | None]) -> int:
    ks = [int(k.split("@")[1]) for m in metrics if m for k in m if k.startswith("multi@")]
    return max(ks) if ks else 5


def collect(spec, out: Path, recipes: dict) -> dict:
    """Everything results.json holds, computed from the run folders under `out/runs/`."""
    from drift_lite.evaluation import set_name

    seeds = spec.seeds
    runs: dict[str, list[dict]] = {}
    for method in spec.methods:
        per_seed = []
        for seed in seeds:
            recipe = recipes[(method.name, seed)]
            root = out / "runs" / run_name(method.name, seed)
            eval_set = spec.eval_set or set_name(recipe.eval.sets[0])
            per_seed.append(
                {
                    "run": str(root.relative_to(out)),
                    "eval_set": eval_set,
                    "trained": read_json(root / "eval-trained" / f"eval-{eval_set}.json"),
                    "reference": read_json(root / "eval-reference" / f"eval-{eval_set}.json"),
                    "cost": _cost(read_json(root / "timings.json") or {}),
                    "curve": read_curve(root / "online" / "curve.jsonl"),
                }
            )
        runs[method.name] = per_seed
    ref_runs = runs[spec.reference_method]
    k = _top_k([r["trained"] for r in ref_runs] + [r["reference"] for r in ref_runs])
    keys = [f"multi@{i}" for i in range(1, k + 1)]
    results: dict = {
        "spec": str(spec.path),
        "seeds": seeds,
        "reference_method": spec.reference_method,
        "eval_set": ref_runs[0]["eval_set"],
        "top_k": k,
        "reference_model": _quality([r["reference"] for r in ref_runs], keys, k),
        "methods": {},
    }
    results["reference_model"]["runs"] = [r["run"] for r in ref_runs]
    for method in spec.methods:
        per_seed = runs[method.name]
        entry = {
            "label": method.label,
            "recipe": method.recipe,
            "overrides": [*spec.overrides, *method.overrides],
            "runs": [r["run"] for r in per_seed],
            "missing": [r["run"] for r in per_seed if r["trained"] is None],
            **_quality([r["trained"] for r in per_seed], keys, k),
        }
        ref_values = _quality([r["trained"] for r in ref_runs], keys, k)["per_seed"]
        entry["paired"] = {key: paired(entry["per_seed"][key], ref_values[key]) for key in paired_keys(k)}
        entry["cost"] = _cost_summary([r["cost"] for r in per_seed])
        entry["curves"] = [r["curve"] for r in per_seed]
        if any(entry["curves"]):  # the curve is scored on the first online.eval_size problems of the eval set
            entry["curve_eval_size"] = recipes[(method.name, seeds[0])].online.eval_size
        results["methods"][method.name] = entry
    results["cost_ratio"] = {
        name: ratio
        for name in results["methods"]
        if name != spec.reference_method
        and (ratio := cost_ratio(results["methods"][name], results["methods"][spec.reference_method], k))
    }
    return results


def paired_keys(k: int) -> list[str]:
    """The metrics paired differences are reported for, with multi@K spelled out."""
    return [key.replace("@K", f"@{k}") for key in PAIRED]


def _quality(metrics: list[dict | None], keys: list[str], k: int) -> dict:
    """Per-seed values and mean ± sd of the multi@k, rate and per-turn metrics of one eval per seed."""
    per_seed = {key: [m.get(key) if m else None for m in metrics] for key in [*keys, *QUALITY, *COUNTS]}
    turns = [list(m.get("per_turn") or []) + [None] * k if m else [None] * k for m in metrics]
    per_turn = [[t[i] for t in turns] for i in range(k)]  # per_turn[i][seed]
    return {
        "per_seed": per_seed,
        "summary": {key: mean_sd(values) for key, values in per_seed.items()},
        "per_turn": {"per_seed": per_turn, "summary": [mean_sd(v) for v in per_turn]},
    }


def _cost_summary(costs: list[dict]) -> dict:
    stages = sorted({s for c in costs for s in c["stage_seconds"]}, key=stage_order)
    totals = ("train_seconds", "generated_tokens", "train_tokens", "steps", "eval_seconds")
    return {
        "per_seed": costs,
        "stage_seconds": {s: mean_sd([c["stage_seconds"].get(s) for c in costs]) for s in stages},
        **{key: mean_sd([c[key] for c in costs]) for key in totals},
        "shared": sorted({s for c in costs for s in c["shared"]}),
        "resumed": sorted({s for c in costs for s in c["resumed"]}),
    }


def stage_order(stage: str) -> tuple[int, str]:
    """Sort key: the run's stages in pipeline order, unknown ones after them by name."""
    known = ("rollout", "weight", "train", "online-train", "eval-reference", "eval-trained")
    return (known.index(stage) if stage in known else len(known), stage)


def cost_ratio(method: dict, reference: dict, k: int) -> dict | None:
    """Online RL's generated tokens and wall time until it first reaches the reference method's mean multi@k
    (its best point if it never does), over the reference method's training totals; None without curves."""
    curves = method["curves"]
    if not any(curves):
        return None
    key = f"multi@{k}"
    target = reference["summary"][key]["mean"]
    ref_tokens = reference["cost"]["generated_tokens"]["mean"]
    ref_wall = reference["cost"]["train_seconds"]["mean"]
    per_seed = []
    for curve in curves:
        points = [r for r in curve if r.get(key) is not None]
        if not points or target is None:
            per_seed.append(None)
            continue
        hits = [r for r in points if r[key] >= target - 1e-12]
        # never reached: its best trained point (iteration 0 is the reference itself, which costs nothing and
        # would make a ratio of 0); max keeps the first best
        trained = [r for r in points if r.get("iteration", 0) > 0] or points
        point = hits[0] if hits else max(trained, key=lambda r: r[key])
        per_seed.append(
            {
                "reached": bool(hits),
                "iteration": point["iteration"],
                key: point[key],
                "generated_tokens": point.get("generated_tokens"),
                "wall_s": point.get("wall_s"),
                "token_ratio": _div(point.get("generated_tokens"), ref_tokens),
                "wall_ratio": _div(point.get("wall_s"), ref_wall),
            }
        )
    found = [p for p in per_seed if p]
    return {
        "metric": key,
        "target": target,
        "reference_generated_tokens": ref_tokens,
        "reference_train_seconds": ref_wall,
        "per_seed": per_seed,
        "reached": sum(p["reached"] for p in found),
        "seeds": len(found),
        "token_ratio": mean_sd([p["token_ratio"] for p in found]),
        "wall_ratio": mean_sd([p["wall_ratio"] for p in found]),
    }


def _div(a: object, b: object) -> float | None:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or b == 0:
        return None
    return a / b
