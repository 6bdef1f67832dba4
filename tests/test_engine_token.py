"""The opt-in token engine: the same rows and counts as the turn engine (`engine_turn.run_episodes`) for any
batch size, slots kept full, buffer reallocation, deferred prefill, grouped attention, `on_turn` totals, the
decoder chain and what it reports (all through `run_episodes_streaming` / `play_episodes` and their stats)."""

import functools

import pytest
import torch
from conftest import make_tiny_lm

from drift_lite import chat, engine_token, engine_token_attention
from drift_lite import sampling as sampling_module
from drift_lite.engine_token import run_episodes_streaming
from drift_lite.engine_turn import run_episodes
from drift_lite.env import EpisodeSettings
from drift_lite.episodes import play_episodes
from drift_lite.jobs import make_jobs
from drift_lite.recipe import load_recipe
from drift_lite.rollouts import load_shots
from drift_lite.sampling import GumbelNoise, Sampling
from drift_lite.tasks import load_problems
from drift_lite.tasks.base import ExactChecker

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
    reference, ref_stats = _play(setup, run_episodes, sampling, 5, prefix_cache=True)
    no_cache, _ = _play(setup, run_episodes, sampling, 5, prefix_cache=False)
    assert reference == no_cache
    assert max(len(r["reward_details"]) for r in reference.values()) == 4
    for batch_size in (1, 3, 5):
        rows, stats = _play(setup, run_episodes_streaming, sampling, batch_size)
        assert rows == reference, batch_size
        assert stats["generated_tokens"] == ref_stats["generated_tokens"]
        assert stats["turns"] == ref_stats["turns"] == sum(len(r["reward_details"]) for r in rows.values())
        assert stats["cached_prompt_tokens"] > 0
        assert stats["engine"] == {
            "engine": "token",
            "prefix_cache": True,
            "decoder_chain": True,
            "fallback": None,
        }


def test_reallocation_changes_no_row(setup):
    """With no slack the buffers are reallocated at nearly every step (else when a prefill overflows them or
    rows empty); rows stay the same."""
    for sampling in SAMPLINGS:
        reference, stats = _play(setup, run_episodes_streaming, sampling, 4)
        rows, tight = _play(setup, run_episodes_streaming, sampling, 4, slack=0)
        assert rows == reference
        assert tight["reallocations"] > 2 * stats["reallocations"] > 0


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


def test_slots_stay_full(setup):
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
    rows, stats = _play(biased, run_episodes_streaming, sampling, 5, n=2)  # a step: one token per fed slot
    assert rows == turn_rows and stats["generated_tokens"] == turn_stats["generated_tokens"]
    outputs = [m["content"] for r in rows.values() for m in r["messages"][3:] if m["role"] == "assistant"]
    assert len({len(text) for text in outputs}) > 5  # turns of many lengths
    assert stats["generated_tokens"] / 5 <= stats["steps"] < 0.7 * turn_steps


def test_on_turn_adds_up_to_the_totals(setup):
    seen = []
    _, stats = _play(setup, run_episodes_streaming, SAMPLINGS[1], 3, on_turn=lambda t, k: seen.append((t, k)))
    assert sum(t for t, _ in seen) == stats["turns"]
    assert sum(k for _, k in seen) == stats["generated_tokens"]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_deferred_prefill_changes_no_row(setup, sampling):
    """Slots starting a turn wait, idle, until 1, 2 or all 5 of them do: the same rows and counts as the turn
    engine, and fewer forwards with prompts the longer they wait when turns end at varied steps (sampled;
    greedy, this model's slots start their turns in step, so the counts tie)."""
    biased = (*_eos_biased_lm(), *setup[2:])
    reference, ref_stats = _play(biased, run_episodes, sampling, 5, n=4)
    prefills = {}  # forwards with prompts
    for every in (1, 2, 5):
        rows, stats = _play(biased, run_episodes_streaming, sampling, 5, n=4, prefill_every=every)
        assert rows == reference, every
        assert stats["generated_tokens"] == ref_stats["generated_tokens"]
        assert stats["turns"] == ref_stats["turns"]
        prefills[every] = stats["prefill_steps"]
        assert 0 < stats["prefill_steps"] <= stats["steps"]
    assert prefills[1] >= prefills[2] >= prefills[5]
    if not sampling.greedy:
        assert prefills[1] > 1.3 * prefills[2] > 1.3 * 1.3 * prefills[5]


def _prompt_tokens(tokenizer, rows) -> int:
    """The prompt tokens of every turn of `rows` (not the worked examples' turns), rendered from their
    messages."""
    total = 0
    for row in rows:
        messages = row["messages"]
        turns = [k for k, message in enumerate(messages) if message["role"] == "assistant"]
        for k in turns[len(turns) - len(row["reward_details"]) :]:
            prompt = chat.render_prompt(tokenizer, messages[:k])
            total += len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    return total


def test_a_step_feeds_only_the_decoding_tokens_and_the_prompts(setup):
    """The forwards' sequences hold, in all, exactly the prompt tokens not reused plus one token per decoding
    step of each turn (its tokens but the last): no padding, nothing for waiting or emptied slots."""
    model, tokenizer = setup[:2]
    fed = []  # tokens of each embedding call
    hook = model.get_decoder().embed_tokens.register_forward_hook(lambda m, a, out: fed.append(a[0].shape[1]))
    try:
        rows, stats = _play(setup, run_episodes_streaming, SAMPLINGS[1], 5, n=4, prefill_every=3)
    finally:
        hook.remove()
    assert rows == _play(setup, run_episodes, SAMPLINGS[1], 5, n=4)[0]
    assert stats["engine"]["decoder_chain"] and len(fed) == stats["steps"] + 1  # the first step runs twice
    prompts = _prompt_tokens(tokenizer, rows.values()) - stats["cached_prompt_tokens"]
    assert sum(fed[1:]) == prompts + stats["generated_tokens"] - stats["turns"]


@pytest.mark.parametrize("sampling", SAMPLINGS, ids=["greedy", "sampled"])
def test_grouped_attention_and_rows_by_length_change_no_row(setup, monkeypatch, sampling):
    """Rows re-ordered by length whenever it may pay and each step's attention split into as many groups as
    it allows (a free extra attention call): the turn engine's rows; the model attends with plain SDPA again
    afterwards."""
    reference, _ = _play(setup, run_episodes, sampling, 5)
    monkeypatch.setattr(engine_token_attention, "GROUP_COST", 0)  # tuning constants, not code paths
    monkeypatch.setattr(engine_token, "SORT_EVERY", 1)
    splits, prompt_splits = [], []
    for name, seen in (("row_groups", splits), ("prompt_groups", prompt_splits)):
        real = getattr(engine_token, name)
        monkeypatch.setattr(
            engine_token, name, lambda *a, real=real, seen=seen: seen.append(real(*a)) or seen[-1]
        )
    rows, stats = _play(setup, run_episodes_streaming, sampling, 5)
    assert rows == reference
    assert sum(len(groups) > 1 for groups in splits) >= 20  # steps whose attention was split
    assert any(len(groups) > 1 for groups in prompt_splits)  # and steps whose prompts were
    assert stats["reorders"] > 0  # rows moved, not only dropped
    assert setup[0].config._attn_implementation == "sdpa"


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
    """Sampled: a turn's noise that fits one block is read from the slots' table (no per-token draw); too
    large for one block, it is drawn token by token per row; the same rows. Conversations that repeat (a
    problem's trajectories) are rendered once."""
    sampling = SAMPLINGS[1]
    renders = []
    real_render = chat.render_prompt
    monkeypatch.setattr(chat, "render_prompt", lambda *a: renders.append(1) or real_render(*a))
    draws = []  # per-token reads of a row's noise stream
    real_next = GumbelNoise.next
    monkeypatch.setattr(GumbelNoise, "next", lambda self, vocab: draws.append(1) or real_next(self, vocab))
    reference, stats = _play(setup, run_episodes_streaming, sampling, 5)
    assert len(renders) < stats["turns"] and not draws
    monkeypatch.setattr(sampling_module, "NOISE_BLOCK_ENTRIES", 116 * 4)  # 4 tokens a block, 12 a turn
    rows, stats = _play(setup, run_episodes_streaming, sampling, 5)
    assert rows == reference
    assert len(draws) == stats["generated_tokens"]


def test_a_model_whose_attention_cannot_be_switched_plays_with_the_turn_engine(setup, monkeypatch):
    """transformers cannot switch the model to `packed_sdpa`: the token engine declines (and refuses to be
    called directly), and `play_episodes` has the turn engine play (the same rows), reporting why."""
    sampling = SAMPLINGS[1]
    reference, _ = _play(setup, run_episodes, sampling, 5)
    monkeypatch.setattr(type(setup[0]), "_can_set_attn_implementation", classmethod(lambda cls: False))
    assert "packed_sdpa" in engine_token.decline_reason(setup[0])
    with pytest.raises(ValueError, match="cannot play"):
        _play(setup, run_episodes_streaming, sampling, 5)
    rows, stats = _play(setup, functools.partial(play_episodes, engine="token"), sampling, 5)
    assert rows == reference
    ran = stats["engine"]
    assert ran["engine"] == "turn" and "token engine declined" in ran["fallback"] and not ran["prefix_cache"]


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
    assert len(calls) == 1 and stats["turns"] > 4 and stats["engine"]["decoder_chain"]


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
    calls = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        rows, stats = _play(setup, run_episodes_streaming, sampling, 5)
    finally:
        hook.remove()
    assert rows == reference
    assert len(calls) == stats["steps"] > 1 and stats["engine"]["decoder_chain"] is False
