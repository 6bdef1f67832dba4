"""The online RL update's pieces: episode rewards, UFO's group filter, RLOO advantages, token masks, the loss.

Loss of one iteration (one optimizer step), over the kept sequences i and their assistant tokens t:

    L = (1 / T) * Σ_i Σ_t [ -A_i · log π(y_t | y_<t)  +  kl_coef · KL(π(·|y_<t) ‖ π_ref(·|y_<t)) ]

with T the number of assistant tokens of the whole step (a constant of the step, as train.py's step
denominator), A_i the RLOO advantage and the KL exact over the vocabulary at each scored position (no
sampled estimator: its gradient is the exact gradient of the per-token KL). Its gradient in θ is the
policy-gradient estimate Σ_i A_i ∇ log π(τ_i) / T plus the KL's gradient (tests/test_online.py checks it
against the hand formula on a bandit).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from drift_lite.examples import Example, example_spans
from drift_lite.loss import IGNORE, scored_logits


def ufo_reward(row: dict, repeat_coef: float) -> float:
    """UFO's episode reward: 0.5^(t*-1) at the first correct turn t* (0 if never), minus the repetition
    penalty repeat_coef·(1 − unique/answers) over the episode's answers at its end (0 without answers)."""
    t_star = row.get("t_star")
    reward = 0.5 ** (t_star - 1) if t_star is not None else 0.0
    norms = row.get("answer_norms") or []
    if norms:
        unique = len({a for a in norms if a})
        reward -= repeat_coef * (1.0 - unique / len(norms))
    return reward


def keep_top_spread(groups: list[list[float]], share: float) -> list[int]:
    """Indices of the ceil(share·n) groups (at least 1) with the largest reward spread (max − min); ties keep
    the earlier group; returned in group order (UFO keeps the top 25%)."""
    if share >= 1.0:
        return list(range(len(groups)))
    n_keep = max(1, math.ceil(share * len(groups) - 1e-9))
    order = sorted(range(len(groups)), key=lambda g: (-(max(groups[g]) - min(groups[g])), g))
    return sorted(order[:n_keep])


def rloo_advantages(rewards: list[float]) -> list[float]:
    """A_i = R_i − mean of the others in the group (0 for a group of one)."""
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    total = sum(rewards)
    return [r - (total - r) / (n - 1) for r in rewards]


def episode_example(
    tokenizer, messages: list[dict], advantage: float, model_name: str, row: int, shots: int = 0
) -> Example:
    """Token ids with labels on every assistant turn the policy played (system, problem, feedback and the
    first `shots` assistant messages, the worked examples, masked); `weight` is the advantage."""
    ids, spans = example_spans(tokenizer, messages, "all", model_name, row)
    spans = spans[shots:]
    labels = [IGNORE] * len(ids)
    for a, b in spans:
        labels[a:b] = ids[a:b]
    end = spans[-1][1] if spans else len(ids)
    return Example(ids[:end], labels[:end], advantage, row)


def micro_batch_loss(
    model, batch: dict, denominator: float, kl_coef: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """One micro-batch's share of the step loss (see the module doc) and its sums of -A·logπ and KL.

    `batch`: input_ids, attention_mask, labels (IGNORE where masked), weight (the advantages). The reference
    is `model` with its adapter disabled (`model.disable_adapter()`), scored without gradients.
    """
    labels = batch["labels"]
    targets = labels[:, 1:]
    keep = torch.cat([targets != IGNORE, torch.zeros_like(targets[:, :1], dtype=torch.bool)], dim=1)
    tokens = targets[targets != IGNORE]
    rows = torch.arange(labels.shape[0], device=labels.device).unsqueeze(1).expand_as(keep)[keep]
    logp = F.log_softmax(scored_logits(model, batch["input_ids"], batch["attention_mask"], keep).float(), -1)
    token_logp = logp.gather(1, tokens.unsqueeze(1)).squeeze(1)
    advantage = batch["weight"].to(logp.device, torch.float32)[rows]
    pg = -(advantage * token_logp).sum()
    kl = torch.zeros((), device=logp.device)
    if kl_coef:
        with torch.no_grad(), model.disable_adapter():
            ref = F.log_softmax(
                scored_logits(model, batch["input_ids"], batch["attention_mask"], keep).float(), -1
            )
        kl = (logp.exp() * (logp - ref)).sum()
    loss = (pg + kl_coef * kl) / denominator
    return loss, {"pg": float(pg.detach()), "kl": float(kl.detach()), "tokens": int(tokens.numel())}
