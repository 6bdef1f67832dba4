"""The theory check: on single-turn bandits, the kit's weights and loss train a policy to Soft Best-of-N.

Each bandit prompt has K answers, a known reference policy π_ref (a softmax) and a reward R(a). The
KL-regularized optimum is π*(a) ∝ π_ref(a)·exp(R(a)/β). DRIFT draws N answers from π_ref per prompt, weights
them w_i = exp(R_i/β) / mean_j exp(R_j/β) and minimizes mean_i w_i · NLL(a_i). In expectation the weighted
data is (1/N) Σ_i w_i δ(a_i), whose mean is Soft Best-of-N (SBoN_N: draw N from π_ref, keep one with
probability ∝ exp(R/β)), not π*. `sbon_exact` computes SBoN_N exactly by enumerating the count vectors c
of N draws over K answers: SBoN_N(a) = Σ_c Mult(c; N, π_ref) · c_a e_a / Σ_b c_b e_b with e_a = exp(R_a/β).
The kit's rule that a group of all-equal returns gets weight 1 agrees (then c_a e / Σ_b c_b e = c_a / N).

`run_theory` trains a softmax policy (one logit vector per prompt, started at π_ref's logits) with the kit's
own `group_weights` and `sequence_nll` / `step_denominator` / `weighted_loss`, in two data regimes:
`fresh` (new groups of N every step, Adam with a decaying learning rate) and `fixed` (one group of N per
prompt, full-batch to convergence), and writes theory.json, theory.md and theory-kl.png.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from drift_lite.errors import UserError
from drift_lite.loss import IGNORE, sequence_nll, step_denominator, weighted_loss
from drift_lite.weights import group_weights

NS = (2, 4, 8, 16, 64)
BETAS = (0.1, 0.3, 1.0)
TINY_NS = (2, 4, 16)
SEED = 17
REGIMES = ("fresh", "fixed")


@dataclass(frozen=True)
class Bandit:
    """One prompt: its name, π_ref as probabilities (the policy's initial logits are their logs), rewards."""

    name: str
    pi_ref: tuple[float, ...]
    reward: tuple[float, ...]


# Answer 0 is the correct one in every prompt. `hard` is the prompt where π_ref puts little mass on it.
BANDITS = (
    Bandit("easy", (0.45, 0.25, 0.15, 0.1, 0.05), (1.0, 0.0, 0.0, 0.0, 0.0)),
    Bandit("partial", (0.2, 0.35, 0.2, 0.15, 0.1), (1.0, 0.5, 0.0, 0.0, -0.1)),
    Bandit("hard", (0.03, 0.42, 0.3, 0.15, 0.1), (1.0, 0.2, 0.0, 0.0, -0.1)),
)


@dataclass(frozen=True)
class Schedule:
    """How long and how hard each regime trains."""

    fresh_steps: int = 1500
    fresh_groups: int = 32  # groups of N per prompt per step (the kit's groups; one per prompt per step works
    # too, only slower: the expected gradient is the same)
    fresh_lr: float = 0.3
    fresh_lr_end: float = 0.001
    fixed_steps: int = 1500
    fixed_lr: float = 0.3
    fixed_lr_end: float = 0.001


FULL = Schedule()
TINY = Schedule(fresh_steps=200, fresh_groups=16, fixed_steps=400)


# ---------------------------------------------------------------------------------------------------------
# Exact distributions


def _check(pi_ref: list[float], reward: list[float], beta: float) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pi_ref, dtype=np.float64)
    r = np.asarray(reward, dtype=np.float64)
    if p.ndim != 1 or p.shape != r.shape or len(p) < 1:
        raise UserError("pi_ref and reward must be lists of the same length K >= 1")
    if not (np.all(np.isfinite(p)) and np.all(p >= 0) and abs(p.sum() - 1) < 1e-9):
        raise UserError("pi_ref must be probabilities summing to 1")
    if not np.all(np.isfinite(r)):
        raise UserError("rewards must be finite numbers")
    if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta > 0):
        raise UserError(f"beta must be a finite number > 0, got {beta!r}")
    return p, r


def pi_star(pi_ref: list[float], reward: list[float], beta: float) -> list[float]:
    """The KL-regularized optimum π*(a) ∝ π_ref(a)·exp(R(a)/β)."""
    p, r = _check(pi_ref, reward, beta)
    with np.errstate(divide="ignore"):
        logits = np.log(p) + r / beta  # in log space: exp(R/β) alone under- or overflows at small β
    unnorm = np.exp(logits - logits.max())
    return (unnorm / unnorm.sum()).tolist()


@functools.lru_cache(maxsize=8)
def count_vectors(n: int, k: int) -> np.ndarray:
    """All count vectors of n draws over k answers (rows of k non-negative ints summing to n; read-only)."""
    if n < 1 or k < 1:
        raise UserError(f"need n >= 1 and k >= 1, got n={n}, k={k}")
    if k == 1:
        return _read_only(np.array([[n]], dtype=np.int64))
    bars = np.array(list(itertools.combinations(range(n + k - 1), k - 1)), dtype=np.int64).reshape(-1, k - 1)
    edges = np.concatenate(
        [np.full((len(bars), 1), -1), bars, np.full((len(bars), 1), n + k - 1)], axis=1
    )  # stars and bars: the gaps between consecutive bars are the counts
    return _read_only(np.diff(edges, axis=1) - 1)


def _read_only(counts: np.ndarray) -> np.ndarray:
    counts.flags.writeable = False  # cached: shared by every caller
    return counts


def _multinomial_probs(counts: np.ndarray, p: np.ndarray) -> np.ndarray:
    n = int(counts[0].sum())
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1)))])
    with np.errstate(divide="ignore"):
        log_p = np.log(p)
    terms = np.where(counts > 0, counts * log_p, 0.0)  # 0·log 0 = 0 for answers π_ref never draws
    return np.exp(log_fact[n] - log_fact[counts].sum(axis=1) + terms.sum(axis=1))


def sbon_exact(pi_ref: list[float], reward: list[float], beta: float, n: int) -> list[float]:
    """Soft Best-of-N exactly: Σ over count vectors of Mult(c)·c_a e_a / Σ_b c_b e_b, e = exp(R/β)."""
    p, r = _check(pi_ref, reward, beta)
    counts = count_vectors(n, len(p))
    scaled = np.where(counts > 0, r / beta, -np.inf)  # per group, shift by its own best answer: never 0/0
    mass = np.where(counts > 0, counts * np.exp(scaled - scaled.max(axis=1, keepdims=True)), 0.0)
    share = mass / mass.sum(axis=1, keepdims=True)
    out = _multinomial_probs(counts, p) @ share
    return (out / out.sum()).tolist()


def sbon_via_kit_weights(pi_ref: list[float], reward: list[float], beta: float, n: int) -> list[float]:
    """E[(1/N) Σ_i w_i δ(a_i)] with the kit's `group_weights`, enumerated over count vectors (small n)."""
    p, r = _check(pi_ref, reward, beta)
    counts = count_vectors(n, len(p))
    probs = _multinomial_probs(counts, p)
    out = np.zeros(len(p))
    for prob, c in zip(probs, counts):
        out += prob * _weights_by_answer(tuple(int(x) for x in c), r.tolist(), beta) * c / n
    return out.tolist()


def _weights_by_answer(counts: tuple[int, ...], reward: list[float], beta: float) -> np.ndarray:
    """The kit's weight of each answer within a group whose answer counts are `counts` (order-free)."""
    answers = [a for a, c in enumerate(counts) for _ in range(c)]
    weights = group_weights([reward[a] for a in answers], beta)
    out = np.zeros(len(counts))
    for a, w in zip(answers, weights):
        out[a] = w
    return out


def kl(p: list[float], q: list[float]) -> float:
    """KL(p‖q) = Σ p log(p/q) (terms with p = 0 are 0; inf if q = 0 where p > 0)."""
    total = 0.0
    for a, b in zip(p, q):
        if a > 0:
            total += math.inf if b <= 0 else a * math.log(a / b)
    return max(total, 0.0)


def tv(p: list[float], q: list[float]) -> float:
    """Total variation distance ½ Σ |p - q|."""
    return 0.5 * sum(abs(a - b) for a, b in zip(p, q))


# ---------------------------------------------------------------------------------------------------------
# The policy and the kit's loss


class BanditPolicy(nn.Module):
    """A softmax policy: one logit vector per prompt, shaped like a causal LM for `sequence_nll`.

    A sequence is [prompt id, answer id]; position 0's logits (the prompt's row) score the answer. Written by
    hand because it is the whole model: a table of logits, nothing a library would add.
    """

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone().double())

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False):
        """Logits [batch, 2, K]: the prompt's row at both positions (only position 0 is scored)."""
        rows = self.logits[input_ids[:, 0]]
        return SimpleNamespace(logits=rows.unsqueeze(1).expand(-1, input_ids.shape[1], -1))

    def probs(self) -> list[list[float]]:
        """The policy's answer distribution per prompt."""
        with torch.no_grad():
            return torch.softmax(self.logits, dim=-1).tolist()


def kit_loss(policy: BanditPolicy, prompts: torch.Tensor, answers: torch.Tensor, weights: torch.Tensor):
    """The kit's weighted SFT loss on (prompt, answer, weight) rows: Σ w_i NLL_i / rows (normalize: mean)."""
    input_ids = torch.stack([prompts, answers], dim=1)
    labels = torch.stack([torch.full_like(answers, IGNORE), answers], dim=1)
    nll = sequence_nll(policy, input_ids, torch.ones_like(input_ids), labels)
    return weighted_loss(nll, weights, step_denominator([weights], "mean"))


class _WeightTable:
    """The kit's weights per (prompt, count vector), memoized: a group's weights depend only on its counts."""

    def __init__(self, bandits: tuple[Bandit, ...], beta: float) -> None:
        self.bandits, self.beta, self.cache = bandits, beta, {}

    def rows(self, prompt: int, answers: torch.Tensor) -> torch.Tensor:
        """Weights of a [groups, N] block of answers, each row one group."""
        k = len(self.bandits[prompt].reward)
        counts = torch.nn.functional.one_hot(answers, k).sum(dim=1).tolist()
        table = []
        for c in counts:
            key = (prompt, tuple(c))
            if key not in self.cache:
                self.cache[key] = _weights_by_answer(key[1], list(self.bandits[prompt].reward), self.beta)
            table.append(self.cache[key])
        table_t = torch.as_tensor(np.array(table))
        return torch.gather(table_t, 1, answers)


def _init_logits(bandits: tuple[Bandit, ...]) -> torch.Tensor:
    return torch.log(torch.tensor([b.pi_ref for b in bandits], dtype=torch.float64))


def _train(policy: BanditPolicy, batches, steps: int, lr: float, lr_end: float) -> None:
    """Adam, the learning rate decaying geometrically from lr to lr_end.

    A large start moves the logits of answers the target all but excludes far enough down (at small β they
    must fall by ~1/β); a small end lets the fresh regime's sampling noise average out.
    """
    opt = torch.optim.Adam(policy.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (lr_end / lr) ** (t / steps))
    for _ in range(steps):
        prompts, answers, weights = batches()
        opt.zero_grad()
        kit_loss(policy, prompts, answers, weights).backward()
        opt.step()
        sched.step()


def train_fresh(bandits, beta: float, n: int, schedule: Schedule, seed: int) -> list[list[float]]:
    """Train on new groups of N per prompt every step; return the trained distribution per prompt."""
    gen = torch.Generator().manual_seed(seed)
    refs = torch.tensor([b.pi_ref for b in bandits], dtype=torch.float64)
    table = _WeightTable(bandits, beta)
    g = schedule.fresh_groups

    def batches():
        prompts, answers, weights = [], [], []
        for i in range(len(bandits)):
            drawn = torch.multinomial(refs[i], g * n, replacement=True, generator=gen).view(g, n)
            prompts.append(torch.full((g * n,), i))
            answers.append(drawn.reshape(-1))
            weights.append(table.rows(i, drawn).reshape(-1))
        return torch.cat(prompts), torch.cat(answers), torch.cat(weights)

    policy = BanditPolicy(_init_logits(bandits))
    _train(policy, batches, schedule.fresh_steps, schedule.fresh_lr, schedule.fresh_lr_end)
    return policy.probs()


def fixed_groups(bandits, n: int, seed: int) -> list[list[int]]:
    """The one sample set of the fixed regime: N answers per prompt drawn from π_ref (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    refs = torch.tensor([b.pi_ref for b in bandits], dtype=torch.float64)
    return [
        torch.multinomial(refs[i], n, replacement=True, generator=gen).tolist() for i in range(len(bandits))
    ]


def train_fixed(bandits, beta: float, groups: list[list[int]], schedule: Schedule) -> list[list[float]]:
    """Train full-batch on one fixed group per prompt, weighted by the kit; return trained distributions."""
    prompts, answers, weights = [], [], []
    for i, group in enumerate(groups):
        prompts += [i] * len(group)
        answers += group
        weights += group_weights([bandits[i].reward[a] for a in group], beta)
    batch = (torch.tensor(prompts), torch.tensor(answers), torch.tensor(weights, dtype=torch.float64))
    policy = BanditPolicy(_init_logits(bandits))
    _train(policy, lambda: batch, schedule.fixed_steps, schedule.fixed_lr, schedule.fixed_lr_end)
    return policy.probs()


def weighted_empirical(reward: list[float], beta: float, group: list[int]) -> list[float]:
    """(1/N) Σ_i w_i δ(a_i) of one group with the kit's weights: what the fixed regime converges to."""
    out = [0.0] * len(reward)
    for a, w in zip(group, group_weights([reward[a] for a in group], beta)):
        out[a] += w / len(group)
    return out


# ---------------------------------------------------------------------------------------------------------
# The run


def _entry(bandit: Bandit, n: int, beta: float, regime: str, trained: list[float]) -> dict:
    ref = list(bandit.pi_ref)
    star = pi_star(ref, list(bandit.reward), beta)
    sbon = sbon_exact(ref, list(bandit.reward), beta, n)
    return {
        "prompt": bandit.name,
        "n": n,
        "beta": beta,
        "regime": regime,
        "reward": list(bandit.reward),
        "pi_ref": ref,
        "pi_star": star,
        "sbon": sbon,
        "pi_trained": trained,
        "kl_trained_sbon": kl(trained, sbon),
        "kl_trained_star": kl(trained, star),
        "kl_sbon_star": kl(sbon, star),
        "tv_trained_star": tv(trained, star),
    }


def theory_entries(
    *, tiny: bool = False, show_progress: bool = True, bandits: tuple[Bandit, ...] = BANDITS
) -> tuple[list[dict], dict]:
    """All (prompt, N, β, regime) entries, and the fixed regime's sample sets (for the report)."""
    ns, schedule = (TINY_NS, TINY) if tiny else (NS, FULL)
    torch.manual_seed(SEED)  # nothing should draw from the global generator; this pins it if something does
    entries, fixed_sets = [], {}
    jobs = [(n, beta) for n in ns for beta in BETAS]
    for n, beta in tqdm(jobs, desc="theory", disable=not show_progress, leave=False):
        fresh = train_fresh(bandits, beta, n, schedule, seed=SEED * 1000 + n)
        groups = fixed_groups(bandits, n, seed=SEED * 1000 + 500 + n)  # the same sample set for every β
        fixed_sets[n] = groups
        fixed = train_fixed(bandits, beta, groups, schedule)
        for i, bandit in enumerate(bandits):
            entries.append(_entry(bandit, n, beta, "fresh", fresh[i]))
            entries.append(_entry(bandit, n, beta, "fixed", fixed[i]))
    return entries, {"ns": list(ns), "schedule": schedule, "fixed_sets": fixed_sets, "bandits": bandits}
