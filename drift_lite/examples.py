"""Training examples from weighted rows: last-assistant masking, a weight-carrying collator, the step order.

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
- **Far too long.** Tokenizing is the costly part (one 50 MB row took 83 s and 10 GB), so text is measured in
  characters first, against `TEXT_CHARS_PER_TOKEN` x `max_length`: no tokenizer the kit targets averages
  that many characters per token over a message. A last assistant turn longer than that cannot fit: the row is
  dropped before tokenizing (counted in `dropped_too_long` and in `dropped_long_text`). A history longer than
  that keeps only its last messages within the bound (the message at the edge cut from the left, unless it is
  an assistant turn), which the left cut above would have removed anyway.
- **Zero weights.** Rows with weight exactly 0 are skipped before batching: they contribute no gradient, only
  compute. DRIFT's exp-weights are never exactly 0; exact zeros come from `correct_only` (RFT), whose batch
  mean then runs over the rows that train, as RFT means.
- **Order.** Rows are taken in file order (the release does not shuffle) unless `train.shuffle` (seeded per
  epoch). `train.group_by_length` sorts rows by length only inside each optimizer step's window (b × GA rows):
  which rows share a step never changes, so the update is the one without grouping, and padding shrinks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from drift_lite.chat import THINK_PREFILL, render_prompt
from drift_lite.errors import UserError
from drift_lite.loss import IGNORE
from drift_lite.recipe import TrainConfig


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


TEXT_CHARS_PER_TOKEN = 16  # characters per token no tokenizer reaches on average (English BPE: ~4)


def text_bound(max_length: int) -> int:
    """Characters beyond which a message cannot fit in `max_length` tokens (checked before tokenizing)."""
    return TEXT_CHARS_PER_TOKEN * max_length


def clip_history(messages: list[dict], bound: int) -> list[dict]:
    """`messages` with the history before the last one cut to its last `bound` characters of content.

    Whole messages are dropped from the start; the message at the edge keeps its tail, except an assistant
    turn (its `<think>` prefill decides how it is masked), which is dropped whole. Unchanged when it fits.
    """
    used = len(messages[-1]["content"])
    if used + sum(len(m["content"]) for m in messages[:-1]) <= bound:
        return messages
    kept: list[dict] = []
    for message in reversed(messages[:-1]):
        size = len(message["content"])
        if used + size <= bound:
            kept.append(message)
            used += size
            continue
        room = bound - used
        if room > 0 and message["role"] != "assistant":
            kept.append({**message, "content": message["content"][-room:]})
        break
    return [*reversed(kept), messages[-1]]


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
    stats = {"truncated": 0, "dropped_too_long": 0, "dropped_empty": 0, "dropped_long_text": 0}
    bound = text_bound(train.max_length)
    for i, row in enumerate(rows, 1):
        weight = float(row["weight"])
        if weight == 0:
            continue
        if len(row["messages"][-1]["content"]) > bound:  # cannot fit: skip it before tokenizing it
            stats["dropped_too_long"] += 1
            stats["dropped_long_text"] += 1
            continue
        messages = clip_history(row["messages"], bound)
        ids, spans = example_spans(tokenizer, messages, train.target, model_name, i)
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
