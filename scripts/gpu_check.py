"""A prepared, self-contained check of the kit on a GPU machine with no hub access; writes one JSON.

For each model shape (Qwen2.5-1.5B and -3B, configs in scripts/gpu_configs/, randomly initialized; nothing is
downloaded) it measures, with the kit's own code paths:

1. **Training memory**: `drift_lite.training.train` (nf4 QLoRA as the paper recipe sets it) for 2 optimizer
   steps at the recipe's micro-batch and at the row length `drift-lite check` plans for (rows built to exactly
   that many tokens); the CUDA peak (allocated and reserved) against `plan.make_plan`'s training estimate.
2. **Rollout tokens/s**: `episodes.play_episodes` with the default HF-generate engine (`turn`) and with the
   token engine, on the same jobs (one batch of the recipe's `rollout.batch_size` episodes, nf4 with bf16
   compute as the recipe samples), after a warm-up; the rows of the two engines are compared one by one
   (per-trajectory seeds: equal up to bf16 near-ties), with the peak memory against the estimate.

A random model's tokens are drawn near-uniformly from the whole vocabulary, so the check's tokenizer is the
kit's toy tokenizer with single-character filler tokens up to the model's vocabulary size: every sampled id
decodes to one character and encodes back to the same id, and episodes run every turn to max_new_tokens
(no eos, no answer): the most work per episode, not a real model's mix. Rows that differ between engines are
counted, not failed: in bf16 a near-tie may flip. Every phase records its own error and the run goes on.

Commands (from the repository root; `PYTHONPATH=.` if the kit is not installed):

    python scripts/gpu_check.py --tiny --out gpu-check-tiny.json            # CPU, tiny shape, ~30 s
    timeout 570 python scripts/gpu_check.py --out gpu-check.json --budget-s 480   # one GPU, both shapes

Sized to fit one 10-minute device call: per shape, build and save a random model, load it in nf4 twice,
2 training steps at 4 x 3,040 tokens, 2 x 2 rollout runs (warm-up, then 32 or 24 episodes x 2 turns x 128
tokens). Estimated at about 4 minutes on one H200-class GPU (an estimate: not yet run on a GPU); `--budget-s`
skips (and records) the phases that would start after the budget is spent, and the JSON is rewritten after
each shape, so a killed run keeps what finished. The training peak covers `train()` whole (model loading
included); the rollout peak includes the loaded weights, as the estimates do.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub: the plan uses the shipped data fixtures
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from drift_lite import chat, costs, plan, toy_tokenizer  # noqa: E402
from drift_lite.files import read_json, write_json_atomic  # noqa: E402
from drift_lite.recipe import load_recipe  # noqa: E402

CONFIGS = ROOT / "scripts" / "gpu_configs"
SHAPES = {  # name: (config, the paper recipe of that model, the hub id whose shape it is)
    "qwen2.5-1.5b": (
        "qwen2.5-1.5b.json",
        "recipes/paper/qwen2.5-1.5b-metamathqa.yaml",
        "Qwen/Qwen2.5-1.5B-Instruct",
    ),
    "qwen2.5-3b": ("qwen2.5-3b.json", "recipes/paper/qwen2.5-3b-metamathqa.yaml", "Qwen/Qwen2.5-3B-Instruct"),
}
TINY = {"tiny": ("tiny.json", "recipes/paper/qwen2.5-3b-metamathqa.yaml", None)}
# The tiny run: the same code at sizes a CPU runs in seconds.
TINY_OVERRIDES = ["train.max_length=96", "train.batch_size=2", "rollout.batch_size=8", "model.device=cpu"]
FILLER_START = 0x10000  # filler characters: code points from plane 1 on (no whitespace, no surrogates)
TRAIN_STEPS = 2


def shape_tokenizer(vocab_size: int):
    """The toy tokenizer plus single-character filler tokens, `vocab_size` tokens in all (a model's vocab)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    t = toy_tokenizer
    base = t.SPECIAL_TOKENS + [t.UNK] + list(t.ALPHABET)
    fillers = [chr(FILLER_START + k) for k in range(filler_count(vocab_size))]
    vocab = {token: i for i, token in enumerate(base + fillers)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=t.UNK))
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in t.SPECIAL_TOKENS])
    backend.add_tokens([AddedToken(s, special=False, normalized=False) for s in t.ADDED_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=t.UNK
    )
    tokenizer.chat_template = t.CHAT_TEMPLATE
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    return tokenizer


def filler_count(vocab_size: int) -> int:
    """How many filler tokens a shape tokenizer of `vocab_size` tokens has."""
    t = toy_tokenizer
    return vocab_size - len(t.SPECIAL_TOKENS) - 1 - len(t.ALPHABET) - len(t.ADDED_TOKENS)


def build_model(config_file: Path, folder: Path, device: str) -> dict:
    """A randomly initialized Qwen2 of the config's shape (bf16) and its tokenizer, saved to `folder`."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    data = {k: v for k, v in read_json(config_file).items() if not k.startswith("_")}
    tokenizer = shape_tokenizer(data["vocab_size"])
    ids = {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None,
    }
    config = Qwen2Config(**{**data, **ids})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    params = sum(p.numel() for p in model.parameters())
    del model
    return {"parameters": params, "config": str(config_file.relative_to(ROOT))}


def filler(n: int, rng: random.Random, count: int) -> str:
    """n random filler characters of the `count` a shape tokenizer has (one token each)."""
    return "".join(chr(FILLER_START + rng.randrange(count)) for _ in range(n))


def training_rows(tokenizer, recipe, seq: int, count: int) -> list[dict]:
    """Weighted rows of exactly `seq` tokens whose last turn has max_new_tokens tokens (plus eos)."""
    from drift_lite.examples import example_spans

    rng = random.Random(0)
    fillers = filler_count(len(tokenizer))
    answer = min(recipe.rollout.max_new_tokens, seq // 2)

    def messages(prompt_len: int) -> list[dict]:
        return [
            {"role": "system", "content": chat.SYSTEM_PROMPT},
            {"role": "user", "content": filler(prompt_len, rng, fillers)},
            {"role": "assistant", "content": chat.THINK_PREFILL + filler(answer, rng, fillers)},
        ]

    ids, spans = example_spans(tokenizer, messages(0), "last", "gpu-check")
    extra = seq - spans[-1][1]
    if extra < 0:
        raise ValueError(f"rows of {seq} tokens cannot hold a last turn of {answer} tokens")
    rows = []
    for i in range(count):
        row_messages = messages(extra)
        ids, spans = example_spans(tokenizer, row_messages, "last", "gpu-check")
        assert spans[-1][1] == seq, (spans, seq)
        rows.append(
            {"prompt_id": f"check-{i}", "gold": "0", "messages": row_messages, "turn_rewards": {"t1": 0.0}}
            | {"return": 0.0, "weight": 1.0}
        )
    return rows


class Peak:
    """Peak CUDA memory over a block (allocated and reserved bytes); None on a CPU."""

    def __init__(self, device: str):
        self.cuda = device == "cuda"
        self.allocated = self.reserved = None

    def __enter__(self) -> Peak:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            self.allocated = torch.cuda.max_memory_allocated()
            self.reserved = torch.cuda.max_memory_reserved()
        self.seconds = round(time.perf_counter() - self.start, 3)


def check_training(folder: Path, recipe, work: Path, device: str) -> dict:
    """Two optimizer steps of the kit's training at the recipe's micro-batch and planned row length."""
    from drift_lite.records import write_rows_atomic
    from drift_lite.training import train

    p = plan.make_plan(recipe)  # what `drift-lite check` prints for this recipe and this model folder
    tokenizer = shape_tokenizer(p.arch.vocab)
    rows = training_rows(tokenizer, recipe, p.train_seq, recipe.train.batch_size * TRAIN_STEPS)
    data = work / "weighted.jsonl"
    write_rows_atomic(data, rows)
    with Peak(device) as peak:
        summary = train(recipe, data, work / "adapter", show_progress=False, force=True)  # synthetic rows
    parts = p.memory["training"]
    estimate = parts["total"]
    return {
        "micro_batch": recipe.train.batch_size,
        "row_tokens": p.train_seq,
        "steps": summary["steps"],
        "checkpointing": p.gpu,
        "seconds": peak.seconds,
        "measured_peak_allocated_bytes": peak.allocated,
        "measured_peak_reserved_bytes": peak.reserved,
        "estimated_allocated_bytes": round(estimate),
        "estimated_gpu_bytes": round(p.peak("training")),  # + fragmentation and CUDA context, as check prints
        "measured_over_estimated": round(peak.allocated / estimate, 3) if peak.allocated else None,
        "reserved_over_estimated_gpu": round(peak.reserved / p.peak("training"), 3)
        if peak.reserved
        else None,
        "estimate_parts": {k: round(v) for k, v in parts.items()},
        "estimate_formula": costs.formula(parts, p.gpu),
    }


def check_rollouts(folder: Path, recipe, args, device: str) -> dict:
    """Tokens/s of the turn and token engines on the same jobs, their rows compared, their peak memory."""
    from drift_lite.episodes import play_episodes
    from drift_lite.jobs import make_jobs
    from drift_lite.models import load_model, load_tokenizer
    from drift_lite.rollouts import episode_settings
    from drift_lite.sampling import Sampling
    from drift_lite.tasks import checker_for, load_problems

    tokenizer = load_tokenizer(str(folder), recipe.model)
    model = load_model(str(folder), recipe.model)
    batch = recipe.rollout.batch_size
    prompts = max(1, batch // args.samples)
    problems = load_problems("toy", "train", None, prompts, 0)
    checker, env = checker_for("toy", None), episode_settings(recipe)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=recipe.rollout.max_new_tokens, seed=0)

    def play(engine: str, problem_list: list, new_tokens: int) -> tuple[dict, dict, Peak]:
        jobs = make_jobs(problem_list, args.samples, 0, checker, env)
        rows: dict = {}

        def on_done(job) -> None:
            rows[f"{job.episode.problem.id}#{job.traj_idx}"] = job.episode.to_row()

        run_sampling = dataclasses.replace(sampling, max_new_tokens=new_tokens)
        with Peak(device) as peak:
            stats = play_episodes(model, tokenizer, jobs, run_sampling, batch, on_done, engine=engine)
        return stats, rows, peak

    result: dict = {
        "episodes": prompts * args.samples,
        "prompts": prompts,
        "n_samples": args.samples,
        "batch_size": batch,
        "max_turns": recipe.env.max_turns,
        "max_new_tokens": recipe.rollout.max_new_tokens,
        "dtype": recipe.model.dtype,
        "quantization": recipe.model.quantization,
        "engines": {},
    }
    first = chat.render_prompt(tokenizer, make_jobs(problems[:1], 1, 0, checker, env)[0].episode.messages)
    result["first_prompt_tokens"] = len(tokenizer(first, add_special_tokens=False)["input_ids"])
    gen = costs.generation_memory(
        costs.arch_for(str(folder)), recipe.model, batch, costs.lengths(recipe, recipe.rollout.max_new_tokens)
    )
    result["estimated_allocated_bytes"] = round(gen["total"])
    result["estimated_gpu_bytes"] = round(costs.on_gpu_total(gen))
    rows_by_engine = {}
    for engine in ("turn", "token"):
        try:
            play(engine, problems[:1], 4)  # warm-up: kernels, allocator
            stats, rows, peak = play(engine, problems, recipe.rollout.max_new_tokens)
            rows_by_engine[engine] = rows
            result["engines"][engine] = {
                "generated_tokens": stats["generated_tokens"],
                "seconds": peak.seconds,
                "tokens_per_s": round(stats["generated_tokens"] / max(peak.seconds, 1e-9), 1),
                "measured_peak_allocated_bytes": peak.allocated,
                "engine": stats["engine"],
            }
        except Exception as exc:  # noqa: BLE001 - one engine's failure is a result; the other still runs
            result["engines"][engine] = {"error": _error(exc)}
    turn, token = rows_by_engine.get("turn"), rows_by_engine.get("token")
    if turn is not None and token is not None:
        keys = sorted(set(turn) | set(token))
        differ = [k for k in keys if turn.get(k) != token.get(k)]
        result["rows_compared"] = len(keys)
        result["rows_equal"] = len(keys) - len(differ)
        result["rows_differing"] = differ[:10]
    return result  # the model is freed with this frame


def _error(exc: BaseException) -> str:
    """One line: the exception, its first message line and where it was raised."""
    lines = str(exc).strip().splitlines()
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" (at {Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {lines[0] if lines else ''}{where}"


def check_shape(
    name: str, config: str, recipe_file: str, hub_id: str | None, args, device: str, deadline: float
) -> dict:
    """Build one shape, then run the training and rollout phases on it (each records its own error)."""
    out: dict = {"recipe": recipe_file}
    work = Path(tempfile.mkdtemp(prefix=f"gpu-check-{name}-"))
    try:
        folder = work / "model"
        out["model"] = build_model(CONFIGS / config, folder, device)
        overrides = [f"model.name={folder}", f"model.device={device}"] + (TINY_OVERRIDES if args.tiny else [])
        train_recipe = load_recipe(
            str(ROOT / recipe_file),
            [*overrides, f"train.max_steps={TRAIN_STEPS}", "train.grad_accum=1", "train.save_steps=0"],
        )
        if hub_id is not None:  # the shape `check` assumes for the hub id is the one measured here
            out["model"]["arch_equals_check_table"] = costs.arch_for(str(folder)) == costs.KNOWN_ARCHS[hub_id]
        roll_recipe = load_recipe(
            str(ROOT / recipe_file),
            [*overrides, f"env.max_turns={args.turns}", f"rollout.max_new_tokens={args.new_tokens}"],
        )
        for phase, run in (
            ("training", lambda: check_training(folder, train_recipe, work, device)),
            ("rollout", lambda: check_rollouts(folder, roll_recipe, args, device)),
        ):
            if time.monotonic() > deadline:
                out[phase] = {"skipped": f"the --budget-s {args.budget_s} was spent"}
                continue
            try:
                out[phase] = run()
            except Exception as exc:  # noqa: BLE001 - recorded; the next phase still runs
                out[phase] = {"error": _error(exc)}
            gc.collect()
            if device == "cuda":
                torch.cuda.empty_cache()
    except Exception as exc:  # noqa: BLE001
        out["error"] = _error(exc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the check and write the JSON; exit 1 when a phase failed."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, help="the JSON file to write")
    parser.add_argument("--tiny", action="store_true", help="a tiny shape on the CPU, in seconds (a test)")
    parser.add_argument("--budget-s", type=float, default=480, help="start no phase after this many seconds")
    parser.add_argument("--turns", type=int, default=None, help="env.max_turns of the rollout runs (2)")
    parser.add_argument("--new-tokens", type=int, default=None, help="max_new_tokens per turn (128; tiny 8)")
    parser.add_argument("--samples", type=int, default=4, help="trajectories per prompt in the rollout runs")
    parser.add_argument(
        "--shapes", nargs="+", choices=list(SHAPES), help="the shapes to check (default: all)"
    )
    args = parser.parse_args(argv)
    args.turns = args.turns or 2
    args.new_tokens = args.new_tokens or (8 if args.tiny else 128)
    start = time.monotonic()
    cuda = torch.cuda.is_available() and not args.tiny
    if not cuda and not args.tiny:
        print("gpu_check: no CUDA device; use --tiny for the CPU run", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    shapes = (
        TINY if args.tiny else {k: v for k, v in SHAPES.items() if args.shapes is None or k in args.shapes}
    )
    from drift_lite.versions import package_versions

    report: dict = {
        "tiny": args.tiny,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "versions": package_versions(),
        "budget_s": args.budget_s,
        "shapes": {},
    }
    for name, (config, recipe_file, hub_id) in shapes.items():
        print(f"gpu_check: {name} ...", file=sys.stderr, flush=True)
        deadline = start + args.budget_s
        report["shapes"][name] = check_shape(name, config, recipe_file, hub_id, args, device, deadline)
        # rewritten after each shape: a run killed by its timeout keeps what finished
        write_json_atomic(args.out, {**report, "seconds": round(time.monotonic() - start, 1)})
    report["seconds"] = round(time.monotonic() - start, 1)
    failed = [
        f"{name}.{phase}"
        for name, shape in report["shapes"].items()
        for phase, part in shape.items()
        if isinstance(part, dict)
        and ("error" in part or any("error" in e for e in part.get("engines", {}).values()))
    ]
    failed += [name for name, shape in report["shapes"].items() if "error" in shape]
    report["failed"] = failed
    report["skipped"] = [
        f"{name}.{phase}"
        for name, shape in report["shapes"].items()
        for phase, part in shape.items()
        if isinstance(part, dict) and "skipped" in part
    ]
    write_json_atomic(args.out, report)
    print(
        f"gpu_check: wrote {args.out} in {report['seconds']} s; failed: {failed or 'none'}", file=sys.stderr
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
