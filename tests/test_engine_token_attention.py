"""The token engine's attention helpers: row groups and prompt groups split only when it saves work, and index
lists read as int64 tensors."""

import torch

from drift_lite import engine_token_attention
from drift_lite.engine_token_attention import longs, prompt_groups, row_groups


def test_row_groups_split_only_when_it_saves_work(monkeypatch):
    lengths = [200, 190, 180, 20, 10, 5, 5, 4]
    monkeypatch.setattr(engine_token_attention, "GROUP_COST", 0)
    groups = row_groups(lengths)
    assert [(a, b) for a, b, _ in groups] in ([(0, 4), (4, 8)], [(0, 3), (3, 5), (5, 8)])
    assert all(w == max(lengths[a:b]) + 1 for a, b, w in groups)
    monkeypatch.setattr(engine_token_attention, "GROUP_COST", 10_000)
    assert row_groups(lengths) == [(0, 8, 201)]


def test_index_lists_become_int64_tensors_that_outlive_their_buffer():
    """`longs` reads a list as one buffer: the same values as `torch.tensor`, an empty list included, and the
    tensor keeps its values after the list (and the array it was read through) are gone."""
    values = [0, 7, -3, 2**40]
    made = longs(list(values), "cpu")
    assert made.dtype == torch.long and made.tolist() == values
    assert torch.equal(made, torch.tensor(values))
    empty = longs([], "cpu")
    assert empty.dtype == torch.long and empty.shape == (0,)
    kept = [longs(list(range(k, k + 50)), "cpu") for k in range(20)]
    _ = [list(range(1000)) for _ in range(200)]  # churn the allocator
    assert all(t.tolist() == list(range(k, k + 50)) for k, t in enumerate(kept))


def test_prompt_groups_split_first_prompts_from_later_turns(monkeypatch):
    """Three later turns (10 tokens over rows of 200) and a first prompt (30 tokens over 20): apart, unless an
    extra attention call costs more than the padding saved; every prompt in exactly one group."""
    lengths, ends = [30, 10, 10, 10], [20, 200, 180, 190]
    groups = prompt_groups(lengths, ends)
    assert sorted(map(sorted, groups)) == [[0], [1, 2, 3]]
    monkeypatch.setattr(engine_token_attention, "GROUP_COST", 100_000)
    assert [sorted(g) for g in prompt_groups(lengths, ends)] == [[0, 1, 2, 3]]
    assert prompt_groups([], []) == []
