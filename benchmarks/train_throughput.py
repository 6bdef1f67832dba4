"""Training throughput and peak memory: drift-lite's weighted SFT beside TRL's SFTTrainer, side by side.

Run (from the project root):

    .venv/bin/python benchmarks/train_throughput.py                       # tiny toy-sized Qwen2, LoRA, ~2 min
    .venv/bin/python benchmarks/train_throughput.py --finetune qlora      # 4-bit base on both sides
    .venv/bin/python benchmarks/train_throughput.py --model smollm2-135m --rows 32 --repeats 1   # real model

Both contenders get the same model, the same rows (the release fixture conversations, replicated), the same
LoRA (r 16, alpha 32, dropout 0.05, q/k/v/o), batch, gradient accumulation and step count, and run in their
own subprocess (clean peak RSS), alternating, `--repeats` times each; the best run of each is compared.
drift-lite trains on weighted rows (last assistant turn, weights in the loss); TRL gets the same sequences as
an unweighted prompt-completion dataset (prompt = the rendered prompt with the `<think>` prefill, completion =
the rest of the conversation through the end-of-turn token), so both see identical tokens. TRL runs with its
own defaults except the matched settings above, logging every step and no gradient checkpointing (drift-lite
does not checkpoint on CPU; `--trl-checkpointing` gives TRL its default of checkpointing instead).

Threads: one per contender by default. On a 2-core box that also runs other jobs, two OpenMP threads wait on
each other at every op (measured here: a tiny model's step 10-100x slower than on one thread), which
swamps what is being compared; pass `--threads 0` for torch's default on a quiet machine.

tokens/s = non-padding tokens of all trained sequences / wall time of `Trainer.train()` (model loading,
tokenization and saving excluded on both sides). Peak RSS = the child's ru_maxrss. The machine may be shared:
runs alternate so both contenders see the same background load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "data" / "release_rows_simple.jsonl"
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targets": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def build_tiny_model(path: Path) -> str:
    """A random Qwen2 with the toy model's size (hidden 128, 2 layers) and the toy tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from drift_lite.toy_tokenizer import build_toy_tokenizer

    tokenizer = build_toy_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def resolve(model: str, work: Path) -> str:
    """The model folder to benchmark."""
    if model == "tiny":
        return build_tiny_model(work / "tiny")
    from drift_lite.models import resolve_model_path
    from drift_lite.recipe import ModelConfig, ToyConfig

    return resolve_model_path(ModelConfig(name=model), ToyConfig())


def write_data(model_path: str, rows: int, work: Path) -> tuple[Path, Path]:
    """Weighted rows for drift-lite and the same sequences as prompt/completion text for TRL."""
    from transformers import AutoTokenizer

    from drift_lite.chat import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    source = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    rng = random.Random(0)
    weighted, pairs = [], []
    for i in range(rows):
        row = dict(source[i % len(source)], weight=rng.choice([0.05, 0.5, 1.0, 2.0, 3.0]), **{"return": 0.0})
        weighted.append(row)
        prompt = render_prompt(tokenizer, row["messages"][:-1])
        full = tokenizer.apply_chat_template(row["messages"], tokenize=False)
        completion = full[len(prompt) :]
        completion = completion[: completion.rindex(tokenizer.eos_token) + len(tokenizer.eos_token)]
        pairs.append({"prompt": prompt, "completion": completion})
    drift_data, trl_data = work / "weighted.jsonl", work / "trl.jsonl"
    drift_data.write_text("".join(json.dumps(r) + "\n" for r in weighted))
    trl_data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return drift_data, trl_data


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_drift(spec: dict) -> dict:
    """Train with drift-lite; return tokens, seconds and peak RSS."""
    from drift_lite.recipe import load_recipe
    from drift_lite.training import train

    recipe = load_recipe(
        None,
        [
            f"model.name={spec['model']}",
            f"train.finetune={spec['finetune']}",
            f"train.batch_size={spec['batch']}",
            f"train.grad_accum={spec['accum']}",
            "train.epochs=1",
            "train.lr=1e-4",
            "train.save_steps=0",
            "train.max_length=4096",
            f"train.lora_r={LORA['r']}",
            f"train.lora_alpha={LORA['alpha']}",
            f"train.lora_dropout={LORA['dropout']}",
        ],
    )
    summary = train(
        recipe, spec["drift_data"], Path(spec["work"]) / "drift-out", resume=False, show_progress=False
    )
    return {"tokens": summary["tokens_seen"], "seconds": summary["runtime_s"], "steps": summary["steps"]}


def child_trl(spec: dict) -> dict:
    """Train with TRL's SFTTrainer on the same sequences, unweighted; return tokens, seconds and peak RSS."""
    import time

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    kwargs: dict = {"dtype": torch.float32}
    if spec["finetune"] == "qlora":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.float32,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": "cpu"}
    model = AutoModelForCausalLM.from_pretrained(spec["model"], **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    rows = [json.loads(line) for line in Path(spec["trl_data"]).read_text().splitlines()]
    config = SFTConfig(
        output_dir=str(Path(spec["work"]) / "trl-out"),
        per_device_train_batch_size=spec["batch"],
        gradient_accumulation_steps=spec["accum"],
        num_train_epochs=1,
        learning_rate=1e-4,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=0.1,
        weight_decay=0.1,
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        max_length=4096,
        gradient_checkpointing=spec["trl_checkpointing"],
        disable_tqdm=True,
        seed=0,
    )
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["targets"],
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora,
    )
    tokens = sum(len(ids) for ids in trainer.train_dataset["input_ids"])
    start = time.perf_counter()
    trainer.train()
    return {"tokens": tokens, "seconds": time.perf_counter() - start, "steps": trainer.state.global_step}


def run_child(name: str, spec_path: Path, threads: int) -> dict:
    """One contender in a fresh interpreter; its JSON result line."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads > 0 else None
    done = subprocess.run(
        [sys.executable, __file__, "--child", name, "--spec", str(spec_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def main() -> None:
    """Parse flags, run the contenders alternately, print per-run and ratio lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="tiny | toy | smollm2-135m | a local folder")
    parser.add_argument("--finetune", default="lora", choices=["lora", "qlora"])
    parser.add_argument("--rows", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads per contender (0: torch default)"
    )
    parser.add_argument(
        "--trl-checkpointing", action="store_true", help="TRL's default: checkpoint activations"
    )
    parser.add_argument("--child", choices=["drift", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        sys.path.insert(0, str(REPO))
        spec = json.loads(Path(args.spec).read_text())
        result = (child_drift if args.child == "drift" else child_trl)(spec)
        result["peak_rss_mb"] = peak_rss_mb()
        print("RESULT " + json.dumps(result), flush=True)
        return

    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="drift-bench-") as tmp:
        work = Path(tmp)
        model = resolve(args.model, work)
        drift_data, trl_data = write_data(model, args.rows, work)
        spec = {
            "model": model,
            "finetune": args.finetune,
            "batch": args.batch,
            "accum": args.accum,
            "drift_data": str(drift_data),
            "trl_data": str(trl_data),
            "work": str(work),
            "trl_checkpointing": args.trl_checkpointing,
        }
        spec_path = work / "spec.json"
        spec_path.write_text(json.dumps(spec))
        print(
            f"model {args.model}, {args.finetune}, {args.rows} rows, batch {args.batch} x GA {args.accum}, "
            f"LoRA r {LORA['r']}, TRL gradient checkpointing {'on' if args.trl_checkpointing else 'off'}, "
            f"threads {args.threads or 'default'}",
            flush=True,
        )
        results: dict[str, list[dict]] = {"drift": [], "trl": []}
        for repeat in range(args.repeats):
            order = ["drift", "trl"] if repeat % 2 == 0 else ["trl", "drift"]
            for name in order:
                r = run_child(name, spec_path, args.threads)
                r["tps"] = r["tokens"] / r["seconds"]
                results[name].append(r)
                print(
                    f"  run {repeat + 1} {name:5s}: {r['tokens']} tokens, {r['steps']} steps in "
                    f"{r['seconds']:.2f} s = {r['tps']:.0f} tokens/s, peak RSS {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
        best = {name: max(runs, key=lambda r: r["tps"]) for name, runs in results.items()}
        rss = {name: min(r["peak_rss_mb"] for r in runs) for name, runs in results.items()}
        print(f"drift-lite weighted SFT: {best['drift']['tps']:.0f} tokens/s, peak RSS {rss['drift']:.0f} MB")
        print(f"TRL SFTTrainer:          {best['trl']['tps']:.0f} tokens/s, peak RSS {rss['trl']:.0f} MB")
        print(
            f"tokens/s ratio drift-lite/TRL: {best['drift']['tps'] / best['trl']['tps']:.2f}x (goal >= 1.0x)"
        )
        print(f"peak RSS ratio drift-lite/TRL: {rss['drift'] / rss['trl']:.2f}x (goal <= 1.1x)")


if __name__ == "__main__":
    main()
