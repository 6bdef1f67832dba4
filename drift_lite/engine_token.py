"""The opt-in token engine (`rollout.engine: token`): one decode loop over a fixed number of slots, refilled
between tokens rather than between turns.

Status: an accelerator validated on CPU only. It has never run on a GPU; it switches the model's attention to
its own `packed_sdpa` (so flash attention is off) and, once a first step matched `model(...)` bit for bit,
chains transformers' decoder internals itself; its "same rows as the turn engine" guarantee is tested in fp32
on CPU and untested in bf16. The default engine is `engine_turn` (plain HF `generate`).

The turn engine's `generate` runs each turn until its longest row ends and cannot take a new row mid-call;
here each slot has its own row of one KV cache (`engine_token_attention.SlotCache`):

- a row's cache is compact: its first `len(slot.fed)` columns hold the tokens it has fed, in order. A
  decoding slot writes its token at its own end, a slot starting a turn its prompt's new tokens after its own
  end, so no row pads another;
- every step is one forward of one packed sequence (the decoding slots' tokens, then the prompts prefilled),
  attended by `packed_sdpa`; a model whose attention is not pluggable, or whose cache keeps a sliding window,
  is declined (`decline_reason`) and `episodes.play_episodes` plays it with the turn engine;
- prompts wait until `prefill_every` slots wait (default an eighth of the slots), no slot decodes, or the
  queue is empty, and go in one step together. A first prompt several slots share is prefilled once and its
  KV and logits copied to the others (kept a while for the problem's later trajectories);
- prompts are tokenized from the previous prompt's last special token on (`prompt_tokens`: the same ids); a
  new prompt keeps the longest common prefix of the row's tokens and only the rest is prefilled;
- when a slot's turn ends (eos or `max_new_tokens`), its episode is stepped at once; a finished episode's
  slot takes the next queued job in the same step. Buffers are preallocated and written in place; they are
  reallocated when a step would overflow them or a quarter of the slots are empty.

Per turn, tokens are chosen exactly as the turn engine chooses them: argmax, or `PerRowGumbelSampler`'s warped
logits plus the (trajectory, turn) stream's Gumbel noise, one draw per token. So rows equal the turn engine's
rows while no two logits tie to float-rounding precision.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from transformers.cache_utils import Cache

from drift_lite import chat
from drift_lite.engine_token_attention import (
    PACKED_SDPA,
    SORT_EVERY,
    SORT_HORIZON,
    ModelForward,
    Opening,
    Packed,
    RowLayer,
    SlotCache,
    groups_cost,
    install,
    longs,
    permute,
    prompt_groups,
    prompt_layout,
    reallocate,
    row_groups,
)
from drift_lite.jobs import Job, common_prefix, eos_ids, supports_prefix_cache, turn_key
from drift_lite.prompt_tokens import PromptTokenizer
from drift_lite.sampling import GumbelNoise, PerRowGumbelSampler, Sampling


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
    """Play episodes to the end in `batch_size` slots, refilled token by token; the same rows as the turn
    engine (`engine_turn.run_episodes`). A model it cannot play (`decline_reason`) is a ValueError, taking no
    job; `episodes.play_episodes` asks first and plays such a model with the turn engine.

    `on_done(job)` is called as each episode ends. `on_turn(turns, tokens)` is called after each decode step
    in which turns ended, with the number of those turns and their generated tokens (the sums over all calls
    are the returned `turns` and `generated_tokens`). Returns `generated_tokens`, `turns` and
    `cached_prompt_tokens` (prompt tokens not prefilled: held by the row, or copied from the same first
    prompt), the loop's counts `steps` (forwards), `prefill_steps` (those with prompts), `reallocations` and
    `reorders` of the buffers, and `engine` (what ran: `{"engine": "token", "prefix_cache": True,
    "decoder_chain": whether `ModelForward` chained the decoder's parts, "fallback": None}`).
    `slack`: free columns per row after a reallocation for room (more: fewer copies, more memory).
    `prefill_every`: slots starting a turn wait until this many do (or no slot decodes, or the queue is
    empty), then share one prefill; None: `max(1, batch_size // 8)`; 1: prefill at every step any slot starts
    a turn. Rows do not depend on it.
    """
    every = max(1, batch_size // 8) if prefill_every is None else prefill_every
    model.eval()
    reason = decline_reason(model)
    if reason is not None:
        raise ValueError(f"the token engine cannot play this model: {reason}")
    original = model.config._attn_implementation
    model.set_attn_implementation(PACKED_SDPA)
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
    tokens = turns = steps = prefills = reallocations = reorders = 0
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
                slots, new, reordered = _make_room(slots, cache, slack, prefill, steps % SORT_EVERY == 0)
                reallocations, reorders = reallocations + (new is not cache), reorders + reordered
                cache = new
                prefills += prefill  # waiting slots: at least one prompt goes in
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
    return {
        "generated_tokens": tokens,
        "turns": turns,
        "cached_prompt_tokens": cached,
        "steps": steps,
        "prefill_steps": int(prefills),
        "reallocations": int(reallocations),
        "reorders": int(reorders),
        "engine": {
            "engine": "token",
            "prefix_cache": True,
            "decoder_chain": bool(forward.direct),
            "fallback": None,
        },
    }


def decline_reason(model) -> str | None:
    """Why the token engine cannot play `model` (None: it can): a layer's cache keeps a window only (rows
    cannot keep their whole context), or transformers cannot switch its attention to `packed_sdpa`."""
    if not supports_prefix_cache(model):
        return "a layer's cache keeps a sliding window"
    original = model.config._attn_implementation
    model.set_attn_implementation(PACKED_SDPA)
    switched = model.config._attn_implementation == PACKED_SDPA
    model.set_attn_implementation(original)
    return None if switched else "the model's attention cannot be switched to packed_sdpa"


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


def _install(cache: SlotCache, slot: Slot, row: int, opening: Opening) -> None:
    """Copy an opening into a slot's row; the row then holds its tokens and nothing to feed."""
    install(cache, row, opening)
    slot.fed, slot.pending, slot.opening = list(opening.ids), [], opening


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
) -> tuple[list[Slot | None], SlotCache, bool]:
    """Reallocate the buffers when the next step (with its prefill or not) would overflow them (then with
    room for it plus `slack` columns) or a quarter of the slots are empty (those rows are dropped); if `sort`
    and ordering the rows longest first saves more attention over SORT_HORIZON steps than the copy costs,
    re-order them (in place, or in the new buffers): neighbours then attend over similar widths (see
    `packed_sdpa`). Returns the slots, the buffers (new ones when reallocated) and whether rows were
    re-ordered."""
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
        saved = groups_cost(row_groups(lengths)) - groups_cost(row_groups(ranked))
        # the copy's cost, an estimate (toy, 2 cores): every row's whole capacity moves, each column at half
        # an attention read
        sort = saved * SORT_HORIZON > len(slots) * cache.capacity // 2
    overflow = max(ends) > cache.capacity
    if not overflow and 4 * empty < len(slots) and not sort:
        return slots, cache, False
    keep = [i for i, slot in enumerate(slots) if slot is not None]
    if sort:
        keep.sort(key=lambda i: -lengths[i])
    kept = [slots[i] for i in keep]
    if not overflow and len(keep) == len(slots):  # only re-ordered: the same shapes, rows moved in place
        permute(cache, keep)
        return kept, cache, True
    capacity = max([ends[i] for i in keep], default=1) + slack if overflow else cache.capacity
    used = max([lengths[i] for i in keep], default=0)
    return kept, reallocate(cache, keep, capacity, used), sort


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


# First prompts kept (KV and logits): jobs come N per problem in a row, so a few cover the trajectories
# still to start; each costs one prompt's KV: layers x 2 x kv_heads x head_dim x its tokens x bytes per value.
OPENINGS = 16


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
    groups = prompt_groups([len(slots[i].pending) for i in starting], ends)
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
        prompts.append(prompt_layout(group_rows, sizes, [ends[j] for j in group], first, repeat, device))
    fed = decode + [starting[j] for group in groups for j in group]  # the rows of `keep`, in order
    width = max(lengths) + 1
    every = len(decode) == len(slots)
    seq = longs(ids + positions + rows, device).view(3, -1)  # a token's column is its position
    decode_mask = torch.arange(width, device=device)[None, :] <= longs(lengths, device)[:, None]
    packed = Packed(
        len(slots),
        None if every else seq[2, : len(decode)],
        decode_mask[:, None, None, :],
        row_groups(lengths) if decode else [],
        prompts,
    )
    layers = [RowLayer(cache, k, seq[2], seq[1]) for k in range(forward.model.config.num_hidden_layers)]
    out = forward(seq[None, 0], seq[None, 1], Cache(layers=layers), longs(keep, device), packed)
    logits = out[0].float()
    if every:  # every row decodes, in row order
        return logits
    full = logits.new_zeros(len(slots), logits.shape[-1])
    full[longs(fed, device)] = logits
    return full


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
        logits = logits[longs(fed, logits.device)]
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
    noise = cache.noise.view(-1, vocab).index_select(0, longs(at, cache.noise.device)).to(logits.device)
    return (sampler.warp(logits) + noise).argmax(-1)
