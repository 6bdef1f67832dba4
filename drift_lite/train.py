"""Weighted SFT: last-assistant examples, prefix masking, a weight-carrying collator, the loss, a Trainer.

Choices, documented here once:

- **Examples.** The last assistant message is the target (`train.target: all` trains every assistant turn).
  The prompt is the conversation before it rendered with the generation prompt plus the `<think>` prefill
  (`chat.render_prompt`); stored assistant content starts with `<think>`, so the target starts right after the
  prefill. The prompt text must be a prefix of the full text and its token ids a prefix of the full ids, or
  the run stops with an error naming the model. Labels run through the end-of-turn (eos) token; template
  tokens after it (a newline) are cut from the sequence: the model never generates them.
- **Too long.** Over `train.max_length`, the prompt is cut from the LEFT and the last assistant turn is kept
  whole (counted and reported). Dropping long rows instead would silently change the data mix: long rows are
  the multi-turn failures, so dropping them shifts the per-group self-normalized weights and turns uniform SFT
  towards RFT. A row whose last turn alone does not fit is dropped (counted).
- **Zero weights.** Rows with weight exactly 0 are skipped before batching: they contribute no gradient, only
  compute. DRIFT's exp-weights are never exactly 0; exact zeros come from `correct_only` (RFT), whose batch
  mean then runs over the rows that train, as RFT means.
- **Loss and gradient accumulation.** Per row l_i = token-mean NLL; `normalize: mean` gives Σ w_i l_i / n,
  `weight_sum` gives Σ w_i l_i / Σ w_i, where n and Σ w run over the whole optimizer step (all micro-batches).
  `get_batch_samples` (the Trainer calls it once per optimizer step with that step's micro-batches) computes
  the step's denominator and hands it to every micro-batch; each micro-batch returns Σ_micro w_i l_i / denom,
  and `loss_is_scaled_for_ga = True` stops the Trainer from dividing again. So b × GA k is the same update as
  b·k × GA 1 for both normalizations, including a short last step.
- **Order.** Rows are taken in file order (the release does not shuffle) unless `train.shuffle` (seeded per
  epoch). `train.group_by_length` sorts rows by length only inside each optimizer step's window (b × GA rows):
  which rows share a step never changes, so the update is the one without grouping, and padding shrinks.
- **Output.** `out_dir` holds the adapter (or full model), tokenizer, `recipe.yaml`, `train_log.jsonl`,
  `trainer_state.json`, `summary.json`, and `done.json` written last (`is_complete`). Final files are written
  into a temp folder and renamed in; checkpoints go to `out_dir/checkpoints` and a rerun resumes from the last
  one marked complete; they are deleted once `done.json` is written.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from drift_lite.chat import THINK_PREFILL, render_prompt
from drift_lite.errors import UserError
from drift_lite.recipe import Recipe, TrainConfig, dump_recipe

IGNORE = -100
DONE_FILE = "done.json"
FINGERPRINT_FILE = "train_fingerprint.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_COMPLETE = "checkpoint_complete"
_FINAL_TMP = ".final.tmp"


# ---------------------------------------------------------------------------------------------------------
# Data


def read_weighted_rows(path: str | os.PathLike) -> list[dict]:
    """Read weighted rows; a missing, non-finite or negative `weight` is a one-line UserError."""
    from drift_lite.records import is_finite_number, iter_rows, json_type

    rows = []
    for i, row in enumerate(iter_rows(path), 1):
        if "weight" not in row:
            raise UserError(
                f"{path}: row {i}: field 'weight' missing (train needs weighted rows: run `weight`)"
            )
        w = row["weight"]
        if not is_finite_number(w):
            raise UserError(f"{path}: row {i}: field 'weight': expected a finite number, got {json_type(w)}")
        if w < 0:
            raise UserError(f"{path}: row {i}: field 'weight': expected a number >= 0, got {w}")
        if row["messages"][-1]["role"] != "assistant":
            role = row["messages"][-1]["role"]
            raise UserError(
                f"{path}: row {i}: last message is '{role}', expected the assistant turn to train on"
            )
        rows.append(row)
    return rows


def weight_diagnostics(rows: list[dict]) -> dict:
    """Rows, mean/min/max weight and zero-weight rows of a weighted data set."""
    weights = [float(r["weight"]) for r in rows]
    return {
        "rows": len(weights),
        "weight_mean": sum(weights) / len(weights) if weights else 0.0,
        "weight_min": min(weights, default=0.0),
        "weight_max": max(weights, default=0.0),
        "zero_weight_rows": sum(1 for w in weights if w == 0),
    }


@dataclass
class Example:
    """One training sequence: token ids, labels (IGNORE where masked), the row's weight and index."""

    input_ids: list[int]
    labels: list[int]
    weight: float
    row: int


def _ids(tokenizer, text: str) -> list[int]:
    # The chat template already writes any BOS it wants; letting the tokenizer add one would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _prefix_error(model_name: str, row: int, what: str) -> UserError:
    return UserError(
        f"model {model_name}: its chat template breaks the prompt-prefix property ({what}, row {row}); "
        "cannot mask the prompt by token prefix"
    )


def example_spans(tokenizer, messages: list[dict], target: str, model_name: str, row: int = 0):
    """(full token ids, [(start, end)] label spans) of the assistant turns to train on."""
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    full_ids = _ids(tokenizer, full_text)
    eos = tokenizer.eos_token_id
    turns = [j for j, m in enumerate(messages) if m["role"] == "assistant"]
    if target == "last":
        turns = turns[-1:]
    spans = []
    for j in turns:
        history = messages[:j]
        if messages[j]["content"].startswith(THINK_PREFILL):
            prompt = render_prompt(tokenizer, history)
        else:  # content without the prefill (not written by the kit): the plain generation prompt
            prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        upto = (
            full_text
            if j == len(messages) - 1
            else tokenizer.apply_chat_template(messages[: j + 1], tokenize=False)
        )
        if not (upto.startswith(prompt) and full_text.startswith(upto)):
            raise _prefix_error(model_name, row, "text")
        prompt_ids = _ids(tokenizer, prompt)
        upto_ids = full_ids if upto is full_text else _ids(tokenizer, upto)
        if full_ids[: len(prompt_ids)] != prompt_ids or full_ids[: len(upto_ids)] != upto_ids:
            raise _prefix_error(model_name, row, "token ids")
        start, end = len(prompt_ids), len(upto_ids)
        turn = upto_ids[start:end]
        if (
            eos is not None and eos in turn
        ):  # stop after the end-of-turn token: what follows is never generated
            end = start + len(turn) - turn[::-1].index(eos)
        if end > start:
            spans.append((start, end))
    return full_ids, spans


def build_examples(
    rows: list[dict], tokenizer, train: TrainConfig, model_name: str
) -> tuple[list[Example], dict]:
    """Tokenize rows into masked examples (zero-weight rows skipped, long prompts cut from the left)."""
    examples: list[Example] = []
    stats = {"truncated": 0, "dropped_too_long": 0, "dropped_empty": 0}
    for i, row in enumerate(rows, 1):
        weight = float(row["weight"])
        if weight == 0:
            continue
        ids, spans = example_spans(tokenizer, row["messages"], train.target, model_name, i)
        if not spans:
            stats["dropped_empty"] += 1
            continue
        ids = ids[: spans[-1][1]]
        labels = [IGNORE] * len(ids)
        for a, b in spans:
            labels[a:b] = ids[a:b]
        if len(ids) > train.max_length:
            cut = len(ids) - train.max_length
            if spans[-1][0] - cut < 1:  # the last turn plus one token of context must fit
                stats["dropped_too_long"] += 1
                continue
            ids, labels = ids[cut:], labels[cut:]
            labels[0] = IGNORE  # nothing before it to predict it from
            stats["truncated"] += 1
        examples.append(Example(ids, labels, weight, i))
    return examples, stats


class ExampleDataset(Dataset):
    """A list of examples as the dicts the collator takes."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        e = self.examples[i]
        return {"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight}


class WeightedCollator:
    """Right-pads a micro-batch and carries each row's `weight`."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad_token_id = pad_token_id

    def __call__(self, features: list[dict]) -> dict:
        """Pad to the longest sequence of the micro-batch (padding: attention 0, label IGNORE)."""
        n = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), n), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE, dtype=torch.long)
        attention = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            attention[i, :k] = 1
        weight = torch.tensor([float(f["weight"]) for f in features], dtype=torch.float32)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "weight": weight}


def step_order(
    lengths: list[int], step_rows: int, *, shuffle: bool, group_by_length: bool, seed: int, epoch: int
) -> list[int]:
    """The row order of one epoch: file order (or a seeded permutation), sorted by length within each step."""
    order = list(range(len(lengths)))
    if shuffle:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(order), generator=generator).tolist()
    if group_by_length:
        # Longest first inside each optimizer step: the step's row set (hence its update) is unchanged.
        order = [
            i
            for start in range(0, len(order), step_rows)
            for i in sorted(order[start : start + step_rows], key=lambda k: -lengths[k])
        ]
    return order


class StepOrderSampler(Sampler[int]):
    """Deterministic sampler yielding `step_order` for the current epoch."""

    def __init__(
        self, lengths: list[int], step_rows: int, *, shuffle: bool, group_by_length: bool, seed: int
    ):
        self.lengths, self.step_rows = lengths, step_rows
        self.shuffle, self.group_by_length, self.seed = shuffle, group_by_length, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (only matters when shuffling)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(
            step_order(
                self.lengths,
                self.step_rows,
                shuffle=self.shuffle,
                group_by_length=self.group_by_length,
                seed=self.seed,
                epoch=self.epoch,
            )
        )


# ---------------------------------------------------------------------------------------------------------
# Loss


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def sequence_nll(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Token-mean NLL of each row over its labeled tokens (shape [batch])."""
    targets = labels[:, 1:]
    keep = targets != IGNORE  # position t predicts token t+1
    keep_full = torch.cat([keep, torch.zeros_like(keep[:, :1])], dim=1)
    if _accepts_logits_to_keep(model):
        # Project only the positions that are scored onto the vocabulary: prompts are most of each sequence.
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep_full, use_cache=False
        )
        logits = out.logits
        if logits.dim() == 3:  # a model that ignored the boolean mask
            logits = logits[keep_full]
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        logits = out.logits[keep_full]
    nll = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(keep)[keep]
    per_row = torch.zeros(labels.shape[0], dtype=nll.dtype, device=nll.device).index_add_(0, rows, nll)
    return per_row / keep.sum(dim=1).clamp(min=1)


def step_denominator(weights: list[torch.Tensor], normalize: str) -> torch.Tensor:
    """What Σ w_i l_i is divided by over one optimizer step: its row count (`mean`) or weight sum."""
    if normalize == "mean":
        return torch.tensor(float(sum(int(w.numel()) for w in weights)))
    total = float(sum(float(w.sum()) for w in weights))
    return torch.tensor(total if total > 0 else 1.0)


def weighted_loss(nll: torch.Tensor, weight: torch.Tensor, denominator: torch.Tensor | float) -> torch.Tensor:
    """Σ_i w_i · nll_i / denominator (one micro-batch's share of the step loss)."""
    return (weight.to(nll.dtype) * nll).sum() / denominator


def batch_loss(model, batch: dict, normalize: str = "mean") -> torch.Tensor:
    """The loss of one batch taken as a whole optimizer step (for checks and single-batch use)."""
    nll = sequence_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return weighted_loss(nll, batch["weight"], step_denominator([batch["weight"]], normalize).to(nll.device))


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
    try:
        done = json.loads((out / DONE_FILE).read_text())
        files = done["files"]
        return all(
            (out / name).is_file() and (out / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
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
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def _versions() -> dict:
    import peft
    import transformers

    import drift_lite

    return {
        "drift_lite": drift_lite.__version__,
        "torch": str(torch.__version__),
        "transformers": str(transformers.__version__),
        "peft": str(peft.__version__),
    }


def _progress(show: bool, message: str) -> None:
    if show:
        print(message, flush=True)


def _check_out_dir(out: Path, base: str, fingerprint: str, resume: bool) -> dict | None:
    """Refuse an out_dir from another base model; return the stored summary when it is already done."""
    from drift_lite.models import check_adapter_base, same_base

    check_adapter_base(out, base)
    stored = _read_json(out / FINGERPRINT_FILE) or {}
    if isinstance(stored.get("base"), str) and not same_base(stored["base"], base):
        raise UserError(f"{out}: holds a training run for base model {stored['base']}, not {base}")
    done = _read_json(out / DONE_FILE)
    if resume and done is not None and done.get("fingerprint") == fingerprint and is_complete(out):
        return done.get("summary", {})
    return None


def _pick_checkpoint(out: Path, fingerprint: str, resume: bool) -> Path | None:
    """The checkpoint to resume from; checkpoints of other settings or data (or resume off) are deleted."""
    stored = _read_json(out / FINGERPRINT_FILE) or {}
    checkpoints = out / CHECKPOINTS
    if resume and stored.get("fingerprint") == fingerprint:
        _drop_incomplete_checkpoints(checkpoints)
        return last_complete_checkpoint(checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return None


def _clear_previous_output(out: Path) -> None:
    """Remove done.json first (the folder is no longer complete), then the files it listed."""
    done = _read_json(out / DONE_FILE)
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
    with open(tmp / "train_log.jsonl", "w") as handle:
        for entry in trainer.state.log_history:
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
    (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    for name in files:
        os.replace(tmp / name, out / name)
    _write_json(out / DONE_FILE, {"fingerprint": fingerprint, "files": files, "summary": summary})
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
    _write_json(out / FINGERPRINT_FILE, {"fingerprint": fingerprint, "base": base})
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
    extra = {"versions": _versions(), "data": str(data_path), "base_model": base, "fingerprint": fingerprint}
    _save_final(trainer, tokenizer, recipe, out, extra, summary, fingerprint)
    _progress(show_progress, f"saved {cfg.finetune} output to {out} ({summary['steps']} steps)")
    return summary
