"""Token-level continuous batching of multi-turn episodes: one decode loop, slots refilled between tokens.

`rollout.run_episodes` refills its batch between turns: each turn is one HF `generate` call that runs until
its longest row ends, and every call pays a fresh start. `generate` cannot take a new row mid-call, so this
module hand-writes the decode loop over a fixed number of slots, each with its own row of one KV cache:

- a row's cache is always compact: its first `len(slot.fed)` columns hold the tokens it has fed, in order,
  and nothing else counts. Each row grows on its own: a decoding slot writes its token's keys at its own
  end, a slot starting a turn writes its prompt's new tokens after its own end. No row pads another, so a
  forward attends over the longest conversation in the batch, not over a shared, growing width;
- every step is one forward of one packed sequence: the decoding slots' tokens (one each; an idle slot
  feeds nothing), then the prompts of the slots starting a turn, each written after its own row's end. The
  model's projections and MLP run over exactly those tokens; attention is `packed_sdpa` (registered with
  transformers' `AttentionInterface`, the model switched to it while the loop runs; a model whose attention
  is not pluggable is declined, and `rollout.play_episodes` plays it with `run_episodes`): the decoding
  tokens attend in up to four groups of neighbouring rows, each over its own longest decoding row rather
  than the batch's (rows are re-ordered by length, in place, when the attention saved pays for the copy),
  the prompts causally over their own rows (long first prompts over short rows apart from short later
  turns over long rows, when that saves more than a call costs);
- the forward chains the decoder's own parts (embeddings, rotary embeddings, decoder layers, norm, head)
  without the model's top-level wrappers, once its first step gave `model(...)`'s logits bit for bit
  (`ModelForward`; otherwise every step calls `model(...)`);
- prompts wait: a slot starting a turn idles (no token picked, no random draw) until `prefill_every` slots
  wait (default an eighth of the slots), no slot decodes, or the queue is empty, and they go in one step
  together (each step with prompts costs more than its tokens: the prompt attention, its indices). A first
  prompt several slots share is prefilled once and its KV and logits copied to the others, and kept a while
  for the problem's later trajectories;
- prompts are tokenized from the previous prompt's last special token on (`prompt_tokens`: the same ids);
- when a slot's turn ends (eos or `max_new_tokens`), its episode is stepped at once; a finished episode's slot
  takes the next queued job in the same step, otherwise the slot goes on with its next prompt. A new prompt
  keeps the longest common prefix of the row's tokens (the whole previous prompt and turn, or for a new job
  the system prompt) and cuts the row there: only the rest is prefilled;
- the buffers are preallocated per layer [slots, kv_heads, capacity, head_dim] and written in place (no
  per-step concatenation). Masks and positions are per row and per token, so a row's logits equal a lone
  recompute up to float rounding. When a step would overflow the buffers (then with room for it plus
  `slack` columns), or a quarter of the slots are empty (the queue ran out), they are copied into new ones
  holding only the occupied rows.

Per turn, tokens are chosen exactly as `run_episodes` chooses them: argmax, or `PerRowGumbelSampler`'s warped
logits plus the (trajectory, turn) stream's Gumbel noise, one draw per token. So rows equal `run_episodes`'
rows while no two logits tie to float-rounding precision.
"""

from __future__ import annotations

from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import NamedTuple

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from drift_lite import chat
from drift_lite.prompt_tokens import PromptTokenizer
from drift_lite.rollout import (
    GumbelNoise,
    Job,
    PerRowGumbelSampler,
    Sampling,
    common_prefix,
    eos_ids,
    supports_prefix_cache,
    turn_key,
)


@dataclass
class Slot:
    """One row of the batch: the job it plays and the tokens its cache row holds."""

    job: Job
    fed: list[int] = field(default_factory=list)  # tokens in the row's first len(fed) columns, in order
    pending: list[int] = field(default_factory=list)  # tokens to feed at the next step
    generated: list[int] = field(default_factory=list)  # this turn's tokens
    noise: GumbelNoise | None = None  # this turn's random stream (sampled decoding)
    prompt: str | None = None  # this turn's rendered prompt, until it is tokenized
    opening: Opening | None = None  # a first prompt computed before, to copy into the row
    previous: tuple[str, list[int]] | None = None  # the episode's latest prompt and its ids

    @property
    def first_prompt(self) -> str | None:
        """This turn's prompt text when it is the episode's first (an opening to make or share), else None."""
        return self.previous[0] if self.previous is not None and self.job.episode.turn == 0 else None


class Opening(NamedTuple):
    """A first-turn prompt as prefilled once: its tokens, its KV per layer ([kv_heads, tokens, head_dim] keys
    and values) and the logits after it. A problem's N trajectories share their first prompt, so the others
    copy this instead of prefilling it again."""

    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor


@dataclass
class SlotCache:
    """The slots' KV buffers, per layer [slots, kv_heads, capacity, head_dim]; allocated by the first forward
    (a layer's shapes are known only then). `noise`: when sampling and a whole turn's Gumbel noise is one
    block (`GumbelNoise.whole_turn`, at most 1 MiB a row), each slot's turn noise [slots, max_new_tokens,
    vocab], so a step reads every row's noise in one gather rather than a call per row."""

    rows: int
    capacity: int
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    noise: torch.Tensor | None = None
    spares: dict[tuple, torch.Tensor] = field(default_factory=dict)  # (shape, dtype, device): `_permute`


class RowLayer(DynamicLayer):
    """One layer's view of the slot buffers for one forward: `update` writes each fed token's keys and values
    at its row and column (`rows`, `cols`: [tokens]) and returns the whole buffers (`packed_sdpa` reads
    them)."""

    def __init__(self, cache: SlotCache, index: int, rows: torch.Tensor, cols: torch.Tensor):
        super().__init__()
        self.cache, self.index, self.rows, self.cols = cache, index, rows, cols
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new tokens in place ([1, kv_heads, tokens, head_dim] in); return the layer's buffers."""
        if len(self.cache.keys) == self.index:  # the first forward: allocate this layer's buffers
            for buffers, fresh in ((self.cache.keys, key_states), (self.cache.values, value_states)):
                shape = (self.cache.rows, fresh.shape[1], self.cache.capacity, fresh.shape[3])
                buffers.append(fresh.new_zeros(shape))
        for buffers, fresh in ((self.cache.keys, key_states), (self.cache.values, value_states)):
            buffers[self.index][self.rows, :, self.cols] = fresh[0].transpose(0, 1)
        self.keys, self.values = self.cache.keys[self.index], self.cache.values[self.index]
        return self.keys, self.values


class Prompts(NamedTuple):
    """Prompts prefilled together in one step, as `packed_sdpa` attends them: P rows, the longest L tokens."""

    rows: torch.Tensor  # [P] their cache rows
    index: torch.Tensor  # [P, L] each row's prompt tokens in the step's sequence (padded with its last one)
    real: torch.Tensor  # [P, L] True for a real token, False for padding
    mask: torch.Tensor  # [P, 1, repeat x L, width] causal over the row's columns, once per query head of a kv
    # head (`packed_sdpa` stacks a kv head's query heads along the query axis)


class Packed(NamedTuple):
    """One step's tokens, as `packed_sdpa` reads them: one sequence whose first tokens are the decoding
    slots' (one each, in row order), then the prompts prefilled, group after group, row after row."""

    slots: int
    decode: torch.Tensor | None  # [decoding] their rows; None when every row decodes (then in row order)
    decode_mask: torch.Tensor  # [slots, 1, 1, width]: a decoding slot's token attends to its first len(fed)+1
    groups: list[tuple[int, int, int]]  # runs of slots `(first, end, width)` attending together
    prompts: list[Prompts]  # the prompts, in groups of similar shapes (long first prompts, short later ones)


class ModelForward:
    """A step's forward: logits at the kept tokens ([1, kept, vocab]) of a packed sequence.

    It runs the decoder's parts itself (embeddings, rotary embeddings, transformers' own decoder layers, the
    final norm and `lm_head` on the kept tokens), as the model's top-level forward chains them, once a first
    step has given the same logits bit for bit as `model(...)`; else (a model that adds anything there, e.g.
    scaled embeddings or capped logits, or lacks those parts) `model(...)` itself. Why: the top-level
    forward's wrappers (output capture, argument plumbing, a causal mask `packed_sdpa` never reads) do work at
    every step that the chained parts skip. Also holds what every step reads of the model: its device and
    how many query heads share a kv head (`repeat`).
    """

    PARTS = ("embed_tokens", "rotary_emb", "layers", "norm")

    def __init__(self, model):
        self.model = model
        decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
        known = decoder is not None and all(hasattr(decoder, part) for part in self.PARTS)
        self.head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.decoder = decoder if known and self.head is not None else None
        self.direct: bool | None = None if self.decoder is not None else False  # None: not checked yet
        config = model.config
        self.device = model.device
        self.repeat = config.num_attention_heads // (
            getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        )

    def __call__(self, ids, positions, cache: Cache, keep: torch.Tensor, packed: Packed) -> torch.Tensor:
        """Logits after the tokens `keep` of the sequence `ids` at `positions` (both [1, tokens])."""
        if self.direct:
            return self._decoder(ids, positions, cache, keep, packed)
        if self.direct is None:  # both write the same keys and values; the model's own run comes last
            try:
                mine = self._decoder(ids, positions, cache, keep, packed)
            except Exception:  # parts that do not chain as assumed: the model's own forward from now on
                mine = None
        theirs = self.model(
            input_ids=ids,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=keep,
            packed=packed,
        ).logits
        if self.direct is None:
            self.direct = mine is not None and torch.equal(mine, theirs)
        return theirs

    def _decoder(self, ids, positions, cache: Cache, keep: torch.Tensor, packed: Packed) -> torch.Tensor:
        """The decoder's parts chained as the model's top-level forward chains them, on the kept tokens."""
        decoder = self.decoder
        hidden = decoder.embed_tokens(ids)
        rotary = decoder.rotary_emb(hidden, positions)
        for layer in decoder.layers[: self.model.config.num_hidden_layers]:
            hidden = layer(
                hidden,
                attention_mask=None,
                position_embeddings=rotary,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                packed=packed,
            )
        return self.head(decoder.norm(hidden)[:, keep])


PACKED_SDPA = "drift_lite_packed_sdpa"
SORT_EVERY = 32  # decode steps between two checks whether re-ordering the rows by length pays
SORT_HORIZON = 32  # steps an order is expected to stay useful: re-order when the attention it saves over
# them outweighs the copy (both in row x column units of KV traffic)
GROUP_COST = 1024  # one more attention call, in row x column units of attention (an estimate: toy, 2 cores)


def packed_sdpa(module, query, key, value, attention_mask, packed: Packed | None = None, **kwargs):
    """PyTorch SDPA over one step of the token engine (`packed`): the decoding slots' tokens attend per group
    of rows `(first, end, width)`, each over its own first `width` columns of the slot buffers (`key`,
    `value`: [slots, kv_heads, capacity, head_dim]); the prompts prefilled attend causally over their rows.

    One sequence carries every token of the step, so the model's projections and MLP run once over exactly
    those tokens (no padding), however many slots decode and prefill. Without `packed` (`generate`,
    training) it is plain SDPA. Registered with transformers' `AttentionInterface`; the engine switches the
    model to it while it runs.
    """
    if packed is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    scale = kwargs.get("scaling")
    tokens = query[0].transpose(0, 1)  # [tokens, heads, head_dim]
    n, kv_heads, dim = packed.slots, key.shape[1], query.shape[-1]
    out = []
    if packed.groups:
        decoding = n if packed.decode is None else len(packed.decode)
        queries = tokens[:decoding]
        if packed.decode is not None:  # a query per row; the rows not decoding attend for nothing
            queries = queries.new_zeros(n, *queries.shape[1:]).index_copy_(0, packed.decode, queries)
        # one query per slot: its heads grouped by the kv head they share (head h reads kv head h // repeat)
        queries = queries.reshape(n, kv_heads, -1, dim)
        parts = [
            sdpa(
                queries[a:b],
                key[a:b, :, :w],
                value[a:b, :, :w],
                attn_mask=packed.decode_mask[a:b, ..., :w],
                scale=scale,
            )
            for a, b, w in packed.groups
        ]
        attended = torch.cat(parts).reshape(n, -1, dim)
        out.append(attended if packed.decode is None else attended[packed.decode])
    repeat = query.shape[1] // kv_heads
    for group in packed.prompts:
        (p, length), width = group.index.shape, group.mask.shape[-1]
        # [P, kv_heads, repeat x L, head_dim]: a kv head's query heads one after the other, each over the
        # prompt's tokens (the mask repeats accordingly), against the row's keys without copying them per head
        prompts = tokens[group.index].permute(0, 2, 1, 3).reshape(p, kv_heads, repeat * length, dim)
        keys, values = key[group.rows, :, :width], value[group.rows, :, :width]
        attended = sdpa(prompts, keys, values, attn_mask=group.mask, scale=scale).reshape(p, -1, length, dim)
        out.append(attended.transpose(1, 2)[group.real])
    return torch.cat(out)[None], None


AttentionInterface.register(PACKED_SDPA, packed_sdpa)


def run_episodes_streaming(
    model,
    tokenizer,
    jobs: Iterable[Job],
    sampling: Sampling,
    batch_size: int,
    on_done: Callable[[Job], None],
    on_turn: Callable[[int, int], None] | None = None,
    slack: int = 64,
    prefill_every: int | None = None,
) -> dict | None:
    """Play episodes to the end in `batch_size` slots, refilled token by token; same rows as `run_episodes`.
    Returns None, taking no job, for a model it cannot play (a layer's cache keeps a window only, or
    transformers cannot switch its attention to `packed_sdpa`); `rollout.play_episodes` then uses the turn
    engine.

    `on_done(job)` is called as each episode ends. `on_turn(turns, tokens)` is called after each decode step
    in which turns ended, with the number of those turns and their generated tokens (the sums over all calls
    are the returned `turns` and `generated_tokens`). Returns `generated_tokens`, `turns` and
    `cached_prompt_tokens` (prompt tokens not prefilled: held by the row, or copied from the same first
    prompt). `slack`: free columns per row after a reallocation for room (more: fewer copies, more memory).
    `prefill_every`: slots starting a turn wait until this many do (or no slot decodes, or the queue is
    empty), then share one prefill; None: `max(1, batch_size // 8)`; 1: prefill at every step any slot starts
    a turn. Rows do not depend on it.
    """
    every = max(1, batch_size // 8) if prefill_every is None else prefill_every
    model.eval()
    if not supports_prefix_cache(model):  # a layer keeps a window only: rows cannot keep their whole context
        return None
    original = model.config._attn_implementation
    model.set_attn_implementation(PACKED_SDPA)
    if model.config._attn_implementation != PACKED_SDPA:  # the model's attention is not pluggable
        return None
    eos = eos_ids(model, tokenizer)
    forward = ModelForward(model)
    sampler = None
    if not sampling.greedy:  # its warpers and noise; each row's noise stream is its slot's
        sampler = PerRowGumbelSampler([], sampling.temperature, sampling.top_p, model.device)
    queue = deque(jobs)
    slots: list[Slot | None] = [Slot(queue.popleft()) for _ in range(min(batch_size, len(queue)))]
    cache = SlotCache(len(slots), 0)
    rendered: dict[tuple, str] = {}  # messages -> prompt text (the latest RENDERED)
    for slot in slots:
        _render(slot, tokenizer, sampling, rendered)
    prompts = PromptTokenizer(tokenizer)
    openings: dict[str, Opening] = {}  # first prompt text -> its KV and logits (the latest few)
    cached = _tokenize(slots, prompts, openings)
    tokens = turns = steps = 0
    try:
        with torch.inference_mode():
            while any(slot is not None for slot in slots):
                waiting = decoding = 0
                for slot in slots:
                    if slot is not None and len(slot.pending) == 1:
                        decoding += 1
                    elif slot is not None and slot.pending:
                        waiting += 1
                prefill = waiting > 0 and (waiting >= every or not decoding or not queue)
                slots, cache = _make_room(slots, cache, slack, prefill, steps % SORT_EVERY == 0)
                fed, logits, copied = _forward(forward, cache, slots, prefill, openings)
                cached += copied
                steps += 1
                picked = _pick(logits, fed, slots, sampler, cache).tolist()
                ended, ended_tokens, starting = 0, 0, []
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
                            slots[i] = None  # empty until the next reallocation drops its row
                            continue
                        slot.job, slot.previous = queue.popleft(), None
                    _render(slot, tokenizer, sampling, rendered)
                    starting.append(slot)
                cached += _tokenize(starting, prompts, openings)
                turns, tokens = turns + ended, tokens + ended_tokens
                if on_turn is not None and ended:
                    on_turn(ended, ended_tokens)
    finally:
        model.set_attn_implementation(original)
    return {"generated_tokens": tokens, "turns": turns, "cached_prompt_tokens": cached}


# Rendered prompts remembered: a problem's trajectories often hold the same conversation (the same first
# prompt; often the same answers), and rendering a chat template costs more than looking it up.
RENDERED = 1024


def _render(slot: Slot, tokenizer, sampling: Sampling, rendered: dict[tuple, str]) -> None:
    """Start a slot's next turn: render its prompt (tokenized with the others that start in this step); the
    same messages give the same text, so `rendered` (the latest RENDERED) is looked up first."""
    messages = slot.job.episode.messages
    key = tuple(tuple(message.items()) for message in messages)
    slot.prompt = rendered.get(key)
    if slot.prompt is None:
        slot.prompt = _remember(rendered, key, chat.render_prompt(tokenizer, messages), RENDERED)
    slot.generated = []
    if not sampling.greedy:
        slot.noise = GumbelNoise(turn_key(slot.job), sampling.max_new_tokens)


def _remember(memo: dict, key, value, limit: int):
    """Put `value` in `memo` as its newest entry, dropping the oldest beyond `limit`; returns `value`."""
    memo.pop(key, None)
    memo[key] = value
    if len(memo) > limit:
        del memo[next(iter(memo))]
    return value


def _tokenize(slots: list[Slot | None], prompts: PromptTokenizer, openings: dict[str, Opening]) -> int:
    """Tokenize the rendered prompts (`PromptTokenizer`); cut each row at its longest common prefix with its
    prompt (at least one token is fed) and queue the rest, or, for a first prompt in `openings`, queue its
    copy. Returns the prompt tokens not to prefill."""
    slots = [s for s in slots if s is not None and s.prompt is not None]
    encoded = prompts.encode([s.prompt for s in slots], [s.previous for s in slots])
    reused = 0
    for slot, ids in zip(slots, encoded):
        first = slot.job.episode.turn == 0
        slot.previous = (slot.prompt, ids)
        if first and slot.prompt in openings:
            slot.opening, slot.pending, slot.prompt = openings[slot.prompt], [], None
            reused += len(ids)
            continue
        n = min(common_prefix(slot.fed, ids), len(ids) - 1)
        slot.fed, slot.pending, slot.prompt = slot.fed[:n], ids[n:], None
        reused += n
    return reused


def _make_room(
    slots: list[Slot | None], cache: SlotCache, slack: int, prefill: bool, sort: bool = False
) -> tuple[list[Slot | None], SlotCache]:
    """Reallocate the buffers when the next step (with its prefill or not) would overflow them (then with
    room for it plus `slack` columns) or a quarter of the slots are empty (those rows are dropped); if `sort`
    and ordering the rows longest first saves more attention over SORT_HORIZON steps than the copy costs,
    re-order them (in place, or in the new buffers): neighbours then attend over similar widths (see
    `packed_sdpa`)."""
    ends, lengths = [], []  # the columns each row needs for the next step; each row's own (-1: empty)
    for slot in slots:
        if slot is None:
            ends.append(1)
            lengths.append(-1)
            continue
        n = len(slot.fed)
        lengths.append(n)
        if slot.opening is not None:
            ends.append(len(slot.opening.ids) + 1)
        else:
            ends.append(n + (len(slot.pending) if prefill and len(slot.pending) > 1 else 1))
    empty = lengths.count(-1)
    if sort:
        ranked = sorted(lengths, reverse=True)
        saved = _groups_cost(_row_groups(lengths)) - _groups_cost(_row_groups(ranked))
        # the copy's cost, an estimate (toy, 2 cores): every row's whole capacity moves, each column at half
        # an attention read
        sort = saved * SORT_HORIZON > len(slots) * cache.capacity // 2
    overflow = max(ends) > cache.capacity
    if not overflow and 4 * empty < len(slots) and not sort:
        return slots, cache
    keep = [i for i, slot in enumerate(slots) if slot is not None]
    if sort:
        keep.sort(key=lambda i: -lengths[i])
    kept = [slots[i] for i in keep]
    if not overflow and len(keep) == len(slots):  # only re-ordered: the same shapes, rows moved in place
        _permute(cache, keep)
        return kept, cache
    capacity = max([ends[i] for i in keep], default=1) + slack if overflow else cache.capacity
    used = max([lengths[i] for i in keep], default=0)
    return kept, _reallocate(cache, keep, capacity, used)


def _reallocate(cache: SlotCache, keep: list[int], capacity: int, used: int) -> SlotCache:
    """New buffers with rows `keep` of the old ones (their first `used` columns) and `capacity` columns."""
    new = SlotCache(len(keep), capacity)
    if cache.noise is not None:
        new.noise = cache.noise[keep]
    if not cache.keys:
        return new
    rows = _longs(keep, cache.keys[0].device)
    width = min(cache.capacity, capacity, used)
    for old_list, new_list in ((cache.keys, new.keys), (cache.values, new.values)):
        for old in old_list:
            buffer = old.new_empty(len(keep), old.shape[1], capacity, old.shape[3])
            buffer[:, :, :width] = old[rows, :, :width]
            buffer[:, :, width:] = 0  # masked columns are still read: no stale NaN may sit there
            new_list.append(buffer)
    return new


def _permute(cache: SlotCache, order: list[int]) -> None:
    """Re-order the rows in place (row i takes old row `order[i]`): each layer's buffer (and the noise table)
    is gathered into a spare one of its shape and dtype, which it then replaces (one spare per kind, not a
    second set of buffers)."""

    def moved(buffer: torch.Tensor) -> torch.Tensor:
        kind = (buffer.shape, buffer.dtype, buffer.device)
        spare = cache.spares.pop(kind, None)
        if spare is None:
            spare = torch.empty_like(buffer)
        rows = _longs(order, buffer.device)
        cache.spares[kind] = buffer
        return torch.index_select(buffer, 0, rows, out=spare)

    if cache.noise is not None:
        cache.noise = moved(cache.noise)
    for buffers in (cache.keys, cache.values):
        for k, buffer in enumerate(buffers):
            buffers[k] = moved(buffer)


def _forward(
    forward: ModelForward,
    cache: SlotCache,
    slots: list[Slot | None],
    prefill: bool,
    openings: dict[str, Opening],
) -> tuple[list[int], torch.Tensor, int]:
    """Feed the decoding slots' tokens and, if `prefill`, the waiting slots' prompts (a first prompt that
    several of them share, once) in one forward; copy openings into their rows. Returns the rows fed, the
    logits after each row's last token [slots, vocab] (rows not fed: zeros) and the prompt tokens copied
    rather than prefilled beyond those already counted. First prompts prefilled here are kept in `openings`
    (the latest OPENINGS)."""
    ready, decode, starting, followers, leader = [], [], [], [], {}
    for i, s in enumerate(slots):
        if s is None:
            continue
        if s.opening is not None:  # a first prompt computed before: copied into the row
            ready.append(i)
        elif len(s.pending) == 1:
            decode.append(i)
        elif prefill and s.pending:
            text = s.first_prompt
            if text is not None and text in leader:
                followers.append(i)  # the same first prompt as a slot prefilled now: copied after
            else:
                leader.setdefault(text, i)
                starting.append(i)
    for i in ready:
        _install(cache, slots[i], i, slots[i].opening)
    logits = _step(forward, cache, slots, decode, starting) if decode or starting else None
    for i in decode + starting:
        slots[i].fed += slots[i].pending
        slots[i].pending = []
    made = {}
    for i in starting:
        text = slots[i].first_prompt
        if text is not None:
            n = len(slots[i].fed)
            keys = [buffer[i, :, :n].clone() for buffer in cache.keys]
            values = [buffer[i, :, :n].clone() for buffer in cache.values]
            made[text] = Opening(list(slots[i].fed), keys, values, logits[i].clone())
    copied = 0
    for i in followers:
        opening = made[slots[i].first_prompt]
        copied += len(opening.ids) - len(slots[i].fed)
        _install(cache, slots[i], i, opening)
    for i in ready + followers:
        if logits is None:
            logits = slots[i].opening.logits.new_zeros(len(slots), slots[i].opening.logits.shape[-1])
        logits[i] = slots[i].opening.logits
        slots[i].opening = None
    for text, opening in made.items():
        _remember(openings, text, opening, OPENINGS)
    return sorted(decode + starting + ready + followers), logits, copied


def _install(cache: SlotCache, slot: Slot, row: int, opening: Opening) -> None:
    """Copy an opening's KV into a row's first columns; the row then holds its tokens and nothing to feed."""
    n = len(opening.ids)
    for buffers, parts in ((cache.keys, opening.keys), (cache.values, opening.values)):
        for buffer, part in zip(buffers, parts):
            buffer[row, :, :n] = part
    slot.fed, slot.pending, slot.opening = list(opening.ids), [], opening


# First prompts kept (KV and logits): jobs come N per problem in a row, so a few cover the trajectories
# still to start; each costs one prompt's KV: layers x 2 x kv_heads x head_dim x its tokens x bytes per value.
OPENINGS = 16


def _row_groups(lengths: list[int]) -> list[tuple[int, int, int]]:
    """Split the rows into 1-4 runs of neighbours `(first, end, width)`, each attending over its longest
    row's columns (plus the new one): the split of least work, counting GROUP_COST per extra call."""
    best = [(0, len(lengths), max(lengths) + 1)]
    for parts in (2, 3, 4):
        cuts = [round(k * len(lengths) / parts) for k in range(parts + 1)]
        groups = [(a, b, max(lengths[a:b]) + 1) for a, b in zip(cuts, cuts[1:]) if b > a]
        if _groups_cost(groups) < _groups_cost(best):
            best = groups
    return best


def _groups_cost(groups: list[tuple[int, int, int]]) -> int:
    """Attention work of a split, in row x column units, with GROUP_COST per call after the first."""
    return sum((b - a) * w for a, b, w in groups) + GROUP_COST * (len(groups) - 1)


def _step(
    forward: ModelForward, cache: SlotCache, slots: list[Slot | None], decode: list[int], starting: list[int]
) -> torch.Tensor:
    """One forward: the token of each slot in `decode` at its row's end, then the prompts of `starting`,
    each at its row's end. Returns the logits after each fed row's last token [slots, vocab] (rows not fed:
    zeros)."""
    device, repeat = forward.device, forward.repeat
    ids = [slots[i].pending[0] for i in decode]
    rows, positions = list(decode), [len(slots[i].fed) for i in decode]  # a row's end: its token's column
    # the rows not decoding attend as if empty: their queries are dummies, their columns need no reading
    lengths = [0] * len(slots)
    for i, end in zip(decode, positions):
        lengths[i] = end
    keep = list(range(len(decode)))  # the token after which each fed row's logits are read
    ends = [len(slots[i].fed) for i in starting]
    groups = _prompt_groups([len(slots[i].pending) for i in starting], ends)
    prompts = []
    for group in groups:
        group_rows = [starting[j] for j in group]
        sizes = [len(slots[i].pending) for i in group_rows]
        first = len(ids)
        for i, j, m in zip(group_rows, group, sizes):
            keep.append(len(ids) + m - 1)
            ids += slots[i].pending
            rows += [i] * m
            positions += range(ends[j], ends[j] + m)
        prompts.append(_prompts(group_rows, sizes, [ends[j] for j in group], first, repeat, device))
    fed = decode + [starting[j] for group in groups for j in group]  # the rows of `keep`, in order
    width = max(lengths) + 1
    every = len(decode) == len(slots)
    seq = _longs(ids + positions + rows, device).view(3, -1)  # a token's column is its position
    decode_mask = torch.arange(width, device=device)[None, :] <= _longs(lengths, device)[:, None]
    packed = Packed(
        len(slots),
        None if every else seq[2, : len(decode)],
        decode_mask[:, None, None, :],
        _row_groups(lengths) if decode else [],
        prompts,
    )
    layers = [RowLayer(cache, k, seq[2], seq[1]) for k in range(forward.model.config.num_hidden_layers)]
    out = forward(seq[None, 0], seq[None, 1], Cache(layers=layers), _longs(keep, device), packed)
    logits = out[0].float()
    if every:  # every row decodes, in row order
        return logits
    full = logits.new_zeros(len(slots), logits.shape[-1])
    full[_longs(fed, device)] = logits
    return full


def _prompts(
    rows: list[int], lengths: list[int], ends: list[int], first: int, repeat: int, device
) -> Prompts:
    """Indices and masks of prompts laid out row after row from token `first` of the step's sequence; row j
    has `lengths[j]` new tokens after its `ends[j]` columns; the mask once per query head of a kv head
    (`repeat` of them), built here once for every layer."""
    m, start = _longs(lengths + ends, device).view(2, -1)
    block = torch.arange(int(m.max()), device=device)[None, :]
    last = torch.minimum(block, m[:, None] - 1)  # padding repeats the row's last token
    index = first + torch.cumsum(m, 0)[:, None] - m[:, None] + last
    columns = torch.arange(int((start + m).max()), device=device)[None, None, :]
    mask = columns <= (start[:, None] + last)[:, :, None]
    stacked = mask[:, None].repeat(1, 1, repeat, 1)
    return Prompts(_longs(rows, device), index, block < m[:, None], stacked)


def _longs(values: list[int], device) -> torch.Tensor:
    """A 1-D int64 tensor of `values`, read as one buffer (`array`) rather than by `torch.tensor`, which
    inspects the list element by element (every step builds several such lists)."""
    if not values:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.frombuffer(array("q", values), dtype=torch.long).to(device)


def _prompt_groups(lengths: list[int], ends: list[int]) -> list[list[int]]:
    """The prompts (their new tokens and the columns before them) in one or two attention groups: sorted by
    length and cut where the attention work (query tokens x columns, padded to the group's longest) is
    least, counting GROUP_COST per extra call. A step's first prompts are long over short rows, its later
    turns short over long rows: attended together, each pads to the other's size."""
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lambda j: (lengths[j], ends[j]))
    tokens = [lengths[j] for j in order]  # ascending: a part's longest prompt is its last
    widths = [lengths[j] + ends[j] for j in order]
    before = list(accumulate(widths, max))  # the widest row among the first k + 1
    after = list(accumulate(widths[::-1], max))[::-1]  # among those from k on
    n = len(order)
    best, cut = n * tokens[-1] * before[-1], n
    for k in range(1, n):
        cost = k * tokens[k - 1] * before[k - 1] + (n - k) * tokens[-1] * after[k] + GROUP_COST
        if cost < best:
            best, cut = cost, k
    return [order[:cut], order[cut:]] if cut < len(order) else [order]


def _pick(
    logits: torch.Tensor,
    fed: list[int],
    slots: list[Slot | None],
    sampler: PerRowGumbelSampler | None,
    cache: SlotCache,
) -> torch.Tensor:
    """The next token of each slot in `fed`: argmax, or argmax of warped logits plus its turn's Gumbel noise
    (from `cache.noise` when a turn's noise is one block: a slot's is copied there at its turn's first token;
    else drawn row by row)."""
    if len(fed) < logits.shape[0]:  # else every row was fed (`fed` is sorted)
        logits = logits[_longs(fed, logits.device)]
    if sampler is None:
        return logits.argmax(-1)
    vocab = logits.shape[-1]
    first = slots[fed[0]].noise
    if cache.noise is None and first.whole_turn(vocab) is not None:
        cache.noise = logits.new_zeros(cache.rows, first.max_tokens, vocab, device=torch.device("cpu"))
    if cache.noise is None:
        return sampler.add_noise(logits, [slots[i].noise for i in fed]).argmax(-1)
    size = cache.noise.shape[1]  # row i's k-th token's noise is row i * size + k of the flattened table
    at = []
    for i in fed:
        slot = slots[i]
        if not slot.generated:  # a new turn: its noise into the slot's row
            cache.noise[i] = slot.noise.whole_turn(vocab)
        at.append(i * size + len(slot.generated))
    noise = cache.noise.view(-1, vocab).index_select(0, _longs(at, cache.noise.device)).to(logits.device)
    return (sampler.warp(logits) + noise).argmax(-1)
