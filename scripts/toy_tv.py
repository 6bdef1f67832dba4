"""First-turn TV to π* of the toy reference and the DRIFT, plain SFT and RFT adapters (issue 17 item 2).

Give three run directories of `drift-lite run` trained on the same rollouts (as scripts/toy_seeds.py makes
them: the SFT and RFT runs are copies of the DRIFT run with another `weights.scheme`). The reference, task,
env and sampling come from RUN_DRIFT's recipe.yaml, each adapter from RUN/adapter. Writes OUT/toy-tv.json
and OUT/toy-tv.md (drift_lite/theory_toy.py says what is measured) and prints the table.

    .venv/bin/python scripts/toy_tv.py runs/seeds/drift-s0 runs/seeds/sft-s0 runs/seeds/rft-s0 \
        --out runs/seeds/toy-tv-s0 [--prompts 64] [--samples 64]
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

from drift_lite.errors import UserError


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_runs(runs: dict[str, Path]) -> None:
    """Raise UserError unless every run has an adapter, a recipe and the same rollouts.jsonl."""
    for label, run in runs.items():
        for need in ("recipe.yaml", "adapter/adapter_config.json"):
            if not (run / need).is_file():
                raise UserError(f"{label}: {run}/{need} not found (is it a finished `drift-lite run`?)")
    hashes = {label: _sha256(run / "rollouts.jsonl") for label, run in runs.items()}
    if None in hashes.values() or len(set(hashes.values())) != 1:
        raise UserError(f"the runs were not trained on the same rollouts.jsonl: {hashes}")


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run toy_tv, print the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_drift", type=Path)
    parser.add_argument("run_sft", type=Path)
    parser.add_argument("run_rft", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=64, help="training prompts to use (0: all)")
    parser.add_argument("--samples", type=int, default=64, help="sampled first turns per prompt and model")
    args = parser.parse_args(argv)
    try:
        from drift_lite.recipe import load_recipe
        from drift_lite.theory_toy import toy_tv, toy_tv_markdown

        runs = {"DRIFT": args.run_drift, "plain SFT": args.run_sft, "RFT": args.run_rft}
        check_runs(runs)
        recipe = load_recipe(args.run_drift / "recipe.yaml")
        adapters = {label: run / "adapter" for label, run in runs.items()}
        result = toy_tv(recipe, adapters, args.out, prompts=args.prompts or None, samples=args.samples)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(toy_tv_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
