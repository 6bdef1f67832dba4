"""The `drift-lite` command: thin wrappers that parse arguments, call the library, and print.

Every user mistake is one line on stderr and exit code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import os
import sys

from drift_lite.errors import UserError

EXAMPLES = {
    "run": "drift-lite run recipes/toy/drift.yaml --out runs/toy-drift\n"
    "  drift-lite run recipes/toy/drift.yaml --out runs/toy-b2 weights.beta=0.2 seed=1",
    "rollout": "drift-lite rollout recipes/toy/drift.yaml --out rollouts.jsonl rollout.n_samples=4",
    "weight": "drift-lite weight rollouts.jsonl weighted.jsonl --gamma 0.9 --beta 0.1",
    "train": "drift-lite train recipes/toy/drift.yaml --data weighted.jsonl --out adapter train.lr=1e-3",
    "eval": "drift-lite eval recipes/toy/drift.yaml --adapter runs/toy-drift/adapter --out eval-trained",
    "report": "drift-lite report runs/toy-drift runs/toy-sft --out reports/compare",
    "check": "drift-lite check recipes/paper/qwen2.5-3b-metamathqa.yaml",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drift-lite",
        description="DRIFT: decoupled multi-turn rollouts + importance-weighted fine-tuning (GPU or CPU).",
        epilog="Run `drift-lite COMMAND --help` for an example of each command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {EXAMPLES[name]}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def recipe_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("recipe", metavar="RECIPE", help="recipe YAML file")
        p.add_argument(
            "overrides", nargs="*", metavar="key=value", help="recipe overrides, e.g. train.lr=1e-4"
        )

    p = add("run", "The whole method: rollout → weight → train → eval (reference and trained) → report.")
    recipe_args(p)
    p.add_argument("--out", required=True, help="run directory (created; a rerun resumes it)")
    p.add_argument("--force", action="store_true", help="reuse a folder that holds another recipe's run")

    p = add(
        "rollout", "Sample multi-turn trajectories from the reference model into a JSONL file (resumable)."
    )
    recipe_args(p)
    p.add_argument("--out", required=True, help="rollouts JSONL file")

    p = add("weight", "Returns and per-prompt self-normalized weights: IN rows plus `return` and `weight`.")
    p.add_argument("input", metavar="IN", help="rollouts JSONL (the release's schema)")
    p.add_argument("output", metavar="OUT", help="weighted JSONL to write")
    p.add_argument("--gamma", type=float, default=0.9, help="turn discount (default 0.9)")
    p.add_argument("--beta", type=float, default=0.1, help="temperature of exp(R/beta) (default 0.1)")
    p.add_argument(
        "--scheme",
        default="drift",
        choices=["drift", "uniform", "correct_only"],
        help="drift (default), uniform (plain SFT) or correct_only (rejection-sampling SFT)",
    )
    p.add_argument("--repeat-coef", type=float, default=0.5, help="repeated-answer penalty (default 0.5)")
    p.add_argument(
        "--drop-equal-groups",
        action="store_true",
        help="drop prompt groups whose returns are all equal instead of training them at weight 1",
    )

    p = add("train", "Weighted SFT of (QLoRA) adapters on the last assistant message of each trajectory.")
    recipe_args(p)
    p.add_argument("--data", required=True, help="weighted JSONL (from `drift-lite weight`)")
    p.add_argument("--out", required=True, help="adapter folder (checkpoints inside; a rerun resumes)")

    p = add("eval", "Multi-turn evaluation of the reference model or reference + adapter.")
    recipe_args(p)
    p.add_argument("--adapter", help="adapter folder (default: evaluate the reference model)")
    p.add_argument("--out", required=True, help="folder for eval-<set>.json and eval-<set>.jsonl")

    p = add("report", "Markdown report and PNG plots across run directories.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="folder for report.md and plots/")

    p = add("check", "Validate a recipe, resolve its data and print the plan (sizes, tokens, memory, time).")
    recipe_args(p)
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    from drift_lite.recipe import load_recipe

    # progress bars on a terminal (or when asked), not in captured logs
    show = sys.stderr.isatty() or os.environ.get("DRIFT_LITE_PROGRESS") == "1"
    if args.command == "weight":
        from drift_lite.weights import format_diagnostics, weight_file

        diagnostics = weight_file(
            args.input,
            args.output,
            gamma=args.gamma,
            beta=args.beta,
            scheme=args.scheme,
            drop_equal_groups=args.drop_equal_groups,
            repeat_coef=args.repeat_coef,
            show_progress=show,
        )
        print(format_diagnostics(diagnostics))
        return 0
    if args.command == "report":
        from pathlib import Path

        from drift_lite.report import write_report

        print(write_report([Path(r) for r in args.runs], Path(args.out)))
        return 0
    recipe = load_recipe(args.recipe, args.overrides)
    if args.command == "run":
        from drift_lite.run import run

        run(recipe, args.out, recipe_path=args.recipe, force=args.force, show_progress=show)
    elif args.command == "rollout":
        from drift_lite.rollout import rollout

        stats = rollout(recipe, args.out, show_progress=show)
        print(" ".join(f"{k}={v}" for k, v in stats.items()))
    elif args.command == "train":
        from drift_lite.train import train

        stats = train(recipe, args.data, args.out, show_progress=show)
        print(" ".join(f"{k}={v}" for k, v in stats.items() if not isinstance(v, (dict, list))))
    elif args.command == "eval":
        import json

        from drift_lite.evaluate import evaluate

        results = evaluate(recipe, args.out, adapter=args.adapter, show_progress=show)
        for name, result in results.items():
            print(name, json.dumps(result["metrics"]))
    elif args.command == "check":
        from drift_lite.plan import check

        print(check(recipe))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `drift-lite` console script."""
    parser = _parser()
    # Overrides may come after options (`RECIPE --out DIR key=value`): argparse stops filling a positional
    # list at the first option, so collect the key=value words it leaves over.
    args, extra = parser.parse_known_args(argv)
    stray = [w for w in extra if w.startswith("-") or "=" not in w or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return _dispatch(args)
    except UserError as e:
        print(f"drift-lite: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("drift-lite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
