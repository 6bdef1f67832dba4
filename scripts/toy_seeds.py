"""DRIFT and the same-rollout baselines over several seeds on the toy recipe: the README's seed table.

For each seed S it runs `drift-lite run RECIPE --out OUT/drift-sS seed=S train.seed=S`, then, on a copy of
that run directory (so the rollouts are reused and only the weight, train and trained-eval steps rerun),
plain SFT (`weights.scheme=uniform`) and rejection-sampling SFT (`weights.scheme=correct_only`). It prints a
Markdown table of multi@1 and multi@5 per seed and mean ± sd over seeds, and writes it to OUT/seeds.md.
Completed runs are skipped by `drift-lite run` itself, so a rerun only does what is missing.

    .venv/bin/python scripts/toy_seeds.py --seeds 0 1 2 --out runs/seeds
    .venv/bin/drift-lite report runs/seeds/{drift,rft,sft}-s0 --out runs/seeds/compare-s0
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

SCHEMES = {"drift": "drift", "rft": "correct_only", "sft": "uniform"}
LABELS = {"drift": "DRIFT", "rft": "rejection-sampling SFT", "sft": "plain SFT"}


def run(recipe: str, out: Path, overrides: list[str], force: bool = False) -> None:
    """One `drift-lite run`; its output goes to out/../<name>.log."""
    command = [sys.executable, "-m", "drift_lite.cli", "run", recipe, "--out", str(out)]
    command += ["--force"] * force + overrides
    log = out.parent / f"{out.name}.log"
    with log.open("w") as handle:
        if subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"failed: {' '.join(command)} (see {log})")


def metrics(run_dir: Path, label: str, set_name: str) -> dict:
    """The eval metrics of a run directory's reference or trained model."""
    return json.loads((run_dir / f"eval-{label}" / f"eval-{set_name}.json").read_text())


def mean_sd(values: list[float]) -> str:
    """`mean ± sd (min–max)` of a list of proportions."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f} ({min(values):.3f}–{max(values):.3f})"


def main() -> None:
    """Run the seeds and print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--recipe", default="recipes/toy/drift.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    parser.add_argument("--set", default="toy", help="eval set name (eval-<set>.json)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {name: [] for name in SCHEMES}
    reference = None
    for seed in args.seeds:
        drift_dir = args.out / f"drift-s{seed}"
        run(args.recipe, drift_dir, [f"seed={seed}", f"train.seed={seed}"])
        reference = metrics(drift_dir, "reference", args.set)
        for name, scheme in SCHEMES.items():
            run_dir = args.out / f"{name}-s{seed}"
            if name != "drift":
                if not run_dir.exists():
                    skip = shutil.ignore_patterns("adapter", "eval-trained")
                    shutil.copytree(drift_dir, run_dir, ignore=skip)
                overrides = [f"seed={seed}", f"train.seed={seed}", f"name=toy-{name}"]
                run(args.recipe, run_dir, [*overrides, f"weights.scheme={scheme}"], force=True)
            results[name].append(metrics(run_dir, "trained", args.set))
            print(f"seed {seed} {name}: multi@1 {results[name][-1]['multi@1']:.3f}", flush=True)
    seeds = " / ".join(str(s) for s in args.seeds)
    lines = [
        f"| model | multi@1, seed {seeds} | multi@1 mean ± sd (range) "
        f"| multi@5, seed {seeds} | multi@5 mean ± sd (range) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| reference (greedy) | {reference['multi@1']:.3f} | | {reference['multi@5']:.3f} | |",
    ]
    for name, runs in results.items():
        one = [r["multi@1"] for r in runs]
        five = [r["multi@5"] for r in runs]
        lines.append(
            f"| {LABELS[name]} | {' / '.join(f'{v:.3f}' for v in one)} | {mean_sd(one)} "
            f"| {' / '.join(f'{v:.3f}' for v in five)} | {mean_sd(five)} |"
        )
    table = "\n".join(lines) + "\n"
    (args.out / "seeds.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
