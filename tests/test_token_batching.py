"""The token-level engine: the same rows and counts as the turn-level engine (`rollout.run_episodes`) for any
batch size, slots kept full, buffer reallocation, and `on_turn` totals."""

import functools

import pytest
import torch
from conftest import make_tiny_lm

from drift_lite import chat, rollout, token_batching
from drift_lite.env import EpisodeSettings
from drift_lite.recipe import load_recipe
from drift_lite.rollout import Sampling, load_shots, make_jobs, play_episodes, run_episodes
from drift_lite.tasks import load_problems
from drift_lite.tasks.base import ExactChecker
from drift_lite.token_batching import run_episodes_streaming

SAMPLINGS = [Sampling(greedy=True, max_new_tokens=12), Sampling(max_new_tokens=12)]


@pytest.fixture(scope="module")
def setup():
    """A two-layer tiny random model, six toy problems of both families and one worked example each."""
    model, tokenizer = make_tiny_lm(seed=1, layers=2)
    problems = load_problems("toy", "train", None, 6, 0)
    assert {p.meta["toy_family"] for p in problems} == {"add", "choice"}
    return model, tokenizer, problems, load_shots(load_recipe(None, ["env.shots=1"]))


def _play(setup, engine, sampling: Sampling, batch_size: int, n: int = 2, **kwargs) -> tuple[dict, dict]:
    """Rows by (prompt id, trajectory) and the engine's stats."""
    model, tokenizer, problems, shots = setup
    jobs = make_jobs(problems, n, 7, ExactChecker(), EpisodeSettings(max_turns=4), shots)
    rows = {}

    def on_done(job) -> None:
        rows[(job.episode.problem.id, job.traj_idx)] = job.episode.to_row()

    stats = engine(model, tokenizer, jobs, sampling, batch_size, on_done, **kwargs)
    return rows, stats


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_rows_and_counts_equal_the_turn_engine(setup, sampling):
    """Greedy and sampled, batch sizes 1, 3, 5, against the turn engine with its prefix cache on and off:
    first turns beside later ones (refilled slots), four turns deep. Logits differ from the turn engine's by
    float rounding only (other padding, chunks and dead columns): no token sits on a tie at that precision."""
    reference, ref_stats = _play(setup, run_episodes, sampling, 5)
    no_cache, _ = _play(setup, run_episodes, sampling, 5, prefix_cache=False)
    assert reference == no_cache
    assert max(len(r["reward_details"]) for r in reference.values()) == 4
    for batch_size in (1, 3, 5):
        rows, stats = _play(setup, run_episodes_streaming, sampling, batch_size)
        assert rows == reference, batch_size
        assert stats["generated_tokens"] == ref_stats["generated_tokens"]
        assert stats["turns"] == ref_stats["turns"] == sum(len(r["reward_details"]) for r in rows.values())
        assert stats["cached_prompt_tokens"] > 0


def test_reallocation_changes_no_row(setup, monkeypatch):
    """With no slack the buffers are reallocated at nearly every step (else when a prefill overflows them or
    rows empty); rows stay the same."""
    calls = []
    real = token_batching._reallocate
    monkeypatch.setattr(token_batching, "_reallocate", lambda *a: calls.append(1) or real(*a))
    for sampling in SAMPLINGS:
        calls.clear()
        reference, _ = _play(setup, run_episodes_streaming, sampling, 4)
        default = len(calls)
        calls.clear()
        rows, _ = _play(setup, run_episodes_streaming, sampling, 4, slack=0)
        assert rows == reference
        assert len(calls) > 2 * default > 0


def _eos_biased_lm(bias: float = 2.5):
    """A tiny model whose turns end early and at varied lengths: a bias on the eos logit."""
    model, tokenizer = make_tiny_lm(seed=1, layers=2)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[tokenizer.eos_token_id] = bias
    model.lm_head = head
    return model, tokenizer


def test_slots_stay_full(setup, monkeypatch):
    """Batch 5 and 12 jobs, turns of varied lengths: far fewer steps than the turn engine, whose rows wait for
    their turn's longest row; the same rows."""
    model, tokenizer = _eos_biased_lm()
    biased = (model, tokenizer, *setup[2:])
    sampling = Sampling(max_new_tokens=12)
    shapes = []  # (rows, tokens) of each forward pass of the turn engine
    hook = model.register_forward_hook(
        lambda m, a, kw, out: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        turn_rows, turn_stats = _play(biased, run_episodes, sampling, 5, n=2)  # 6 problems x 2 = 12 jobs
    finally:
        hook.remove()
    turn_steps = sum(1 for b, t in shapes if b > 1 or t == 1)  # generate's steps, not shared-head prefills
    steps = []  # the token engine's steps: each feeds every slot and yields one token per slot
    real = token_batching._forward
    monkeypatch.setattr(token_batching, "_forward", lambda *a: steps.append(1) or real(*a))
    rows, stats = _play(biased, run_episodes_streaming, sampling, 5, n=2)
    assert rows == turn_rows and stats["generated_tokens"] == turn_stats["generated_tokens"]
    outputs = [m["content"] for r in rows.values() for m in r["messages"][3:] if m["role"] == "assistant"]
    assert len({len(text) for text in outputs}) > 5  # turns of many lengths
    assert stats["generated_tokens"] / 5 <= len(steps) < 0.7 * turn_steps


def test_on_turn_adds_up_to_the_totals(setup):
    seen = []
    _, stats = _play(setup, run_episodes_streaming, SAMPLINGS[1], 3, on_turn=lambda t, k: seen.append((t, k)))
    assert sum(t for t, _ in seen) == stats["turns"]
    assert sum(k for _, k in seen) == stats["generated_tokens"]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_deferred_prefill_changes_no_row(setup, monkeypatch, sampling):
    """Slots starting a turn wait, idle, until 1, 2 or all 5 of them do: the same rows and counts as the turn
    engine, and fewer forwards with prompts the longer they wait when turns end at varied steps (sampled;
    greedy, this model's slots start their turns in step, so the counts tie)."""
    biased = (*_eos_biased_lm(), *setup[2:])
    reference, ref_stats = _play(biased, run_episodes, sampling, 5, n=4)
    calls = []  # per forward: did it prefill prompts?
    real = token_batching._step
    monkeypatch.setattr(token_batching, "_step", lambda *a: calls.append(bool(a[4])) or real(*a))
    prefills = {}
    for every in (1, 2, 5):
        calls.clear()
        rows, stats = _play(biased, run_episodes_streaming, sampling, 5, n=4, prefill_every=every)
        assert rows == reference, every
        assert stats["generated_tokens"] == ref_stats["generated_tokens"]
        assert stats["turns"] == ref_stats["turns"]
        prefills[every] = sum(calls)
    assert prefills[1] >= prefills[2] >= prefills[5]
    if not sampling.greedy:
        assert prefills[1] > 1.3 * prefills[2] > 1.3 * 1.3 * prefills[5]


def test_a_step_feeds_only_the_decoding_tokens_and_the_prompts(setup, monkeypatch):
    """Slots waiting for their prompt's step (and emptied ones) feed nothing: each forward's sequence is one
    token per decoding slot plus the new prompt tokens, and steps with idle slots occur."""
    expected, fed = [], []
    real = token_batching._step

    def counted(run, cache, slots, decode, starting):
        idle = sum(s is not None for s in slots) - len(decode) - len(starting)
        expected.append((len(decode) + sum(len(slots[i].pending) for i in starting), idle))
        return real(run, cache, slots, decode, starting)

    def forward(self, ids, *args):
        fed.append(ids.shape[1])
        return real_forward(self, ids, *args)

    real_forward = token_batching.ModelForward.__call__
    monkeypatch.setattr(token_batching, "_step", counted)
    monkeypatch.setattr(token_batching.ModelForward, "__call__", forward)
    rows, _ = _play(setup, run_episodes_streaming, SAMPLINGS[1], 5, n=4, prefill_every=3)
    assert rows == _play(setup, run_episodes, SAMPLINGS[1], 5, n=4)[0]
    assert fed == [tokens for tokens, _ in expected]
    assert sum(idle > 0 for _, idle in expected) >= 5


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_grouped_attention_and_rows_by_length_change_no_row(setup, monkeypatch, sampling):
    """Rows re-ordered by length at every step and each step's attention split into as many groups as it
    allows (slots' tokens and prompts): the turn engine's rows; the model attends with plain SDPA again
    afterwards."""
    reference, _ = _play(setup, run_episodes, sampling, 5)
    splits, reorders = [], []
    real_groups, real_reallocate = token_batching._row_groups, token_batching._reallocate
    real_permute = token_batching._permute
    monkeypatch.setattr(token_batching, "GROUP_COST", 0)
    monkeypatch.setattr(token_batching, "SORT_EVERY", 1)
    monkeypatch.setattr(token_batching, "_row_groups", lambda n: splits.append(real_groups(n)) or splits[-1])
    prompt_splits, real_prompt_groups = [], token_batching._prompt_groups
    monkeypatch.setattr(
        token_batching,
        "_prompt_groups",
        lambda *a: prompt_splits.append(real_prompt_groups(*a)) or prompt_splits[-1],
    )
    monkeypatch.setattr(
        token_batching, "_reallocate", lambda *a: reorders.append(a[1]) or real_reallocate(*a)
    )
    permuted = []
    monkeypatch.setattr(token_batching, "_permute", lambda *a: permuted.append(a[1]) or real_permute(*a))
    rows, _ = _play(setup, run_episodes_streaming, sampling, 5)
    assert rows == reference
    assert sum(len(groups) > 1 for groups in splits) >= 20  # steps whose attention was split
    assert any(len(groups) > 1 for groups in prompt_splits)  # and steps whose prompts were
    assert any(keep != sorted(keep) for keep in reorders + permuted)  # rows moved, not only dropped
    assert permuted  # some in place (the buffers' shapes unchanged)
    assert setup[0].config._attn_implementation == "sdpa"


def test_row_groups_split_only_when_it_saves_work(monkeypatch):
    lengths = [200, 190, 180, 20, 10, 5, 5, 4]
    monkeypatch.setattr(token_batching, "GROUP_COST", 0)
    groups = token_batching._row_groups(lengths)
    assert [(a, b) for a, b, _ in groups] in ([(0, 4), (4, 8)], [(0, 3), (3, 5), (5, 8)])
    assert all(w == max(lengths[a:b]) + 1 for a, b, w in groups)
    monkeypatch.setattr(token_batching, "GROUP_COST", 10_000)
    assert token_batching._row_groups(lengths) == [(0, 8, 201)]


def test_index_lists_become_int64_tensors_that_outlive_their_buffer():
    """`_longs` reads a list as one buffer: the same values as `torch.tensor`, an empty list included, and the
    tensor keeps its values after the list (and the array it was read through) are gone."""
    values = [0, 7, -3, 2**40]
    made = token_batching._longs(list(values), "cpu")
    assert made.dtype == torch.long and made.tolist() == values
    assert torch.equal(made, torch.tensor(values))
    empty = token_batching._longs([], "cpu")
    assert empty.dtype == torch.long and empty.shape == (0,)
    kept = [token_batching._longs(list(range(k, k + 50)), "cpu") for k in range(20)]
    _ = [list(range(1000)) for _ in range(200)]  # churn the allocator
    assert all(t.tolist() == list(range(k, k + 50)) for k, t in enumerate(kept))


def test_prompt_groups_split_first_prompts_from_later_turns(monkeypatch):
    """Three later turns (10 tokens over rows of 200) and a first prompt (30 tokens over 20): apart, unless an
    extra attention call costs more than the padding saved; every prompt in exactly one group."""
    lengths, ends = [30, 10, 10, 10], [20, 200, 180, 190]
    groups = token_batching._prompt_groups(lengths, ends)
    assert sorted(map(sorted, groups)) == [[0], [1, 2, 3]]
    monkeypatch.setattr(token_batching, "GROUP_COST", 100_000)
    assert [sorted(g) for g in token_batching._prompt_groups(lengths, ends)] == [[0, 1, 2, 3]]
    assert token_batching._prompt_groups([], []) == []


def test_the_checkpoints_generation_config_changes_no_token(setup):
    """A checkpoint whose generation_config.json sets a repetition penalty, an n-gram ban and a min length:
    the turn engine's `generate` ignores them like the token engine (and the recipe) do, and the model keeps
    its config afterwards."""
    sampling = SAMPLINGS[1]
    clean, _ = _play(setup, run_episodes, sampling, 5)
    model = setup[0]
    saved = model.generation_config
    try:
        model.generation_config = saved.__class__(**saved.to_dict())
        model.generation_config.repetition_penalty = 1.5
        model.generation_config.no_repeat_ngram_size = 2
        model.generation_config.min_new_tokens = 5
        turn, _ = _play(setup, run_episodes, sampling, 5)
        token, _ = _play(setup, run_episodes_streaming, sampling, 5)
        assert turn == token == clean
        assert model.generation_config.repetition_penalty == 1.5
    finally:
        model.generation_config = saved


def test_noise_drawn_row_by_row_and_prompts_rendered_once_change_no_row(setup, monkeypatch):
    """Sampled: a turn's noise too large for one block is drawn token by token per row (not read from the
    slots' noise table); the same rows. Conversations that repeat (a problem's trajectories) are rendered
    once."""
    sampling = SAMPLINGS[1]
    renders = []
    real_render = chat.render_prompt
    monkeypatch.setattr(chat, "render_prompt", lambda *a: renders.append(1) or real_render(*a))
    reference, stats = _play(setup, run_episodes_streaming, sampling, 5)
    assert len(renders) < stats["turns"]
    monkeypatch.setattr(rollout, "NOISE_BLOCK_ENTRIES", 116 * 4)  # 4 tokens a block, 12 a turn
    noise_tables = []
    real_pick = token_batching._pick
    monkeypatch.setattr(token_batching, "_pick", lambda *a: noise_tables.append(a[-1].noise) or real_pick(*a))
    rows, _ = _play(setup, run_episodes_streaming, sampling, 5)
    assert rows == reference
    assert noise_tables and all(table is None for table in noise_tables)


def test_a_model_whose_attention_cannot_be_switched_plays_with_the_turn_engine(setup, monkeypatch):
    """transformers cannot switch the model to `packed_sdpa`: the token engine declines and `play_episodes`
    has the turn engine play (the same rows); the token engine's step never runs."""
    sampling = SAMPLINGS[1]
    reference, _ = _play(setup, run_episodes, sampling, 5)
    monkeypatch.setattr(type(setup[0]), "_can_set_attn_implementation", classmethod(lambda cls: False))
    steps = []
    monkeypatch.setattr(token_batching, "_step", lambda *a: steps.append(1))
    rows, _ = _play(setup, functools.partial(play_episodes, engine="token"), sampling, 5)
    assert rows == reference and not steps


def test_the_decoder_runs_directly_after_one_step_checked_against_the_models_forward(setup):
    """The model's own forward runs once (the first step, checked bit for bit against the decoder's parts run
    directly); every later step runs the parts; the rows are the turn engine's."""
    sampling = SAMPLINGS[1]
    reference, _ = _play(setup, run_episodes, sampling, 5)
    calls = []
    hook = setup[0].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        rows, stats = _play(setup, run_episodes_streaming, sampling, 5)
    finally:
        hook.remove()
    assert rows == reference
    assert len(calls) == 1 and stats["turns"] > 4


def test_a_model_whose_forward_adds_to_the_logits_keeps_its_own_forward(setup, monkeypatch):
    """A forward that does more than chain the decoder's parts (here: a bias on every logit row) fails the
    first step's check: every step then runs `model(...)`, and the rows are the turn engine's with that bias,
    which differ from the unbiased ones."""
    sampling = SAMPLINGS[0]
    model = setup[0]
    plain, _ = _play(setup, run_episodes, sampling, 5)
    bias = torch.zeros(model.config.vocab_size)
    bias[setup[1].convert_tokens_to_ids("7")] = 4.0  # the character tokenizer: '7' is one token
    real = model.forward

    def biased(*args, **kwargs):
        out = real(*args, **kwargs)
        out.logits = out.logits + bias
        return out

    monkeypatch.setattr(model, "forward", biased)
    reference, _ = _play(setup, run_episodes, sampling, 5)
    assert reference != plain
    steps, calls = [], []
    step = token_batching._step
    monkeypatch.setattr(token_batching, "_step", lambda *a: steps.append(1) or step(*a))
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        rows, _ = _play(setup, run_episodes_streaming, sampling, 5)
    finally:
        hook.remove()
    assert rows == reference
    assert len(calls) == len(steps) > 1
