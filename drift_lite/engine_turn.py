"""The default engine: one HF `generate` call per turn over a batch of episodes, refilled between turns, with
an opt-in `PrefixCache` of prompt KV (`rollout.prefix_cache`)."""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from typing import NamedTuple

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessorList

from drift_lite import chat
from drift_lite.jobs import Job, common_prefix, eos_ids, supports_prefix_cache, turn_key
from drift_lite.sampling import PerRowGumbelSampler, Sampling


class Prefix(NamedTuple):
    """Prompt tokens and their KV cache: [layers, 2 (keys, values), kv_heads, tokens, head_dim]."""

    ids: list[int]
    kv: torch.Tensor


class PrefixCache:
    """KV caches of prompt prefixes, reused instead of recomputed: each row's last prompt and shared heads.

    A turn's prompt extends the previous one's (the conversation only grows), and the first-turn prompts of a
    task family share a head (system prompt, worked examples, instruction). Each row starts from the longest
    cached prefix of its tokens and only the rest is prefilled. Only identical tokens are reused, so a row's
    logits equal a full recompute up to float rounding (the same size as left padding already causes).
    Memory: the active rows' prompt KV, about as much again as `generate`'s own cache of the batch.
    """

    def __init__(self, max_heads: int = 32):
        self.heads: dict[str, Prefix] = {}  # head text -> its KV, computed once (batch 1)
        self.last: dict[Hashable, Prefix] = {}  # row -> KV of its latest prompt
        self.max_heads = max_heads
        self.reused_tokens = 0

    def forget(self, row: Hashable) -> None:
        """Drop a row's cached prompt (its episode ended)."""
        self.last.pop(row, None)

    def match(
        self, model, tokenizer, ids: list[int], row: Hashable, head: str | None
    ) -> tuple[int, Prefix | None]:
        """The longest reusable prefix of `ids` (all but one token at most): the row's last prompt or head."""
        best_n, best = 0, None
        for prefix in (self.last.get(row), self._head(model, tokenizer, head)):
            n = min(common_prefix(prefix.ids, ids), len(ids) - 1) if prefix is not None else 0
            if n > best_n:
                best_n, best = n, prefix
        self.reused_tokens += best_n
        return best_n, best

    def _head(self, model, tokenizer, text: str | None) -> Prefix | None:
        if not text:
            return None
        if text not in self.heads:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            cache = DynamicCache(config=model.config)
            with torch.inference_mode():
                model(input_ids=torch.tensor([ids], device=model.device), cache=cache)
            if len(self.heads) >= self.max_heads:
                del self.heads[next(iter(self.heads))]  # the oldest
            self.heads[text] = Prefix(ids, _stack(cache, len(ids))[:, :, 0])
        return self.heads[text]


def generate_turn(
    model,
    tokenizer,
    prompts: list[str],
    keys: list[int],
    sampling: Sampling,
    cache: PrefixCache | None = None,
    rows: list[Hashable] | None = None,
    heads: list[str | None] | None = None,
) -> tuple[list[str], list[int]]:
    """Generate one turn for a batch of rendered prompts; returns texts and token counts.

    Without `cache`: left padded. With it, row i reuses the longest cached prefix of its tokens (the last
    prompt of `rows[i]`, or the shared head text `heads[i]`): inputs are [padding][cached][padding][rest],
    positions follow the attention mask (HF counts them from its cumsum), and each row's prompt KV is kept
    for its next turn.
    """
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    if cache is None:
        batch = tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        inputs = {k: v.to(model.device) for k, v in batch.items()}
    else:
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        rows = rows if rows is not None else [None] * len(ids)
        heads = heads if heads is not None else [None] * len(ids)
        reuse = [cache.match(model, tokenizer, x, r, h) for x, r, h in zip(ids, rows, heads)]
        inputs = _cached_inputs(model, ids, reuse, pad)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        return_dict_in_generate=True,
    )
    processors = LogitsProcessorList()
    if not sampling.greedy:
        processors.append(
            PerRowGumbelSampler(
                keys, sampling.temperature, sampling.top_p, model.device, sampling.max_new_tokens
            )
        )
    with torch.inference_mode(), plain_generation_config(model):
        out = model.generate(**inputs, generation_config=config, logits_processor=processors)
    width = inputs["input_ids"].shape[1]
    if cache is not None:
        kv = _stack(out.cache, width)
        for i, (x, row) in enumerate(zip(ids, rows)):
            if row is not None:
                at = inputs["attention_mask"][i].nonzero().squeeze(1)
                cache.last[row] = Prefix(x, kv[:, :, i].index_select(3, at))
    texts, counts = [], []
    for ids in out.sequences[:, width:].tolist():
        n = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        counts.append(n)
        texts.append(tokenizer.decode(ids[:n], skip_special_tokens=True))
    return texts, counts


@contextlib.contextmanager
def plain_generation_config(model):
    """Hide the checkpoint's own `generation_config` while `generate` runs: `generate` fills every setting we
    leave unset from it, and a repetition penalty, n-gram ban or minimum length set there would change the
    tokens (in greedy decoding too) unlike the recipe and the token-level engine, which apply none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's model
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def _cached_inputs(model, ids: list[list[int]], reuse: list[tuple[int, Prefix | None]], pad: int) -> dict:
    """`generate` inputs: [pad][cached prefix][pad][rest] per row, and the cached prefixes as one cache."""
    width_c = max(n for n, _ in reuse)
    width_s = max(len(x) - n for x, (n, _) in zip(ids, reuse))
    input_ids = torch.full((len(ids), width_c + width_s), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, (x, (n, _)) in enumerate(zip(ids, reuse)):
        input_ids[i, width_c - n : width_c] = torch.tensor(x[:n], dtype=torch.long)
        input_ids[i, width_c + width_s - (len(x) - n) :] = torch.tensor(x[n:], dtype=torch.long)
        mask[i, width_c - n : width_c] = 1
        mask[i, width_c + width_s - (len(x) - n) :] = 1
    inputs = {"input_ids": input_ids.to(model.device), "attention_mask": mask.to(model.device)}
    if width_c:
        kv0 = next(p.kv for n, p in reuse if n)
        kv = kv0.new_zeros(*kv0.shape[:2], len(ids), kv0.shape[2], width_c, kv0.shape[4])
        for i, (n, prefix) in enumerate(reuse):
            if n:
                kv[:, :, i, :, width_c - n :] = prefix.kv[:, :, :, :n]
        inputs["cache"] = DynamicCache([(layer[0], layer[1]) for layer in kv], config=model.config)
    return inputs


def _stack(cache: DynamicCache, width: int) -> torch.Tensor:
    """The first `width` positions of a cache as one tensor [layers, 2, batch, kv_heads, width, head_dim]."""
    return torch.stack(
        [torch.stack((layer.keys[:, :, :width], layer.values[:, :, :width])) for layer in cache.layers]
    )


def run_episodes(
    model,
    tokenizer,
    jobs: Iterable[Job],
    sampling: Sampling,
    batch_size: int,
    on_done: Callable[[Job], None],
    on_turn: Callable[[int, int], None] | None = None,
    prefix_cache: bool = False,
) -> dict:
    """Play episodes to the end, `batch_size` at a time; a finished episode's slot is refilled at once.

    Every active episode generates its next turn in one batched `generate`; the ones that finish leave and
    queued ones take their places (continuous batching at the episode level). `on_done(job)` is called as each
    episode ends; `on_turn(episodes, tokens)` after each batched turn. With `prefix_cache`, prompt prefixes
    already computed (an episode's previous prompt, its family's head) are reused instead of prefilled again
    (a model whose cache keeps a sliding window plays without: `engine["fallback"]` says so).
    Returns `generated_tokens`, `turns`, `cached_prompt_tokens` and `engine` (what ran: `{"engine": "turn",
    "prefix_cache": bool, "decoder_chain": False, "fallback": reason or None}`).
    """
    model.eval()
    fallback = None
    if prefix_cache and not supports_prefix_cache(model):
        fallback = "prefix cache off: a layer's cache keeps a sliding window"
    cache = PrefixCache() if prefix_cache and fallback is None else None
    queue = deque(jobs)
    active: list[Job] = []
    tokens = turns = 0
    while queue or active:
        while queue and len(active) < batch_size:
            active.append(queue.popleft())
        prompts = [chat.render_prompt(tokenizer, job.episode.messages) for job in active]
        keys = [turn_key(job) for job in active]
        rows = [id(job) for job in active]
        heads = [_head(p, job) for p, job in zip(prompts, active)]
        texts, counts = generate_turn(model, tokenizer, prompts, keys, sampling, cache, rows, heads)
        still = []
        for job, text in zip(active, texts):
            if job.episode.step(text):
                on_done(job)
                if cache is not None:
                    cache.forget(id(job))
            else:
                still.append(job)
        tokens += sum(counts)
        turns += len(active)
        if on_turn is not None:
            on_turn(len(active), sum(counts))
        active = still
    return {
        "generated_tokens": tokens,
        "turns": turns,
        "cached_prompt_tokens": cache.reused_tokens if cache is not None else 0,
        "engine": {
            "engine": "turn",
            "prefix_cache": cache is not None,
            "decoder_chain": False,
            "fallback": fallback,
        },
    }


def _head(prompt: str, job: Job) -> str | None:
    """A first turn's head, the prompt before the problem (system, examples, instruction): the same for
    a family's problems. Any prefix would be exact (only identical tokens are reused); this one is shared."""
    question = job.episode.problem.question
    at = prompt.rfind(question) if job.episode.turn == 0 and question else -1
    return prompt[:at] if at > 0 else None
