"""Does a LoRA learning rate learn? Train one adapter per rate on the same weighted rows and measure each.

For every rate: `drift_lite.training.train` (the recipe with `train.lr` set, all else the recipe's), then
(1) the method's objective on the training rows, mean_i w_i · token-mean NLL_i over every row, before
training (the base: LoRA's B starts at zero) and after, in one full pass without dropout; (2) how far the
adapter moved, the largest |lora_B| entry; (3) with `--eval`, the recipe's multi-turn evaluation of base +
adapter. Writes `lr-check.json` and `lr-check.md` in --out; finished adapters are reused by a rerun.

Why: the release fine-tunes all weights at 5e-6; the kit's paper recipes train LoRA adapters, whose update
starts at zero and has rank 16, at 1e-4 (docs/paper-settings.md). This measures on a CPU, with a real chat
model, whether each rate moves the objective within a run's steps:

    OMP_NUM_THREADS=1 python scripts/lr_check.py recipes/cpu/smollm2-choice.yaml \\
        --data runs/cpu-smollm2-choice/runs/drift-s0/weighted.jsonl --out runs/lr-check \\
        --lr 5e-6 --lr 1e-4 --eval

Recipe overrides follow the recipe (`key=value`), e.g. `train.lr_scheduler=constant_with_warmup`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from drift_lite.errors import UserError
from drift_lite.examples import ExampleDataset, WeightedCollator, build_examples, read_weighted_rows
from drift_lite.files import atomic_writer, write_json_atomic
from drift_lite.loss import sequence_nll
from drift_lite.models import load_model, load_tokenizer, resolve_model_path
from drift_lite.recipe import load_recipe


@torch.no_grad()
def objective(recipe, data: str, adapter: str | None) -> float:
    """mean_i w_i · token-mean NLL_i over every row of `data` (the loss of one step over all rows)."""
    base = resolve_model_path(recipe.model, recipe.toy)
    tokenizer = load_tokenizer(base, recipe.model)
    examples, _ = build_examples(read_weighted_rows(data), tokenizer, recipe.train, recipe.model.name)
    model = load_model(base, recipe.model, adapter=adapter, train=recipe.train)
    collate, dataset = WeightedCollator(tokenizer.pad_token_id), ExampleDataset(examples)
    total, rows = 0.0, 0
    size = recipe.train.batch_size
    for start in range(0, len(dataset), size):
        batch = collate([dataset[i] for i in range(start, min(start + size, len(dataset)))])
        batch = {k: v.to(model.device) for k, v in batch.items()}
        nll = sequence_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
        total += float((batch["weight"] * nll.float()).sum())
        rows += len(nll)
    return total / rows


def largest_lora_b(adapter: Path) -> float:
    """The largest |entry| of the adapter's lora_B matrices (0 before any step)."""
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    return max(float(v.abs().max()) for k, v in weights.items() if "lora_B" in k)


def check(
    recipe_path: str | None, data: str, out: Path, lrs: list[float], overrides: list[str], evaluate: bool
):
    """Train and measure one adapter per learning rate; returns the results (also written to `out`)."""
    from drift_lite.evaluation import evaluate as run_eval
    from drift_lite.training import train

    out.mkdir(parents=True, exist_ok=True)
    recipe = load_recipe(recipe_path, overrides)
    results = {
        "recipe": recipe_path,
        "data": data,
        "overrides": overrides,
        "base_objective": None,
        "runs": [],
    }
    results["base_objective"] = objective(recipe, data, None)
    for lr in lrs:
        run_recipe = load_recipe(recipe_path, [*overrides, f"train.lr={lr}"])
        adapter = out / f"lr-{lr:g}"
        start = time.perf_counter()
        summary = train(run_recipe, data, adapter, show_progress=False)
        entry = {
            "lr": lr,
            "steps": summary["steps"],
            # a finished adapter is reused: its own training time, not this call's
            "train_s": round(summary.get("runtime_s", time.perf_counter() - start), 1),
            "first_logged_loss": None,
            "objective": objective(run_recipe, data, str(adapter)),
            "largest_lora_b": largest_lora_b(adapter),
        }
        log = adapter / "train_log.jsonl"
        if log.exists():
            losses = [json.loads(line).get("loss") for line in log.read_text().splitlines() if line.strip()]
            losses = [x for x in losses if x is not None]
            entry["first_logged_loss"], entry["last_logged_loss"] = losses[0], losses[-1]
        if evaluate:
            metrics = run_eval(run_recipe, out / f"eval-lr-{lr:g}", adapter=str(adapter), show_progress=False)
            entry["eval"] = {name: value["metrics"] for name, value in metrics.items()}
        results["runs"].append(entry)
        write_json_atomic(out / "lr-check.json", results)
    if evaluate:
        metrics = run_eval(recipe, out / "eval-base", show_progress=False)
        results["base_eval"] = {name: value["metrics"] for name, value in metrics.items()}
    write_json_atomic(out / "lr-check.json", results)
    with atomic_writer(out / "lr-check.md") as handle:
        handle.write(markdown(results).encode())
    return results


def markdown(results: dict) -> str:
    """One table row per learning rate (and the base), with the measured figures."""
    sets = sorted(results.get("base_eval", {}))
    head = "| lr | steps | objective (base → trained) | largest lora_B |"
    head += "".join(f" {s} multi@1 | {s} multi@5 |" for s in sets)
    lines = [head, "|" + " ---: |" * (4 + 2 * len(sets))]
    base = results["base_objective"]
    if sets:
        cells = "".join(
            f" {results['base_eval'][s]['multi@1']:.3f} | {results['base_eval'][s]['multi@5']:.3f} |"
            for s in sets
        )
        lines.append(f"| base | 0 | {base:.4f} | 0 |{cells}")
    for run in results["runs"]:
        row = f"| {run['lr']:g} | {run['steps']} | {base:.4f} → {run['objective']:.4f} |"
        row += f" {run['largest_lora_b']:.2e} |"
        for s in sets:
            m = run["eval"][s]
            row += f" {m['multi@1']:.3f} | {m['multi@5']:.3f} |"
        lines.append(row)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("recipe", help="recipe YAML file (or a packaged recipe name)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="recipe overrides")
    parser.add_argument("--data", required=True, help="weighted rows (drift-lite weight's output)")
    parser.add_argument("--out", required=True, type=Path, help="folder for adapters and lr-check.json/.md")
    parser.add_argument("--lr", type=float, action="append", required=True, help="a rate to try (repeat)")
    parser.add_argument("--eval", action="store_true", help="also evaluate base and each adapter")
    args = parser.parse_args(argv)
    try:
        results = check(args.recipe, args.data, args.out, args.lr, args.overrides, args.eval)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path of the user's (--out a file, a read-only folder): one line, not a traceback
        print(f"error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
        return 2
    print(markdown(results), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
