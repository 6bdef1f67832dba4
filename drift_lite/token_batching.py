"""Token-level continuous batching of multi-turn episodes: one decode loop, slots refilled between tokens.

`rollout.run_episodes` refills its batch between turns: each turn is one HF `generate` call that runs until
its longest row ends, and every call pays a fresh start. `generate` cannot take a new row mid-call, so this
module hand-writes the decode loop over a fixed number of slots sharing one KV cache:

- every step, slots that decode feed their last token (one forward over all slots) and get one token each;
  slots that start a turn feed their prompt's new tokens in a second forward over those slots only (their
  rows of the cache gathered), so a long prefill does not pad every decoding row to its length;
- that prefill is deferred: a slot starting a turn waits, idle (no token picked, no random draw), until
  `prefill_every` slots wait (default an eighth of the slots), no slot decodes, or the queue is empty; then
  one prefill serves them all. Each forward of a small model is mostly fixed cost, so one prefill every few
  steps beats one at nearly every step. Idle rows ride along in the decode forward as a pad (dead column);
- when a slot's turn ends (eos or `max_new_tokens`), its episode is stepped at once; a finished episode's slot
  takes the next queued job in the same step, otherwise the slot goes on with its next prompt;
- a slot's cache row already holds its previous prompt and generated tokens (all but the last, never fed):
  only the new prompt's tokens past the longest common prefix are prefilled; columns past that prefix (a
  re-tokenized turn that differs, an old job's tokens) are masked dead. A refilled slot reuses the common
  prefix of its old job too (e.g. the system prompt);
- the cache is one preallocated buffer per layer [slots, kv_heads, capacity, head_dim], written in place (no
  per-step concatenation), with a live mask [slots, capacity]; each forward gets an explicit 4D boolean mask
  and per-row positions (the count of live tokens before each one), so dead columns and padding change
  nothing but float rounding. When a step would overflow the buffer, or a quarter of the slots are empty
  (the queue ran out), each kept row's live columns are gathered, left padded, into a buffer with room for
  the next step plus `slack` free columns.

Per turn, tokens are chosen exactly as `run_episodes` chooses them: argmax, or `PerRowGumbelSampler`'s warped
logits plus Gumbel noise from a generator seeded with the (trajectory, turn) key, one draw per token. So rows
equal `run_episodes`' rows while no two logits tie to float-rounding precision.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer

from drift_lite import chat
from drift_lite.rollout import (
    Job,
    PerRowGumbelSampler,
    Sampling,
    common_prefix,
    eos_ids,
    row_generator,
    turn_key,
)


@dataclass
class Slot:
    """One row of the batch: the job it plays and the tokens its cache row holds."""

    job: Job
    fed: list[int] = field(default_factory=list)  # tokens in the row's live columns, in order
    pending: list[int] = field(default_factory=list)  # tokens to feed at the next step
    generated: list[int] = field(default_factory=list)  # this turn's tokens
    generator: torch.Generator | None = None  # this turn's random stream (sampled decoding)


@dataclass
class SlotCache:
    """The slots' KV buffers (per layer [slots, kv_heads, capacity, head_dim]; none before the first forward),
    the columns in use, and which of them each row attends to (bool [slots, capacity])."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    live: torch.Tensor
    width: int = 0

    @property
    def capacity(self) -> int:
        """Columns per row the buffers hold."""
        return self.live.shape[1]


class BufferLayer(DynamicLayer):
    """A cache layer over preallocated buffers: `update` writes new columns in place (no concatenation)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, width: int):
        super().__init__()
        self.buffers, self.width, self.is_initialized = (keys, values), width, True
        self.keys, self.values = keys[:, :, :width], values[:, :, :width]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new keys and values after the used columns; return all used columns."""
        end = self.width + key_states.shape[-2]
        self.buffers[0][:, :, self.width : end] = key_states
        self.buffers[1][:, :, self.width : end] = value_states
        self.width = end
        self.keys, self.values = self.buffers[0][:, :, :end], self.buffers[1][:, :, :end]
        return self.keys, self.values


def run_episodes_streaming(
    model,
    tokenizer,
    jobs: Iterable[Job],
    sampling: Sampling,
    batch_size: int,
    on_done: Callable[[Job], None],
    on_turn: Callable[[int, int], None] | None = None,
    slack: int = 32,
    prefill_every: int | None = None,
) -> dict:
    """Play episodes to the end in `batch_size` slots, refilled token by token; same rows as `run_episodes`.

    `on_done(job)` is called as each episode ends. `on_turn(turns, tokens)` is called after each decode step
    in which turns ended, with the number of those turns and their generated tokens (the sums over all calls
    are the returned `turns` and `generated_tokens`). Returns `generated_tokens`, `turns` and
    `cached_prompt_tokens` (prompt tokens a slot's cache row already held, so not prefilled). `slack`: free
    columns per row after a compaction (more: fewer compactions, wider attention). `prefill_every`: slots
    starting a turn wait until this many do (or no slot decodes, or the queue is empty), then share one
    prefill; None: `max(1, batch_size // 8)`; 1: prefill at every step any slot starts a turn. Rows do not
    depend on it.
    """
    every = max(1, batch_size // 8) if prefill_every is None else prefill_every
    model.eval()
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sampler = None
    if not sampling.greedy:
        sampler = PerRowGumbelSampler([], sampling.temperature, sampling.top_p, model.device)
    queue = deque(jobs)
    slots: list[Slot | None] = [Slot(queue.popleft()) for _ in range(min(batch_size, len(queue)))]
    cache = SlotCache([], [], torch.zeros(len(slots), 0, dtype=torch.bool, device=model.device))
    cached = sum(_start_turn(slot, i, cache, tokenizer) for i, slot in enumerate(slots))
    tokens = turns = 0
    with torch.inference_mode():
        while any(slot is not None for slot in slots):
            waiting = sum(slot is not None and len(slot.pending) > 1 for slot in slots)
            decoding = sum(slot is not None and len(slot.pending) == 1 for slot in slots)
            prefill = waiting > 0 and (waiting >= every or not decoding or not queue)
            slots, cache = _make_room(slots, cache, slack, prefill)
            fed, logits = _forward(model, cache, slots, pad, prefill)
            picked = _pick(logits[fed], [slots[i] for i in fed], sampler).tolist()
            ended, ended_tokens = 0, 0
            for i, token in zip(fed, picked):
                slot = slots[i]
                slot.generated.append(token)
                if token not in eos and len(slot.generated) < sampling.max_new_tokens:
                    slot.pending = [token]
                    continue
                ended, ended_tokens = ended + 1, ended_tokens + len(slot.generated)
                text = tokenizer.decode(slot.generated, skip_special_tokens=True)
                if slot.job.episode.step(text):
                    on_done(slot.job)
                    if not queue:
                        slots[i] = None  # empty until the next compaction drops its row
                        continue
                    slot.job = queue.popleft()
                cached += _start_turn(slot, i, cache, tokenizer)
            turns, tokens = turns + ended, tokens + ended_tokens
            if on_turn is not None and ended:
                on_turn(ended, ended_tokens)
    return {"generated_tokens": tokens, "turns": turns, "cached_prompt_tokens": cached}


def _start_turn(slot: Slot, row: int, cache: SlotCache, tokenizer) -> int:
    """Set up a slot's next turn: reuse its row's common prefix, mask the rest dead; returns tokens reused."""
    prompt = chat.render_prompt(tokenizer, slot.job.episode.messages)
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    n = min(common_prefix(slot.fed, ids), len(ids) - 1)
    if n < len(slot.fed):
        live_cols = cache.live[row].nonzero().squeeze(1)
        cache.live[row, live_cols[n:]] = False
    slot.fed, slot.pending, slot.generated = slot.fed[:n], ids[n:], []
    slot.generator = row_generator(turn_key(slot.job))
    return n


def _make_room(
    slots: list[Slot | None], cache: SlotCache, slack: int, prefill: bool
) -> tuple[list[Slot | None], SlotCache]:
    """Compact the cache when the next step (with its prefill or not) would overflow it or a quarter of the
    slots are empty."""
    pending = [len(s.pending) for s in slots if s is not None]
    longest = max((n for n in pending if n > 1), default=0) if prefill else 0
    needed = (1 if 1 in pending else 0) + longest
    empty = sum(slot is None for slot in slots)
    if cache.width + needed <= cache.capacity and 4 * empty < len(slots):
        return slots, cache
    keep = [i for i, slot in enumerate(slots) if slot is not None]
    return [slots[i] for i in keep], _compact(cache, keep, needed + slack)


def _compact(cache: SlotCache, keep: list[int], free: int) -> SlotCache:
    """Rows `keep`, each with only its live columns (in order, right aligned), and `free` columns after."""
    live = cache.live[keep, : cache.width]
    width = int(live.sum(1).max()) if keep else 0
    cols = torch.arange(live.shape[1], device=live.device).expand_as(live)
    order = torch.where(live, cols, -1).sort(1).values[:, live.shape[1] - width :]  # dead (-1) first
    new_live = torch.zeros(len(keep), width + free, dtype=torch.bool, device=live.device)
    new_live[:, :width] = order >= 0
    rows = torch.tensor(keep, dtype=torch.long, device=live.device)
    buffers = []
    for old in cache.keys + cache.values:
        new = old.new_zeros(len(keep), old.shape[1], width + free, old.shape[3])
        at = order.clamp(min=0)[:, None, :, None].expand(-1, old.shape[1], -1, old.shape[3])
        new[:, :, :width] = old[rows].gather(2, at)
        buffers.append(new)
    half = len(buffers) // 2
    return SlotCache(buffers[:half], buffers[half:], new_live, width)


def _forward(
    model, cache: SlotCache, slots: list[Slot | None], pad: int, prefill: bool
) -> tuple[list[int], torch.Tensor]:
    """Feed the decoding slots' tokens and, if `prefill`, the waiting slots' prompts; returns the rows fed
    and the logits after each row's last token [slots, vocab] (rows not fed: arbitrary)."""
    decode = [i for i, s in enumerate(slots) if s is not None and len(s.pending) == 1]
    starting = [i for i, s in enumerate(slots) if s is not None and len(s.pending) > 1] if prefill else []
    logits = None
    if decode:
        logits = _decode(model, cache, slots, decode, pad)
    if starting:
        rows = torch.tensor(starting, device=model.device)
        out = _prefill(model, cache, [slots[i] for i in starting], rows, pad)
        if logits is None:
            logits = out.new_zeros(len(slots), out.shape[-1])
        logits[rows] = out
    fed = sorted(decode + starting)
    for i in fed:
        slots[i].fed += slots[i].pending
        slots[i].pending = []
    return fed, logits


def _decode(model, cache: SlotCache, slots: list[Slot | None], decode: list[int], pad: int) -> torch.Tensor:
    """One token for every row (a pad, its column left dead, for rows not in `decode`: empty or waiting to
    prefill); returns logits."""
    device, width = model.device, cache.width
    ids = torch.full((len(slots), 1), pad, dtype=torch.long)
    ids[decode, 0] = torch.tensor([slots[i].pending[0] for i in decode])
    positions = torch.tensor([[len(s.fed) if s is not None else 0] for s in slots])
    cache.live[:, width] = True  # every query sees itself (a dead one too: no fully masked row)
    out = model(
        input_ids=ids.to(device),
        position_ids=positions.to(device),
        attention_mask=cache.live[:, None, None, : width + 1],
        cache=Cache(layers=[BufferLayer(k, v, width) for k, v in zip(cache.keys, cache.values)]),
        use_cache=True,
        logits_to_keep=1,
    )
    cache.live[:, width] = False
    cache.live[decode, width] = True
    cache.width += 1
    return out.logits[:, -1].float()


def _prefill(model, cache: SlotCache, slots: list[Slot], rows: torch.Tensor, pad: int) -> torch.Tensor:
    """Feed the pending prompts of `slots` (cache rows `rows`), left padded, in one forward; returns logits.

    Runs over those rows only (a copy of their cache rows); the other rows get as many dead columns.
    Padding queries attend to themselves (no fully masked row).
    """
    device, width = model.device, cache.width
    length = max(len(s.pending) for s in slots)
    ids = torch.full((len(slots), length), pad, dtype=torch.long)
    positions = torch.zeros(len(slots), length, dtype=torch.long)
    new = torch.zeros(len(slots), length, dtype=torch.bool)
    for j, slot in enumerate(slots):
        m, start = len(slot.pending), len(slot.fed)
        ids[j, length - m :] = torch.tensor(slot.pending)
        positions[j, length - m :] = torch.arange(start, start + m)
        new[j, length - m :] = True
    new = new.to(device)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    own = new[:, None, :] & causal | torch.eye(length, dtype=torch.bool, device=device)
    old = cache.live[rows, :width][:, None, :].expand(-1, length, -1)
    kv = [(k[rows, :, :width], v[rows, :, :width]) for k, v in zip(cache.keys, cache.values)]
    out = model(
        input_ids=ids.to(device),
        position_ids=positions.to(device),
        attention_mask=torch.cat([old, own], 2)[:, None],
        cache=DynamicCache(kv, config=model.config) if width else DynamicCache(config=model.config),
        use_cache=True,
        logits_to_keep=1,
    )
    for i, layer in enumerate(out.cache.layers):
        for buffers, fresh in ((cache.keys, layer.keys), (cache.values, layer.values)):
            if len(buffers) == i:  # the first forward: allocate the buffers
                shape = (cache.live.shape[0], fresh.shape[1], cache.capacity, fresh.shape[3])
                buffers.append(fresh.new_zeros(shape))
            buffers[i][rows, :, width : width + length] = fresh[:, :, width:]
    cache.live[rows, width : width + length] = new
    cache.width += length
    return out.logits[:, -1].float()


def _pick(logits: torch.Tensor, slots: list[Slot], sampler: PerRowGumbelSampler | None) -> torch.Tensor:
    """Each slot's next token: argmax, or argmax of warped logits plus Gumbel noise from its own generator."""
    if sampler is not None:
        sampler.generators = [slot.generator for slot in slots]  # the batch's rows, in slot order
        logits = sampler(None, logits)
    return logits.argmax(-1)
