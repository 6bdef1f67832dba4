"""Per-trajectory seeded sampling: each row's noise comes from its own generator, so a row never depends on
its batch mates, its batch size or the engine that plays it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, TemperatureLogitsWarper, TopPLogitsWarper


@dataclass(frozen=True)
class Sampling:
    """How each turn is decoded: greedy, or sampled with temperature / top-p from per-trajectory seeds."""

    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0


def trajectory_key(seed: int, prompt_id: str, traj_idx: int) -> int:
    """A 63-bit key naming one trajectory's random stream, independent of batching and order."""
    digest = hashlib.blake2b(f"{seed}\x1f{prompt_id}\x1f{traj_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_generator(key: int) -> torch.Generator:
    """One row's random stream: a CPU generator seeded with `key`."""
    return torch.Generator(device="cpu").manual_seed(key)


# Floats drawn at once per row (1 MiB): a whole toy turn; one token of a Qwen vocabulary.
NOISE_BLOCK_ENTRIES = 1 << 18


class GumbelNoise:
    """One row's Gumbel noise for one turn, from its own generator (`row_generator(key)`).

    The k-th `next()` is the noise of the turn's k-th token. It is drawn in blocks of up to `max_tokens`
    tokens (within NOISE_BLOCK_ENTRIES floats): a CPU generator's `rand((k, vocab))` gives the same values
    as k calls of `rand(vocab)`, so the noise is that of one draw per token, for a fraction of the calls.
    """

    def __init__(self, key: int, max_tokens: int = 1):
        self.generator = row_generator(key)
        self.max_tokens = max(1, max_tokens)
        self.block: torch.Tensor | None = None
        self.used = self.rows = 0

    def next(self, vocab: int) -> torch.Tensor:
        """The next token's noise, [vocab]."""
        if self.used == self.rows:
            self._draw(vocab)
        self.used += 1
        return self.block[self.used - 1]

    def whole_turn(self, vocab: int) -> torch.Tensor | None:
        """All `max_tokens` tokens' noise, [max_tokens, vocab], when one block holds it (else None); call it
        before any `next()`, which it does not advance."""
        if self.max_tokens * vocab > NOISE_BLOCK_ENTRIES:
            return None
        if self.block is None:
            self._draw(vocab)
        return self.block

    def _draw(self, vocab: int) -> None:
        """The next block: as many tokens' noise as fit NOISE_BLOCK_ENTRIES, up to `max_tokens`."""
        self.rows = max(1, min(self.max_tokens, NOISE_BLOCK_ENTRIES // vocab))
        uniform = torch.rand((self.rows, vocab), generator=self.generator)
        tiny = torch.finfo(torch.float32).tiny
        # -log(-log(u)), in place (the same values as out of place, without four temporaries)
        self.block = uniform.clamp_(min=tiny, max=1.0 - 1e-7).log_().neg_().log_().neg_()
        self.used = 0


class PerRowGumbelSampler(LogitsProcessor):
    """Exact sampling per row with its own generator: argmax(warped logits + Gumbel noise).

    HF `generate` draws every row from one global RNG, so a row's sample would depend on its batch mates.
    Here greedy decoding runs over logits to which each row adds noise from a generator seeded by its own
    (trajectory, turn) key; the argmax of logits plus Gumbel noise is an exact draw from the softmax.
    `noises`: the rows' streams, in batch order (the token-level engine passes its own to `add_noise`).
    """

    def __init__(
        self,
        keys: list[int],
        temperature: float,
        top_p: float,
        device: torch.device,
        max_new_tokens: int = 1,
    ):
        self.noises = [GumbelNoise(key, max_new_tokens) for key in keys]
        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.device = device

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.add_noise(scores, self.noises)

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """The scores as float32, after temperature and top-p."""
        scores = scores.float()
        for warp in self.warpers:
            scores = warp(None, scores)
        return scores

    def add_noise(self, scores: torch.Tensor, noises: list[GumbelNoise]) -> torch.Tensor:
        """Warped scores plus each row's next noise from `noises` (one stream per row, in row order)."""
        vocab = scores.shape[-1]
        return self.warp(scores) + torch.stack([noise.next(vocab) for noise in noises]).to(self.device)
