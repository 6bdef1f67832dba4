"""The weighted loss, the heart of DRIFT: loss = mean_i w_i · token-mean NLL_i over an optimizer step.

Per row l_i = the token-mean NLL of its labeled (assistant) tokens. `normalize: mean` gives Σ w_i l_i / n,
`weight_sum` gives Σ w_i l_i / Σ w_i, where n and Σ w run over the whole optimizer step (all micro-batches).

The gradient-accumulation trap: dividing each micro-batch by its own size (or letting the Trainer divide by
GA) makes b × GA k a different update from b·k × GA 1 whenever micro-batches differ in size or weight sum
(a short last step, `weight_sum`). So `step_denominator` is computed once per optimizer step from all its
micro-batches (the Trainer in `train.py` does it in `get_batch_samples`), each micro-batch returns
Σ_micro w_i l_i / denominator (`weighted_loss`), and the Trainer is told not to divide again.

Several processes (DDP, FSDP, DeepSpeed under `accelerate launch`): the step's rows are spread over the
processes, so the denominator must be the global one. `step_denominator(..., reduce=)` sums the local row
count and weight sum over processes before dividing; each process then returns its share times the process
count, because the backends average gradients over processes. Rows of weight 0 are padding that gives every
process the same number of full micro-batches (zero-weight data rows never reach the loss): they add
nothing to Σ w_i l_i and are not counted by `mean`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F

IGNORE = -100  # label of a token that is not trained on (the prompt, padding): transformers' convention


def _accepts_logits_to_keep(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(base.forward).parameters
    except (TypeError, ValueError):
        return False


def scored_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor):
    """Logits [n_scored, vocab] at the positions `keep` marks (position t predicts token t+1)."""
    if _accepts_logits_to_keep(model):
        # Project only the positions that are scored onto the vocabulary: prompts are most of each sequence.
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False
        ).logits
        return logits[keep] if logits.dim() == 3 else logits  # 3 dims: a model that ignored the mask
    return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[keep]


def sequence_nll(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """Token-mean NLL of each row over its labeled tokens (shape [batch])."""
    targets = labels[:, 1:]
    keep = targets != IGNORE  # position t predicts token t+1
    keep_full = torch.cat([keep, torch.zeros_like(keep[:, :1])], dim=1)
    logits = scored_logits(model, input_ids, attention_mask, keep_full)
    nll = F.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(keep)[keep]
    per_row = torch.zeros(labels.shape[0], dtype=nll.dtype, device=nll.device).index_add_(0, rows, nll)
    return per_row / keep.sum(dim=1).clamp(min=1)


def step_denominator(
    weights: list[torch.Tensor],
    normalize: str,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """What Σ w_i l_i is divided by over one optimizer step: its row count (`mean`) or weight sum.

    `reduce` sums a tensor over processes (None: one process); rows of weight 0 are padding, not counted.
    """
    totals = torch.tensor(
        [
            float(sum(int((w > 0).sum()) for w in weights)),
            float(sum(float(w.double().sum()) for w in weights)),
        ],
        dtype=torch.float64,
    )
    if reduce is not None:
        totals = reduce(totals)
    rows, weight_sum = float(totals[0]), float(totals[1])
    if normalize == "mean":
        return torch.tensor(rows if rows > 0 else 1.0)
    return torch.tensor(weight_sum if weight_sum > 0 else 1.0)


def weighted_loss(nll: torch.Tensor, weight: torch.Tensor, denominator: torch.Tensor | float) -> torch.Tensor:
    """Σ_i w_i · nll_i / denominator (one micro-batch's share of the step loss)."""
    return (weight.to(nll.dtype) * nll).sum() / denominator


def batch_loss(model, batch: dict, normalize: str = "mean") -> torch.Tensor:
    """The loss of one batch taken as a whole optimizer step (for checks and single-batch use)."""
    nll = sequence_nll(model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    return weighted_loss(nll, batch["weight"], step_denominator([batch["weight"]], normalize).to(nll.device))
