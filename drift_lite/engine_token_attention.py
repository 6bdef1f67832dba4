"""The token engine's attention and buffers: the slots' KV buffers (`SlotCache`, written in place by
`RowLayer`), one step's packed sequence (`Packed`, `Prompts`), `packed_sdpa` (registered with transformers'
`AttentionInterface`) and `ModelForward`, which chains the decoder's own parts once they matched `model(...)`.

Part of the opt-in token engine (`engine_token`), validated on CPU only: see its module docstring.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from itertools import accumulate
from typing import NamedTuple

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward


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
    spares: dict[tuple, torch.Tensor] = field(default_factory=dict)  # (shape, dtype, device): `permute`


class Opening(NamedTuple):
    """A first-turn prompt as prefilled once: its tokens, its KV per layer ([kv_heads, tokens, head_dim] keys
    and values) and the logits after it. A problem's N trajectories share their first prompt, so the others
    copy this instead of prefilling it again."""

    ids: list[int]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    logits: torch.Tensor


def install(cache: SlotCache, row: int, opening: Opening) -> None:
    """Copy an opening's KV into a row's first columns."""
    n = len(opening.ids)
    for buffers, parts in ((cache.keys, opening.keys), (cache.values, opening.values)):
        for buffer, part in zip(buffers, parts):
            buffer[row, :, :n] = part


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


def row_groups(lengths: list[int]) -> list[tuple[int, int, int]]:
    """Split the rows into 1-4 runs of neighbours `(first, end, width)`, each attending over its longest
    row's columns (plus the new one): the split of least work, counting GROUP_COST per extra call."""
    best = [(0, len(lengths), max(lengths) + 1)]
    for parts in (2, 3, 4):
        cuts = [round(k * len(lengths) / parts) for k in range(parts + 1)]
        groups = [(a, b, max(lengths[a:b]) + 1) for a, b in zip(cuts, cuts[1:]) if b > a]
        if groups_cost(groups) < groups_cost(best):
            best = groups
    return best


def groups_cost(groups: list[tuple[int, int, int]]) -> int:
    """Attention work of a split, in row x column units, with GROUP_COST per call after the first."""
    return sum((b - a) * w for a, b, w in groups) + GROUP_COST * (len(groups) - 1)


def prompt_layout(
    rows: list[int], lengths: list[int], ends: list[int], first: int, repeat: int, device
) -> Prompts:
    """Indices and masks of prompts laid out row after row from token `first` of the step's sequence; row j
    has `lengths[j]` new tokens after its `ends[j]` columns; the mask once per query head of a kv head
    (`repeat` of them), built here once for every layer."""
    m, start = longs(lengths + ends, device).view(2, -1)
    block = torch.arange(int(m.max()), device=device)[None, :]
    last = torch.minimum(block, m[:, None] - 1)  # padding repeats the row's last token
    index = first + torch.cumsum(m, 0)[:, None] - m[:, None] + last
    columns = torch.arange(int((start + m).max()), device=device)[None, None, :]
    mask = columns <= (start[:, None] + last)[:, :, None]
    stacked = mask[:, None].repeat(1, 1, repeat, 1)
    return Prompts(longs(rows, device), index, block < m[:, None], stacked)


def longs(values: list[int], device) -> torch.Tensor:
    """A 1-D int64 tensor of `values`, read as one buffer (`array`) rather than by `torch.tensor`, which
    inspects the list element by element (every step builds several such lists)."""
    if not values:
        return torch.empty(0, dtype=torch.long, device=device)
    return torch.frombuffer(array("q", values), dtype=torch.long).to(device)


def prompt_groups(lengths: list[int], ends: list[int]) -> list[list[int]]:
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


def reallocate(cache: SlotCache, keep: list[int], capacity: int, used: int) -> SlotCache:
    """New buffers with rows `keep` of the old ones (their first `used` columns) and `capacity` columns."""
    new = SlotCache(len(keep), capacity)
    if cache.noise is not None:
        new.noise = cache.noise[keep]
    if not cache.keys:
        return new
    rows = longs(keep, cache.keys[0].device)
    width = min(cache.capacity, capacity, used)
    for old_list, new_list in ((cache.keys, new.keys), (cache.values, new.values)):
        for old in old_list:
            buffer = old.new_empty(len(keep), old.shape[1], capacity, old.shape[3])
            buffer[:, :, :width] = old[rows, :, :width]
            buffer[:, :, width:] = 0  # masked columns are still read: no stale NaN may sit there
            new_list.append(buffer)
    return new


def permute(cache: SlotCache, order: list[int]) -> None:
    """Re-order the rows in place (row i takes old row `order[i]`): each layer's buffer (and the noise table)
    is gathered into a spare one of its shape and dtype, which it then replaces (one spare per kind, not a
    second set of buffers)."""

    def moved(buffer: torch.Tensor) -> torch.Tensor:
        kind = (buffer.shape, buffer.dtype, buffer.device)
        spare = cache.spares.pop(kind, None)
        if spare is None:
            spare = torch.empty_like(buffer)
        rows = longs(order, buffer.device)
        cache.spares[kind] = buffer
        return torch.index_select(buffer, 0, rows, out=spare)

    if cache.noise is not None:
        cache.noise = moved(cache.noise)
    for buffers in (cache.keys, cache.values):
        for k, buffer in enumerate(buffers):
            buffers[k] = moved(buffer)
