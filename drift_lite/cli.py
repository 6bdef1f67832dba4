"""The `drift-lite` command: thin wrappers that parse arguments, call the library, and print.

Every user mistake is one line on stderr and exit code 2 (never a traceback).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys

from drift_lite import __version__
from drift_lite.errors import UserError
from drift_lite.recipe import WEIGHT_SCHEMES, WeightsConfig

EXAMPLES = {
    "run": "drift-lite run recipes/toy/drift.yaml --out runs/toy-drift\n"
    "  drift-lite run recipes/toy/drift.yaml --out runs/toy-b2 weights.beta=0.2 seed=1\n"
    "  drift-lite run recipes/toy/drift.yaml --out runs/toy-p2 --processes 2   # 2 local processes",
    "rollout": "drift-lite rollout recipes/toy/drift.yaml --out rollouts.jsonl rollout.n_samples=4\n"
    "  drift-lite rollout recipes/toy/drift.yaml --out part0.jsonl --shard 0/2   # then --shard 1/2, merge",
    "merge": "drift-lite merge part0.jsonl part1.jsonl --out rollouts.jsonl\n"
    "  drift-lite merge eval-part0 eval-part1 --out eval-trained   # folders of `eval --shard I/N`",
    "weight": "drift-lite weight rollouts.jsonl weighted.jsonl --gamma 0.9 --beta 0.1 --drop-failed-groups",
    "train": "drift-lite train recipes/toy/drift.yaml --data weighted.jsonl --out adapter train.lr=1e-3",
    "eval": "drift-lite eval recipes/toy/drift.yaml --adapter runs/toy-drift/adapter --out eval-trained\n"
    "  drift-lite eval recipes/toy/drift.yaml --out eval-part0 --shard 0/2   # then --shard 1/2, merge",
    "report": "drift-lite report runs/toy-drift runs/toy-sft --out reports/compare",
    "check": "drift-lite check recipes/paper/qwen2.5-3b-metamathqa.yaml",
    "compare": "drift-lite compare recipes/toy/compare.yaml --out runs/compare",
    "theory": "drift-lite theory --out runs/theory",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drift-lite",
        description="DRIFT: decoupled multi-turn rollouts + importance-weighted fine-tuning (GPU or CPU).",
        epilog="Run `drift-lite COMMAND --help` for an example of each command.",
    )
    parser.add_argument("--version", action="version", version=f"drift-lite {__version__}")
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
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run rollout, training and evaluation in N local processes (default 1: this one)",
    )

    p = add(
        "rollout", "Sample multi-turn trajectories from the reference model into a JSONL file (resumable)."
    )
    recipe_args(p)
    p.add_argument("--out", required=True, help="rollouts JSONL file")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="play only shard I of N (I from 0: prompts at positions I, I+N, ...); join parts with `merge`",
    )

    p = add(
        "merge",
        "Join shards into what one process writes: rollout files (`rollout --shard I/N`) into one file in "
        "the kit's prompt order, or evaluation part folders (`eval --shard I/N`) into one eval folder.",
    )
    p.add_argument(
        "parts", nargs="+", metavar="PART", help="one file (rollout) or folder (eval) per shard 0..N-1"
    )
    p.add_argument("--out", required=True, help="the merged rollouts JSONL file, or the eval folder")

    p = add("weight", "Returns and per-prompt self-normalized weights: IN rows plus `return` and `weight`.")
    p.add_argument("input", metavar="IN", help="rollouts JSONL (the release's schema)")
    p.add_argument("output", metavar="OUT", help="weighted JSONL to write")
    # defaults: the recipe's `weights` section (drift_lite.recipe.WeightsConfig), the one place they are set
    d = WeightsConfig()
    p.add_argument("--gamma", type=float, help=f"turn discount (default {d.gamma})")
    p.add_argument("--beta", type=float, help=f"temperature of exp(R/beta) (default {d.beta})")
    p.add_argument(
        "--scheme",
        choices=list(WEIGHT_SCHEMES),
        help=f"drift, uniform (plain SFT) or correct_only (rejection-sampling SFT); default {d.scheme}",
    )
    p.add_argument("--repeat-coef", type=float, help=f"repeated-answer penalty (default {d.repeat_coef})")
    p.add_argument(
        "--drop-equal-groups",
        action="store_true",
        default=None,
        help="drop prompt groups whose returns are all equal instead of training them at weight 1",
    )
    p.add_argument(
        "--drop-failed-groups",
        action="store_true",
        default=None,
        help="drop prompt groups in which no trajectory succeeded",
    )
    p.add_argument("--max-weight", type=float, help="clip weights at this value (default: no clipping)")

    p = add("train", "Weighted SFT of (QLoRA) adapters on the last assistant message of each trajectory.")
    recipe_args(p)
    p.add_argument("--data", required=True, help="weighted JSONL (from `drift-lite weight`)")
    p.add_argument(
        "--force",
        action="store_true",
        help="train rows sampled from another model than the recipe's, or text its tokenizer cannot encode",
    )
    p.add_argument("--out", required=True, help="adapter folder (checkpoints inside; a rerun resumes)")

    p = add("eval", "Multi-turn evaluation of the reference model or reference + adapter.")
    recipe_args(p)
    p.add_argument("--adapter", help="adapter folder (default: evaluate the reference model)")
    p.add_argument("--out", required=True, help="folder for eval-<set>.json and eval-<set>.jsonl")
    p.add_argument(
        "--shard",
        metavar="I/N",
        help="evaluate only shard I of N of each set's problems into the part folder --out; join: `merge`",
    )

    p = add("report", "Markdown report and PNG plots across run directories.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", required=True, help="folder for report.md and plots/")

    p = add("check", "Validate a recipe, resolve its data and print the plan (sizes, tokens, memory, time).")
    recipe_args(p)

    p = add(
        "theory",
        "Bandits with a known pi_ref: pi*, Soft Best-of-N, a policy trained with the kit's weights and loss.",
    )
    p.add_argument("--out", required=True, help="folder for theory.json, theory.md and theory-kl.png")
    p.add_argument("--tiny", action="store_true", help="a few seconds: fewer prompts, N and steps (tests)")

    p = add(
        "compare",
        "Methods x seeds from a compare SPEC (resumable): results.md, results.json and plots, with costs.",
    )
    p.add_argument("spec", metavar="SPEC", help="compare spec YAML (methods, seeds, overrides)")
    p.add_argument("--out", required=True, help="folder for runs/, results.md, results.json, plots/")
    p.add_argument(
        "--results-only", action="store_true", help="rebuild the results from finished runs; run nothing"
    )
    return parser


WEIGHT_OPTIONS = (
    "gamma",
    "beta",
    "scheme",
    "repeat_coef",
    "drop_equal_groups",
    "drop_failed_groups",
    "max_weight",
)


def _check_out(args: argparse.Namespace) -> None:
    """Refuse an output path that cannot be written, before any model loads (one line, nothing created)."""
    from drift_lite.files import check_output_path, check_writable_dir

    if args.command in ("rollout", "weight", "merge"):  # a file: its folder must exist and take a new file
        out = args.output if args.command == "weight" else args.out
        folder = os.path.dirname(out) or "."
        if os.path.lexists(folder) and not os.path.isdir(folder):
            raise UserError(f"{out}: '{folder}' is not a folder")
        check_output_path(out)
        check_writable_dir(folder, shown=out)
    elif args.command != "check":
        check_writable_dir(args.out)


def _dispatch(args: argparse.Namespace) -> int:
    """Call the public API (drift_lite.api) for one command and print its result."""
    import drift_lite as dl

    # progress bars on a terminal (or when asked), not in captured logs
    show = sys.stderr.isatty() or os.environ.get("DRIFT_LITE_PROGRESS") == "1"
    if args.command == "weight":
        from drift_lite.weights import format_diagnostics

        given = {k: getattr(args, k) for k in WEIGHT_OPTIONS if getattr(args, k) is not None}
        _check_out(args)
        print(format_diagnostics(dl.weight(args.input, args.output, show_progress=show, **given)))
        return 0
    if args.command == "report":
        _check_out(args)
        print(dl.report(args.runs, args.out))
        return 0
    if args.command == "merge":
        stats = dl.merge(args.parts, args.out)
        if "sets" in stats:  # evaluation parts: one line per set, as `eval` prints them
            for name, result in stats["sets"].items():
                print(name, json.dumps(result["metrics"]))
        else:
            print(" ".join(f"{k}={v}" for k, v in stats.items()))
        return 0
    if args.command == "theory":
        from pathlib import Path

        from drift_lite.theory_report import run_theory

        summary = run_theory(Path(args.out), tiny=args.tiny, show_progress=show)
        print(f"{summary['md']} ({summary['wall_s']:.0f} s)")
        return 0
    if args.command == "compare":
        from drift_lite.compare import compare, write_results

        _check_out(args)
        if args.results_only:
            print(write_results(args.spec, args.out))
        else:
            print(compare(args.spec, args.out, show_progress=show))
        return 0
    recipe = dl.load_recipe(args.recipe, args.overrides)
    _check_out(args)  # after the recipe's own checks, before a model loads
    if args.command == "run":
        dl.run(
            recipe,
            args.out,
            force=args.force,
            show_progress=show,
            recipe_path=args.recipe,
            processes=args.processes,
        )
    elif args.command == "rollout":
        from drift_lite.shards import parse_shard

        shard = parse_shard(args.shard) if args.shard is not None else None
        stats = dl.rollout(recipe, args.out, shard=shard, show_progress=show)
        print(" ".join(f"{k}={v}" for k, v in stats.items() if not isinstance(v, (dict, list))))
    elif args.command == "train":
        stats = dl.train(recipe, args.data, args.out, show_progress=show, force=args.force)
        if os.environ.get("RANK", "0") == "0":  # under torchrun / accelerate launch: one summary line
            print(" ".join(f"{k}={v}" for k, v in stats.items() if not isinstance(v, (dict, list))))
    elif args.command == "eval":
        from drift_lite.shards import parse_shard

        shard = parse_shard(args.shard) if args.shard is not None else None
        results = dl.evaluate(recipe, args.out, adapter=args.adapter, show_progress=show, shard=shard)
        if shard is None and os.environ.get("RANK", "0") != "0":
            return 0  # under a launcher: rank 0 prints the merged metrics
        part = f" (shard {args.shard}: its problems only)" if shard is not None else ""
        for name, result in results.items():
            print(f"{name}{part}", json.dumps(result["metrics"]))
    elif args.command == "check":
        print(dl.check(recipe))
    return 0


# errno values of a failed write; without a path in the error, the command's output path is named instead
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EIO}


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
        print(f"drift-lite: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # stdout closed early (`drift-lite check R | head`): as a Unix tool, stop quietly; point stdout at
        # devnull so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the signal
    except OSError as e:
        # A file-system failure on a user path (read-only, full disk, a file where a folder is expected):
        # the path and the reason are the whole story, so one line, like a user mistake.
        from drift_lite.files import os_error_line

        line = os_error_line(e)
        out = getattr(args, "out", None) or getattr(args, "output", None)
        if e.filename is None and e.errno in _WRITE_ERRNOS and out is not None:
            # A write on an open file names no path (e.g. ENOSPC from write()): the output is the one written.
            line = f"{out}: {line}"
        print(f"drift-lite: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("drift-lite: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
