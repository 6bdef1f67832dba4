"""Weighted SFT: the Trainer subclass, the step order over one or several processes, and `train`.

The data side lives in `examples.py` (rows → masked examples, collator, step order) and the loss in
`loss.py` (mean_i w_i · token-mean NLL_i, one denominator per optimizer step).

- **Loss and gradient accumulation.** Per row l_i = token-mean NLL; `normalize: mean` gives Σ w_i l_i / n,
  `weight_sum` gives Σ w_i l_i / Σ w_i, where n and Σ w run over the whole optimizer step (all micro-batches).
  `get_batch_samples` (the Trainer calls it once per optimizer step with that step's micro-batches) computes
  the step's denominator and hands it to every micro-batch; each micro-batch returns Σ_micro w_i l_i / denom,
  and `loss_is_scaled_for_ga = True` stops the Trainer from dividing again. So b × GA k is the same update as
  b·k × GA 1 for both normalizations, including a short last step.
- **Output** (`training_output.py`): the adapter (or full model) and its records, `done.json` last;
  checkpoints in `out_dir/checkpoints`, resumed from the last complete one. A standalone output folder is held
  by `files.exclusive_lock` while training: a second process writing into it is refused with one line.
- **Several processes** (`accelerate launch` / `torchrun`: DDP, or FSDP / DeepSpeed from the user's accelerate
  config). `train.batch_size` is per process, so a step holds b × GA × processes rows. Each step's rows are
  the same as a one-process run with that global batch: `_EvenStepSampler` yields the one-process row order
  with step windows of the global size, padded at the end with weight-0 rows to a whole number of steps, and
  accelerate deals the micro-batches round-robin, so step s of every process covers rows of step s only. The
  denominator is summed over processes (see `loss.py`). Only the main process touches the output folder
  (lock, cleanup, final files, checkpoint markers); the others wait for it.
- **Guards** (`training_guards.py`). Training stops with one line when the loss, the gradient norm or a
  trainable weight becomes non-finite (nothing of that run is kept); weighted rows sampled from another model
  than the recipe's, or data the tokenizer mostly cannot encode, stop with one line unless `force=True`.
- **Precision.** On CUDA with `model.dtype: bfloat16` the Trainer's `bf16` flag (autocast) runs the compute
  in bf16 while the LoRA weights stay fp32; on a CPU everything stays fp32 (`use_bf16`, defined in costs.py
  so that `drift-lite check`'s memory estimate follows the same rule).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import time
from pathlib import Path

import torch
from torch.utils.data import Sampler

from drift_lite.costs import use_bf16 as use_bf16  # one rule for training and `drift-lite check`'s estimate
from drift_lite.errors import UserError
from drift_lite.examples import (
    Example,
    ExampleDataset,
    StepOrderSampler,
    WeightedCollator,
    build_examples,
    read_weighted_rows,
    weight_diagnostics,
)
from drift_lite.files import exclusive_lock, remove_stale_temps, settings_hash, write_json_atomic
from drift_lite.loss import IGNORE, sequence_nll, step_denominator, weighted_loss
from drift_lite.recipe import Recipe, TrainConfig
from drift_lite.training_guards import (
    NonFiniteError,
    check_ref_model,
    check_unknown_share,
    finite_guard,
    sort_adapter_config,
)
from drift_lite.training_output import CHECKPOINT_COMPLETE as CHECKPOINT_COMPLETE
from drift_lite.training_output import CHECKPOINTS as CHECKPOINTS
from drift_lite.training_output import (
    FINGERPRINT_FILE,
    check_out_dir,
    clear_previous_output,
    pick_checkpoint,
    save_final,
)
from drift_lite.training_output import is_complete as is_complete
from drift_lite.versions import package_versions

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

        def _sum_over_processes(self, totals: torch.Tensor) -> torch.Tensor:
            if self.accelerator.num_processes == 1:
                return totals
            return self.accelerator.reduce(totals.to(self.accelerator.device), "sum").cpu()

        def get_batch_samples(self, epoch_iterator, num_batches, device):
            batches = []
            for _ in range(num_batches):
                try:
                    batches.append(next(epoch_iterator))
                except StopIteration:
                    break
            if batches:
                denominator = step_denominator(
                    [b["weight"] for b in batches], self.normalize, reduce=self._sum_over_processes
                )
                for b in batches:
                    b["step_denominator"] = denominator
            return batches, None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            nll = sequence_nll(model, inputs["input_ids"], inputs["attention_mask"], inputs["labels"])
            denominator = inputs.get("step_denominator")
            if denominator is None:  # called outside the training loop: the batch is the whole step
                denominator = step_denominator([inputs["weight"]], self.normalize)
            loss = weighted_loss(nll, inputs["weight"], denominator.to(nll.device))
            # DDP / FSDP / DeepSpeed average gradients over processes; the denominator is already global.
            loss = loss * self.accelerator.num_processes
            return (loss, {"nll": nll}) if return_outputs else loss

        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            # Every process writes its part (its RNG state, optimizer shards) before the main one marks the
            # checkpoint whole: a kill mid-save leaves it unmarked.
            self.accelerator.wait_for_everyone()
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            if self.args.should_save and folder.is_dir():
                (folder / CHECKPOINT_COMPLETE).write_text(str(self.state.global_step))
            self.accelerator.wait_for_everyone()

    return WeightedSFTTrainer


class _EvenStepSampler(Sampler[int]):
    """The step order of `inner`, then `pad` times `pad_index` (a weight-0 row): whole steps everywhere."""

    def __init__(self, inner: StepOrderSampler, pad_index: int, pad: int) -> None:
        self.inner, self.pad_index, self.pad = inner, pad_index, pad

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (only matters when shuffling)."""
        self.inner.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.inner) + self.pad

    def __iter__(self):
        yield from self.inner
        yield from [self.pad_index] * self.pad


def _padding_example(pad_token_id: int) -> Example:
    # One labeled token so the row runs the same code path as data; weight 0 makes it add nothing.
    return Example([pad_token_id, pad_token_id], [IGNORE, pad_token_id], 0.0, 0)


# ---------------------------------------------------------------------------------------------------------
# Run folder


def _sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fingerprint(recipe: Recipe, base: str, data_sha: str, processes: int = 1) -> str:
    data = recipe.to_dict()
    picked = {"model": data["model"], "train": data["train"], "base": base, "data": data_sha}
    if recipe.model.name == "toy":
        picked["toy"] = data["toy"]
    if processes > 1:  # train.batch_size is per process: the process count changes the global batch
        picked["processes"] = processes
    return settings_hash(picked)


def _is_main_process() -> bool:
    # RANK is set by torchrun / accelerate launch before any process group exists; absent: one process.
    return os.environ.get("RANK", "0") == "0"


def _say(message: str) -> None:
    if _is_main_process():
        print(message, flush=True)


def _progress(show: bool, message: str) -> None:
    if show:
        _say(message)


def training_arguments(
    train: TrainConfig, output_dir: Path, *, use_cpu: bool, show_progress: bool, bf16: bool = False
):
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
        bf16=bf16,
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
    force: bool = False,
) -> dict:
    """Weighted SFT of the recipe's model on weighted rows; saves the adapter (or model) into out_dir.

    `callbacks` are extra `TrainerCallback`s (progress hooks, tests). `force` trains rows sampled from another
    model than the recipe's, or with a high share of unknown tokens, instead of refusing them. Runs unchanged
    under `accelerate launch` / `torchrun` (see the module doc).
    """
    from drift_lite.models import load_tokenizer, resolve_device, resolve_model_path

    cfg = recipe.train
    out = Path(out_dir)
    rows = read_weighted_rows(data_path)
    diagnostics = weight_diagnostics(rows)
    _say(
        f"data {data_path}: {diagnostics['rows']} rows, weight mean {diagnostics['weight_mean']:.4g} "
        f"min {diagnostics['weight_min']:.4g} max {diagnostics['weight_max']:.4g}, "
        f"{diagnostics['zero_weight_rows']} zero-weight rows (skipped)"
    )
    if diagnostics["zero_weight_rows"] == diagnostics["rows"]:
        raise UserError(f"{data_path}: every row has weight 0: nothing to train")
    if not force:
        check_ref_model(rows, recipe, data_path)
    device = resolve_device(recipe.model)
    base = resolve_model_path(recipe.model, recipe.toy)
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    fingerprint = _fingerprint(recipe, base, _sha256(data_path), processes)
    done_summary = check_out_dir(out, base, fingerprint, resume)
    if done_summary is not None:
        _progress(show_progress, f"{out}: already trained with these settings and data; nothing to do")
        return {**done_summary, "skipped": True}

    tokenizer = load_tokenizer(base, recipe.model)
    examples, stats = build_examples(rows, tokenizer, cfg, recipe.model.name)
    if not examples:
        raise UserError(f"{data_path}: no example left to train on after filtering ({stats})")
    if not force:
        check_unknown_share(rows, tokenizer, recipe.model.name, data_path)
    if stats["truncated"] or stats["dropped_too_long"]:
        _say(
            f"warning: {stats['truncated']} rows longer than train.max_length={cfg.max_length} had their "
            f"prompt cut from the left; {stats['dropped_too_long']} rows dropped (last turn alone too long)"
        )

    # Input is good: only now touch out_dir (the main process; the others wait for its word).
    args = training_arguments(
        cfg,
        out / CHECKPOINTS,
        use_cpu=device == "cpu",
        show_progress=show_progress,
        bf16=use_bf16(recipe.model.dtype, device),
    )
    from accelerate import PartialState

    state = PartialState()  # set up by the TrainingArguments: one process, or the launched group
    with contextlib.ExitStack() as lock:
        error, checkpoint = None, None
        if state.is_main_process:
            try:
                out.mkdir(parents=True, exist_ok=True)
                lock.enter_context(exclusive_lock(out, "training output"))
                remove_stale_temps(out)
                checkpoint = pick_checkpoint(out, fingerprint, resume)
                clear_previous_output(out)
                write_json_atomic(out / FINGERPRINT_FILE, {"fingerprint": fingerprint, "base": base})
            except UserError as exc:
                error = str(exc)
        if state.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            error, checkpoint = broadcast_object_list([error, checkpoint], from_process=0)
        if error is not None:
            raise UserError(error)
        callbacks = [finite_guard(), *(callbacks or [])]
        try:
            summary, extra, trainer = _fit(
                recipe, base, examples, tokenizer, args, checkpoint, callbacks, show_progress
            )
        except NonFiniteError:
            if state.is_main_process:  # nothing of this run is kept: its checkpoints would resume into it
                shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
                (out / FINGERPRINT_FILE).unlink(missing_ok=True)
            raise
        summary = {**diagnostics, **stats, **summary, "base_model": base, "out_dir": str(out)}
        extra = {**extra, "data": str(data_path), "base_model": base, "fingerprint": fingerprint}
        save_final(trainer, recipe, out, extra, summary, fingerprint, state.is_main_process)
    _progress(show_progress, f"saved {cfg.finetune} output to {out} ({summary['steps']} steps)")
    return summary


def _fit(
    recipe: Recipe,
    base: str,
    examples: list[Example],
    tokenizer,
    args,
    checkpoint,
    callbacks: list,
    show_progress: bool,
):
    """Load and wrap the model, run the Trainer (resuming from `checkpoint`); (summary, extra, trainer)."""
    from transformers import PrinterCallback, set_seed

    from drift_lite.models import load_model, prepare_for_training

    cfg = recipe.train
    set_seed(cfg.seed)  # LoRA's initialization draws from the global RNG
    model = load_model(base, recipe.model, train=cfg)
    model = prepare_for_training(model, cfg, recipe.model)
    sort_adapter_config(model)
    lengths = [len(e.input_ids) for e in examples]
    step_rows = cfg.batch_size * cfg.grad_accum * args.world_size
    sampler = StepOrderSampler(
        lengths, step_rows, shuffle=cfg.shuffle, group_by_length=cfg.group_by_length, seed=cfg.seed
    )
    pad = (-len(examples)) % step_rows if args.world_size > 1 else 0
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=ExampleDataset([*examples, _padding_example(tokenizer.pad_token_id)]),
        data_collator=WeightedCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        normalize=cfg.normalize,
        sampler=_EvenStepSampler(sampler, len(examples), pad),
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
    steps_per_epoch = math.ceil(len(examples) / step_rows)
    summary = {
        "examples": len(examples),
        "target_tokens": sum(sum(1 for t in e.labels if t != IGNORE) for e in examples),
        "tokens": sum(lengths),
        # non-padding tokens, all epochs, across resumes (several processes: plus 2 per weight-0 padding row)
        "tokens_seen": int(trainer.state.num_input_tokens_seen),
        "tokens_per_second": None if checkpoint else trainer.state.num_input_tokens_seen / max(runtime, 1e-9),
        "steps": trainer.state.global_step,
        "steps_per_epoch": steps_per_epoch,
        "final_loss": losses[-1] if losses else None,
        "train_loss": float(result.training_loss),
        "runtime_s": runtime,
        "resumed_from": int(Path(checkpoint).name.rpartition("-")[2]) if checkpoint is not None else None,
        "finetune": cfg.finetune,
        "processes": args.world_size,
    }
    return summary, {"versions": package_versions()}, trainer
