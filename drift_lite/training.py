"""Weighted SFT training bookkeeping: the Trainer subclass, checkpoints and resume, the output folder.

The data side lives in `examples.py` (rows → masked examples, collator, step order) and the loss in
`loss.py` (mean_i w_i · token-mean NLL_i, one denominator per optimizer step).

- **Loss and gradient accumulation.** Per row l_i = token-mean NLL; `normalize: mean` gives Σ w_i l_i / n,
  `weight_sum` gives Σ w_i l_i / Σ w_i, where n and Σ w run over the whole optimizer step (all micro-batches).
  `get_batch_samples` (the Trainer calls it once per optimizer step with that step's micro-batches) computes
  the step's denominator and hands it to every micro-batch; each micro-batch returns Σ_micro w_i l_i / denom,
  and `loss_is_scaled_for_ga = True` stops the Trainer from dividing again. So b × GA k is the same update as
  b·k × GA 1 for both normalizations, including a short last step.
- **Output.** `out_dir` holds the adapter (or full model), tokenizer, `recipe.yaml`, `train_log.jsonl`,
  `trainer_state.json`, `summary.json`, and `done.json` written last (`is_complete`). Final files are written
  into a temp folder and renamed in; checkpoints go to `out_dir/checkpoints` and a rerun resumes from the last
  one marked complete; they are deleted once `done.json` is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from pathlib import Path

from torch.utils.data import Sampler

from drift_lite.errors import UserError
from drift_lite.examples import (
    ExampleDataset,
    StepOrderSampler,
    WeightedCollator,
    build_examples,
    read_weighted_rows,
    weight_diagnostics,
)
from drift_lite.files import atomic_writer, read_json, settings_hash, write_json_atomic
from drift_lite.loss import IGNORE, sequence_nll, step_denominator, weighted_loss
from drift_lite.recipe import Recipe, TrainConfig, dump_recipe
from drift_lite.versions import package_versions

DONE_FILE = "done.json"
FINGERPRINT_FILE = "train_fingerprint.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_COMPLETE = "checkpoint_complete"
_FINAL_TMP = ".final.tmp"

# ---------------------------------------------------------------------------------------------------------
# Trainer


def _trainer_class():
    from transformers import Trainer

    class WeightedSFTTrainer(Trainer):
        """Trainer whose loss is Σ w_i l_i over the optimizer step's denominator (see the module doc)."""

        # compute_loss already divides by the whole step's denominator: the Trainer must not divide by GA.
        loss_is_scaled_for_ga = True

        def __init__(self, *args, normalize: str, sampler: Sampler, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.normalize = normalize
            self._sampler = sampler

        def _get_train_sampler(self, train_dataset=None):
            return self._sampler

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches = []
            for _ in range(num_batches):
                try:
                    batches.append(next(epoch_iterator))
                except StopIteration:
                    break
            if batches:
                denominator = step_denominator([b["weight"] for b in batches], self.normalize)
                for b in batches:
                    b["step_denominator"] = denominator
            return batches, None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            nll = sequence_nll(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            denominator = inputs.get("step_denominator")
            if denominator is None:  # called outside the training loop: the batch is the whole step
                denominator = step_denominator([inputs["weight"]], self.normalize)
            loss = weighted_loss(nll, inputs["weight"], denominator.to(nll.device))
            return (loss, {"nll": nll}) if return_outputs else loss

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():  # marks the checkpoint whole: a kill mid-save leaves it unmarked
                (folder / CHECKPOINT_COMPLETE).write_text(str(self.state.global_step))

    return WeightedSFTTrainer


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The highest-numbered checkpoint folder with a completion marker, or None."""
    best, best_step = None, -1
    if folder.is_dir():
        for path in folder.glob("checkpoint-*"):
            step = path.name.rpartition("-")[2]
            if step.isdigit() and (path / CHECKPOINT_COMPLETE).exists() and int(step) > best_step:
                best, best_step = path, int(step)
    return best


def _drop_incomplete_checkpoints(folder: Path) -> None:
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if not (path / CHECKPOINT_COMPLETE).exists():
            shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# Run folder


def is_complete(out_dir: str | os.PathLike) -> bool:
    """Whether out_dir holds a finished training output (done.json present, every file it lists intact)."""
    out = Path(out_dir)
    done = _read_dict(out / DONE_FILE)
    try:
        files = done["files"]
        return all(
            (out / name).is_file() and (out / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, KeyError, TypeError, AttributeError):
        return False


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprint(recipe: Recipe, base: str, data_sha: str) -> str:
    data = recipe.to_dict()
    picked = {"model": data["model"], "train": data["train"], "base": base, "data": data_sha}
    if recipe.model.name == "toy":
        picked["toy"] = data["toy"]
    return settings_hash(picked)


def _read_dict(path: Path) -> dict | None:
    data = read_json(path)
    return data if isinstance(data, dict) else None


def _progress(show: bool, message: str) -> None:
    if show:
        print(message, flush=True)


def _check_out_dir(out: Path, base: str, fingerprint: str, resume: bool) -> dict | None:
    """Refuse an out_dir from another base model; return the stored summary when it is already done."""
    from drift_lite.models import check_adapter_base, same_base

    check_adapter_base(out, base)
    stored = _read_dict(out / FINGERPRINT_FILE) or {}
    if isinstance(stored.get("base"), str) and not same_base(stored["base"], base):
        raise UserError(f"{out}: holds a training run for base model {stored['base']}, not {base}")
    done = _read_dict(out / DONE_FILE)
    if resume and done is not None and done.get("fingerprint") == fingerprint and is_complete(out):
        return done.get("summary", {})
    return None


def _pick_checkpoint(out: Path, fingerprint: str, resume: bool) -> Path | None:
    """The checkpoint to resume from; checkpoints of other settings or data (or resume off) are deleted."""
    stored = _read_dict(out / FINGERPRINT_FILE) or {}
    checkpoints = out / CHECKPOINTS
    if resume and stored.get("fingerprint") == fingerprint:
        _drop_incomplete_checkpoints(checkpoints)
        return last_complete_checkpoint(checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return None


def _clear_previous_output(out: Path) -> None:
    """Remove done.json first (the folder is no longer complete), then the files it listed."""
    done = _read_dict(out / DONE_FILE)
    (out / DONE_FILE).unlink(missing_ok=True)
    for name in (done or {}).get("files", {}):
        if "/" not in name and name != FINGERPRINT_FILE:
            (out / name).unlink(missing_ok=True)


def _save_final(
    trainer, tokenizer, recipe: Recipe, out: Path, extra: dict, summary: dict, fingerprint: str
) -> None:
    tmp = out / _FINAL_TMP
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    trainer.model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    dump_recipe(recipe, tmp / "recipe.yaml", extra=extra)
    trainer.state.save_to_json(str(tmp / "trainer_state.json"))
    with atomic_writer(tmp / "train_log.jsonl") as handle:
        for entry in trainer.state.log_history:
            handle.write((json.dumps(entry, sort_keys=True) + "\n").encode())
    write_json_atomic(tmp / "summary.json", summary)
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    for name in files:
        os.replace(tmp / name, out / name)
    write_json_atomic(out / DONE_FILE, {"fingerprint": fingerprint, "files": files, "summary": summary})
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)


def training_arguments(train: TrainConfig, output_dir: Path, *, use_cpu: bool, show_progress: bool):
    """TrainingArguments from the recipe (constant LR with warmup, no shuffling, a log line every step)."""
    from transformers import TrainingArguments

    save = train.save_steps > 0
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.lr,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=min(max(train.warmup_ratio, 0.0), 0.999),  # v5: a float in [0, 1) is a ratio
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps,
        optim="adamw_torch",
        seed=train.seed,
        data_seed=train.seed,
        train_sampling_strategy="sequential",  # our own sampler replaces it anyway
        save_strategy="steps" if save else "no",
        save_steps=train.save_steps if save else 500,
        save_total_limit=2,  # the newest may be cut by a kill; the one before stays complete
        logging_strategy="steps",
        logging_steps=1,
        report_to="none",
        remove_unused_columns=False,
        use_cpu=use_cpu,
        dataloader_pin_memory=not use_cpu,
        disable_tqdm=not show_progress,
        eval_strategy="no",
        include_num_input_tokens_seen="non_padding",
    )


def train(
    recipe: Recipe,
    data_path,
    out_dir,
    *,
    resume: bool = True,
    show_progress: bool = True,
    callbacks: list | None = None,
) -> dict:
    """Weighted SFT of the recipe's model on weighted rows; saves the adapter (or model) into out_dir.

    `callbacks` are extra `TrainerCallback`s (progress hooks, tests).
    """
    from transformers import PrinterCallback, set_seed

    from drift_lite.models import (
        load_model,
        load_tokenizer,
        prepare_for_training,
        resolve_device,
        resolve_model_path,
    )

    cfg = recipe.train
    out = Path(out_dir)
    rows = read_weighted_rows(data_path)
    diagnostics = weight_diagnostics(rows)
    print(
        f"data {data_path}: {diagnostics['rows']} rows, weight mean {diagnostics['weight_mean']:.4g} "
        f"min {diagnostics['weight_min']:.4g} max {diagnostics['weight_max']:.4g}, "
        f"{diagnostics['zero_weight_rows']} zero-weight rows (skipped)",
        flush=True,
    )
    if diagnostics["zero_weight_rows"] == diagnostics["rows"]:
        raise UserError(f"{data_path}: every row has weight 0: nothing to train")
    base = resolve_model_path(recipe.model, recipe.toy)
    fingerprint = _fingerprint(recipe, base, _sha256(data_path))
    done_summary = _check_out_dir(out, base, fingerprint, resume)
    if done_summary is not None:
        _progress(show_progress, f"{out}: already trained with these settings and data; nothing to do")
        return {**done_summary, "skipped": True}

    tokenizer = load_tokenizer(base, recipe.model)
    examples, stats = build_examples(rows, tokenizer, cfg, recipe.model.name)
    if not examples:
        raise UserError(f"{data_path}: no example left to train on after filtering ({stats})")
    if stats["truncated"] or stats["dropped_too_long"]:
        print(
            f"warning: {stats['truncated']} rows longer than train.max_length={cfg.max_length} had their "
            f"prompt cut from the left; {stats['dropped_too_long']} rows dropped (last turn alone too long)",
            flush=True,
        )

    # Input is good: only now touch out_dir.
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = _pick_checkpoint(out, fingerprint, resume)
    _clear_previous_output(out)
    write_json_atomic(out / FINGERPRINT_FILE, {"fingerprint": fingerprint, "base": base})
    set_seed(cfg.seed)  # LoRA's initialization draws from the global RNG
    model = load_model(base, recipe.model, train=cfg)
    model = prepare_for_training(model, cfg, recipe.model)
    device = resolve_device(recipe.model)
    lengths = [len(e.input_ids) for e in examples]
    sampler = StepOrderSampler(
        lengths,
        cfg.batch_size * cfg.grad_accum,
        shuffle=cfg.shuffle,
        group_by_length=cfg.group_by_length,
        seed=cfg.seed,
    )
    trainer = _trainer_class()(
        model=model,
        args=training_arguments(cfg, out / CHECKPOINTS, use_cpu=device == "cpu", show_progress=show_progress),
        train_dataset=ExampleDataset(examples),
        data_collator=WeightedCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        normalize=cfg.normalize,
        sampler=sampler,
        callbacks=callbacks,
    )
    if not show_progress:
        trainer.remove_callback(PrinterCallback)
    if checkpoint is not None:
        _progress(show_progress, f"resuming from {checkpoint}")
    start = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint is not None else None)
    runtime = time.perf_counter() - start

    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    steps_per_epoch = math.ceil(len(examples) / (cfg.batch_size * cfg.grad_accum))
    summary = {
        **diagnostics,
        **stats,
        "examples": len(examples),
        "target_tokens": sum(sum(1 for t in e.labels if t != IGNORE) for e in examples),
        "tokens": sum(lengths),
        "tokens_seen": int(trainer.state.num_input_tokens_seen),  # non-padding, all epochs, across resumes
        "tokens_per_second": None if checkpoint else trainer.state.num_input_tokens_seen / max(runtime, 1e-9),
        "steps": trainer.state.global_step,
        "steps_per_epoch": steps_per_epoch,
        "final_loss": losses[-1] if losses else None,
        "train_loss": float(result.training_loss),
        "runtime_s": runtime,
        "resumed_from": int(checkpoint.name.rpartition("-")[2]) if checkpoint is not None else None,
        "base_model": base,
        "finetune": cfg.finetune,
        "out_dir": str(out),
    }
    extra = {
        "versions": package_versions(),
        "data": str(data_path),
        "base_model": base,
        "fingerprint": fingerprint,
    }
    _save_final(trainer, tokenizer, recipe, out, extra, summary, fingerprint)
    _progress(show_progress, f"saved {cfg.finetune} output to {out} ({summary['steps']} steps)")
    return summary
