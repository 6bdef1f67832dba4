"""Token-level continuous batching of multi-turn episodes: one decode loop, slots refilled between tokens.

`rollout.run_episodes` refills its batch between turns: each turn is one HF `generate` call that runs until
its longest row ends, and every call pays a fresh start. `generate` cannot take a new row mid-call, so this
module hand-writes the decode loop over a fixed number of slots, each with its own row of one KV cache:

- a row's cache is always compact: its first `len(slot.fed)` columns hold the tokens it has fed, in order,
  and nothing else counts. Each row grows on its own: a decoding slot writes its token's keys at its own
  end, a slot starting a turn writes its prompt's new tokens after its own end. No row pads another, so a
  forward attends over the longest conversation in the batch, not over a shared, growing width;
- every step, slots that decode feed their last token (one forward over all slots; the other rows feed a
  pad whose keys land past their end and are overwritten later). Slots starting a turn feed their prompt's
  new tokens in a second forward over those slots only, so a long prefill does not widen every row;
- that prefill is deferred: a slot starting a turn waits, idle (no token picked, no random draw), until
  `prefill_every` slots wait (default an eighth of the slots), no slot decodes, or the queue is empty; then
  one prefill serves them all. Each forward of a small model is mostly fixed cost, so one prefill every few
  steps beats one at nearly every step. Short prompts (later turns) and long ones (first turns) go in two
  forwards when the padding saved outweighs a forward; a first prompt several slots share is prefilled once
  and its KV and logits copied to the others, and kept a while for the problem's later trajectories;
- prompts are tokenized from the previous prompt's last special token on (`prompt_tokens`: the same ids);
- when a slot's turn ends (eos or `max_new_tokens`), its episode is stepped at once; a finished episode's slot
  takes the next queued job in the same step, otherwise the slot goes on with its next prompt. A new prompt
  keeps the longest common prefix of the row's tokens (the whole previous prompt and turn, or for a new job
  the system prompt) and cuts the row there: only the rest is prefilled;
- the buffers are preallocated per layer [slots, kv_heads, capacity, head_dim] and written in place (no
  per-step concatenation). Each forward gets an explicit 4D boolean mask (a row's own columns, and causally
  its new ones) and per-row positions, so a row's logits equal a lone recompute up to float rounding. When a
  step would overflow the buffers (then with room for it plus `slack` columns), or a quarter of the slots are
  empty (the queue ran out), they are copied into new ones holding only the occupied rows;
- a model that attends with PyTorch SDPA is switched to `grouped_sdpa` while the loop runs: rows are kept
  ordered by length (re-ordered when the attention saved pays for the copy) and each decode step attends in
  up to four groups of neighbours, each over its own longest row rather than the batch's.

Per turn, tokens are chosen exactly as `run_episodes` chooses them: argmax, or `PerRowGumbelSampler`'s warped
logits plus the (trajectory, turn) stream's Gumbel noise, one draw per token. So rows equal `run_episodes`'
rows while no two logits tie to float-rounding precision.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
    (a layer's shapes are known only then)."""

    rows: int
    capacity: int
    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)


class RowLayer(DynamicLayer):
    """One layer's view of the slot buffers for one forward: `update` writes each fed row's new keys and
    values at that row's own columns (`cols`, [rows, tokens]) and returns the first `width` columns."""

    def __init__(
        self, cache: SlotCache, index: int, rows: torch.Tensor | None, cols: torch.Tensor, width: int
    ):
        super().__init__()
        self.cache, self.index, self.rows, self.cols, self.width = cache, index, rows, cols, width
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        """Write the new columns in place; return the rows' first `width` columns (keys, values)."""
        if len(self.cache.keys) == self.index:  # the first forward: allocate this layer's buffers
            for buffers, fresh in ((self.cache.keys, key_states), (self.cache.values, value_states)):
                shape = (self.cache.rows, fresh.shape[1], self.cache.capacity, fresh.shape[3])
                buffers.append(fresh.new_zeros(shape))
        out = []
        for buffers, fresh in ((self.cache.keys, key_states), (self.cache.values, value_states)):
            buffer = buffers[self.index]
            rows = self.rows if self.rows is not None else torch.arange(len(buffer), device=buffer.device)
            buffer[rows[:, None], :, self.cols] = fresh.transpose(1, 2)
            part = buffer[:, :, : self.width]
            out.append(part if self.rows is None else part.index_select(0, self.rows))
        self.keys, self.values = out
        return self.keys, self.values


GROUPED_SDPA = "drift_lite_grouped_sdpa"
SORT_EVERY = 32  # decode steps between two checks whether re-ordering the rows by length pays
SORT_HORIZON = 32  # steps an order is expected to stay useful: re-order when the attention it saves over
# them outweighs the copy (both in row x column units of KV traffic)
GROUP_COST = 1024  # one more attention call, in row x column units of attention (an estimate: toy, 2 cores)


def grouped_sdpa(module, query, key, value, attention_mask, row_groups=None, **kwargs):
    """PyTorch SDPA run per group of rows `(first, end, width)`, each over its own first `width` columns.

    One decode step attends every row over the longest row's columns; rows are kept ordered by length, so
    groups of neighbours attend over little more than their own.
    Without `row_groups` (prefills, `generate`) it is plain SDPA. Registered with transformers'
    `AttentionInterface`; the engine switches an `sdpa` model to it while it runs.
    """
    if not row_groups:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    parts = [
        sdpa_attention_forward(
            module, query[a:b], key[a:b, :, :w], value[a:b, :, :w], attention_mask[a:b, ..., :w], **kwargs
        )[0]
        for a, b, w in row_groups
    ]
    return torch.cat(parts), None


AttentionInterface.register(GROUPED_SDPA, grouped_sdpa)


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
) -> dict:
    """Play episodes to the end in `batch_size` slots, refilled token by token; same rows as `run_episodes`.

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
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    sampler = None
    if not sampling.greedy:  # its warpers and noise; each row's noise stream is its slot's
        sampler = PerRowGumbelSampler([], sampling.temperature, sampling.top_p, model.device)
    queue = deque(jobs)
    slots: list[Slot | None] = [Slot(queue.popleft()) for _ in range(min(batch_size, len(queue)))]
    cache = SlotCache(len(slots), 0)
    for slot in slots:
        _render(slot, tokenizer, sampling)
    prompts = PromptTokenizer(tokenizer)
    openings: dict[str, Opening] = {}  # first prompt text -> its KV and logits (the latest few)
    cached = _tokenize(slots, prompts, openings)
    tokens = turns = steps = 0
    grouped = False
    if model.config._attn_implementation == "sdpa":
        model.set_attn_implementation(GROUPED_SDPA)  # a model that cannot switch keeps plain SDPA
        grouped = model.config._attn_implementation == GROUPED_SDPA
    try:
        with torch.inference_mode():
            while any(slot is not None for slot in slots):
                waiting = sum(slot is not None and len(slot.pending) > 1 for slot in slots)
                decoding = sum(slot is not None and len(slot.pending) == 1 for slot in slots)
                prefill = waiting > 0 and (waiting >= every or not decoding or not queue)
                sort = grouped and steps % SORT_EVERY == 0
                slots, cache = _make_room(slots, cache, slack, prefill, sort)
                fed, logits, copied = _forward(model, cache, slots, pad, prefill, grouped, openings)
                cached += copied
                steps += 1
                picked = _pick(logits[fed], [slots[i] for i in fed], sampler).tolist()
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
                    _render(slot, tokenizer, sampling)
                    starting.append(slot)
                cached += _tokenize(starting, prompts, openings)
                turns, tokens = turns + ended, tokens + ended_tokens
                if on_turn is not None and ended:
                    on_turn(ended, ended_tokens)
    finally:
        if grouped:
            model.set_attn_implementation("sdpa")
    return {"generated_tokens": tokens, "turns": turns, "cached_prompt_tokens": cached}


def _render(slot: Slot, tokenizer, sampling: Sampling) -> None:
    """Start a slot's next turn: render its prompt (tokenized with the others that start in this step)."""
    slot.prompt = chat.render_prompt(tokenizer, slot.job.episode.messages)
    slot.generated = []
    if not sampling.greedy:
        slot.noise = GumbelNoise(turn_key(slot.job), sampling.max_new_tokens)


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
    room for it plus `slack` columns), a quarter of the slots are empty (those rows are dropped), or `sort`
    and ordering the rows longest first saves more attention over SORT_HORIZON steps than the copy costs
    (then neighbours attend over similar widths, see `grouped_sdpa`)."""
    # Every row writes one column at its end in the decode forward; a prefill writes its longest prompt's
    # length of columns (its tokens, then pads) at the end of each row it feeds.
    longest = max((len(s.pending) for s in slots if s is not None), default=1) if prefill else 1
    ends = [_end(s, longest) for s in slots]
    empty = sum(slot is None for slot in slots)
    lengths = [len(s.fed) if s is not None else -1 for s in slots]
    if sort:
        ranked = sorted(lengths, reverse=True)
        saved = _groups_cost(_row_groups(lengths)) - _groups_cost(_row_groups(ranked))
        sort = saved * SORT_HORIZON > 2 * sum(n for n in lengths if n > 0)
    overflow = max(ends) > cache.capacity
    if not overflow and 4 * empty < len(slots) and not sort:
        return slots, cache
    keep = [i for i, slot in enumerate(slots) if slot is not None]
    if sort:
        keep.sort(key=lambda i: -lengths[i])
    kept = [slots[i] for i in keep]
    capacity = max([ends[i] for i in keep], default=1) + slack if overflow else cache.capacity
    used = max([lengths[i] for i in keep], default=0)
    return kept, _reallocate(cache, keep, capacity, used)


def _end(slot: Slot | None, longest: int) -> int:
    """The columns a row needs for the next step (its own, an opening's, then a prefill's or one more)."""
    if slot is None:
        return 1
    if slot.opening is not None:
        return len(slot.opening.ids) + 1
    return len(slot.fed) + (longest if len(slot.pending) > 1 else 1)


def _reallocate(cache: SlotCache, keep: list[int], capacity: int, used: int) -> SlotCache:
    """New buffers with rows `keep` of the old ones (their first `used` columns) and `capacity` columns."""
    new = SlotCache(len(keep), capacity)
    if not cache.keys:
        return new
    rows = torch.tensor(keep, dtype=torch.long, device=cache.keys[0].device)
    width = min(cache.capacity, capacity, used)
    for old_list, new_list in ((cache.keys, new.keys), (cache.values, new.values)):
        for old in old_list:
            buffer = old.new_zeros(len(keep), old.shape[1], capacity, old.shape[3])
            buffer[:, :, :width] = old[rows, :, :width]
            new_list.append(buffer)
    return new


def _forward(
    model,
    cache: SlotCache,
    slots: list[Slot | None],
    pad: int,
    prefill: bool,
    grouped: bool = False,
    openings: dict[str, Opening] | None = None,
) -> tuple[list[int], torch.Tensor, int]:
    """Feed the decoding slots' tokens and, if `prefill`, the waiting slots' prompts (a first prompt that
    several of them share, once); copy openings into their rows. Returns the rows fed, the logits after each
    row's last token [slots, vocab] (rows not fed: arbitrary) and the prompt tokens copied rather than
    prefilled beyond those already counted. `grouped`: the model attends with `grouped_sdpa`; the decode step
    passes it groups of rows. First prompts prefilled here are kept in `openings` (the latest OPENINGS)."""
    ready = [i for i, s in enumerate(slots) if s is not None and s.opening is not None]
    for i in ready:
        _install(cache, slots[i], i, slots[i].opening)
    decode = [i for i, s in enumerate(slots) if s is not None and len(s.pending) == 1]
    starting, followers, leader = [], [], {}
    if prefill:
        for i, s in enumerate(slots):
            if s is not None and len(s.pending) > 1:
                text = s.first_prompt
                if text is not None and text in leader:
                    followers.append(i)  # the same first prompt as a slot prefilled now: copied after
                else:
                    leader.setdefault(text, i)
                    starting.append(i)
    logits = None
    if decode:
        logits = _decode(model, cache, slots, decode, pad, grouped)
    for group in _prefill_groups([len(slots[i].pending) for i in starting]):
        rows = torch.tensor([starting[j] for j in group], device=model.device)
        out = _prefill(model, cache, [slots[starting[j]] for j in group], rows, pad)
        if logits is None:
            logits = out.new_zeros(len(slots), out.shape[-1])
        logits[rows] = out
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
    if openings is not None:
        for text, opening in made.items():
            openings.pop(text, None)
            openings[text] = opening
            if len(openings) > OPENINGS:
                del openings[next(iter(openings))]  # the oldest
    return sorted(decode + starting + ready + followers), logits, copied


def _install(cache: SlotCache, slot: Slot, row: int, opening: Opening) -> None:
    """Copy an opening's KV into a row's first columns; the row then holds its tokens and nothing to feed."""
    n = len(opening.ids)
    for buffers, parts in ((cache.keys, opening.keys), (cache.values, opening.values)):
        for buffer, part in zip(buffers, parts):
            buffer[row, :, :n] = part
    slot.fed, slot.pending, slot.opening = list(opening.ids), [], opening


# First prompts kept (KV and logits): jobs come N per problem in a row, so a few cover the trajectories
# still to start; each costs one prompt's KV over all layers (on a 7B model, ~15-60 MB).
OPENINGS = 16


# What one more forward costs, in padded prompt tokens (an estimate for the toy on 2 cores: a forward's fixed
# cost is about that many tokens' share of a prefill). Larger models: a smaller share; this errs on fewer
# forwards.
FORWARD_COST_TOKENS = 192


def _prefill_groups(lengths: list[int]) -> list[list[int]]:
    """Split the prompts to prefill (their lengths) into one or two forwards, shortest apart from longest,
    when the padding the split saves outweighs a forward's fixed cost (first turns of new jobs are long,
    later turns short: together, the short ones are padded to the long ones' length)."""
    if not lengths:
        return []
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    ranked = [lengths[j] for j in order]
    best, cut = len(ranked) * ranked[-1], len(ranked)
    for k in range(1, len(ranked)):
        cost = k * ranked[k - 1] + (len(ranked) - k) * ranked[-1] + FORWARD_COST_TOKENS
        if cost < best:
            best, cut = cost, k
    return [order[:cut], order[cut:]] if cut < len(ranked) else [order]


def _decode(
    model, cache: SlotCache, slots: list[Slot | None], decode: list[int], pad: int, grouped: bool = False
) -> torch.Tensor:
    """One token for every row at its own end (a pad for rows not in `decode`: empty or waiting to prefill;
    its keys land past the row's end and count for nothing); returns logits."""
    device = model.device
    ids = torch.full((len(slots), 1), pad, dtype=torch.long)
    ids[decode, 0] = torch.tensor([slots[i].pending[0] for i in decode])
    lengths = [len(s.fed) if s is not None else 0 for s in slots]
    ends = torch.tensor(lengths, device=device)[:, None]
    width = max(lengths) + 1
    mask = torch.arange(width, device=device)[None, :] <= ends  # the row's tokens and the new one
    extra = {"row_groups": _row_groups(lengths)} if grouped else {}
    out = model(
        input_ids=ids.to(device),
        position_ids=ends,
        attention_mask=mask[:, None, None, :],
        cache=_layers(model, cache, None, ends, width),
        use_cache=True,
        logits_to_keep=1,
        **extra,
    )
    return out.logits[:, -1].float()


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


def _prefill(model, cache: SlotCache, slots: list[Slot], rows: torch.Tensor, pad: int) -> torch.Tensor:
    """Feed the pending prompts of `slots` (cache rows `rows`), left padded, in one forward; returns logits.

    Row j's m new tokens are written at its columns end..end+m-1 and its L-m pads after them (past the new
    end: they count for nothing): block position p goes to column end + (p + m) mod L. A real token attends
    to the row's columns up to its own; a pad to the row's old columns and itself (no fully masked row).
    """
    device = model.device
    m = torch.tensor([len(s.pending) for s in slots], device=device)
    ends = torch.tensor([len(s.fed) for s in slots], device=device)
    length = int(m.max())
    ids = torch.full((len(slots), length), pad, dtype=torch.long)
    for j, slot in enumerate(slots):
        ids[j, length - len(slot.pending) :] = torch.tensor(slot.pending)
    block = torch.arange(length, device=device)[None, :]
    real = block >= (length - m)[:, None]  # [rows, L]
    cols = ends[:, None] + (block + m[:, None]) % length  # [rows, L]
    positions = torch.where(real, cols, 0)  # a real token's column is its position (compact rows)
    width = int((ends + length).max())
    c = torch.arange(width, device=device)[None, None, :]
    mask = torch.where(
        real[:, :, None], c <= cols[:, :, None], (c < ends[:, None, None]) | (c == cols[:, :, None])
    )
    out = model(
        input_ids=ids.to(device),
        position_ids=positions,
        attention_mask=mask[:, None],
        cache=_layers(model, cache, rows, cols, width),
        use_cache=True,
        logits_to_keep=1,
    )
    return out.logits[:, -1].float()


def _layers(model, cache: SlotCache, rows: torch.Tensor | None, cols: torch.Tensor, width: int) -> Cache:
    """A cache object whose layers read and write the slot buffers (all rows when `rows` is None)."""
    layers = model.config.num_hidden_layers
    return Cache(layers=[RowLayer(cache, i, rows, cols, width) for i in range(layers)])


def _pick(logits: torch.Tensor, slots: list[Slot], sampler: PerRowGumbelSampler | None) -> torch.Tensor:
    """Each slot's next token: argmax, or argmax of warped logits plus its turn's Gumbel noise."""
    if sampler is not None:
        logits = sampler.add_noise(logits, [slot.noise for slot in slots])
    return logits.argmax(-1)
