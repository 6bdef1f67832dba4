"""The default turn engine (one HF `generate` per turn): rows independent of batching, greedy equals argmax
decoding, rows agree with their messages, the opt-in prefix cache changes no row, and its engine report."""

import torch
from conftest import make_tiny_lm
from transformers import DynamicCache, Qwen2Config, Qwen2ForCausalLM

from drift_lite import chat
from drift_lite.engine_turn import PrefixCache, generate_turn, run_episodes
from drift_lite.env import EpisodeSettings
from drift_lite.jobs import make_jobs, supports_prefix_cache
from drift_lite.recipe import load_recipe
from drift_lite.rollouts import load_shots
from drift_lite.sampling import Sampling
from drift_lite.tasks import load_problems
from drift_lite.tasks.base import ExactChecker, Problem

PROBLEMS = [Problem(f"p{i}", f"{i}+{i}", str(2 * i)) for i in range(5)]


def _play(model, tokenizer, problems, n, batch_size, sampling, order=None):
    jobs = make_jobs(problems, n, 7, ExactChecker(), EpisodeSettings(max_turns=3), [])
    if order is not None:
        jobs = [jobs[i] for i in order]
    done = {}
    run_episodes(
        model,
        tokenizer,
        jobs,
        sampling,
        batch_size,
        lambda j: done.__setitem__((j.episode.problem.id, j.traj_idx), j.episode.to_row()),
    )
    return done


def test_a_trajectory_does_not_depend_on_its_batch(tiny_lm):
    model, tokenizer = tiny_lm
    sampling = Sampling(max_new_tokens=12, temperature=1.0)
    a = _play(model, tokenizer, PROBLEMS, 3, batch_size=15, sampling=sampling)
    b = _play(model, tokenizer, PROBLEMS, 3, batch_size=4, sampling=sampling, order=list(range(14, -1, -1)))
    c = _play(model, tokenizer, PROBLEMS[2:3], 3, batch_size=1, sampling=sampling)
    assert a == b
    for key, row in c.items():
        assert a[key] == row
    # different trajectories of one prompt differ (seeded apart)
    assert len({str(a[("p0", i)]["messages"]) for i in range(3)}) > 1


def test_greedy_turn_equals_argmax_decoding(tiny_lm):
    model, tokenizer = tiny_lm
    messages = chat.initial_messages(PROBLEMS[1])
    prompt = chat.render_prompt(tokenizer, messages)
    texts, counts = generate_turn(model, tokenizer, [prompt], [0], Sampling(greedy=True, max_new_tokens=6))
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for _ in range(6):
            nxt = model(ids).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], 1)
            if nxt.item() == tokenizer.eos_token_id:
                break
    expected = tokenizer.decode(ids[0, -counts[0] :], skip_special_tokens=True)
    assert texts[0] == expected


def test_rows_agree_with_their_messages(tiny_lm):
    model, tokenizer = tiny_lm
    rows = _play(model, tokenizer, PROBLEMS, 2, batch_size=6, sampling=Sampling(max_new_tokens=10))
    for row in rows.values():
        assistant = [m for m in row["messages"] if m["role"] == "assistant"]
        turns = len(assistant)
        assert 1 <= turns <= 3
        assert set(row["turn_rewards"]) == {"t1", "t2", "t3"}
        assert sum(row["verifier"].values()) == (row["t_star"] is not None)
        assert len(row["reward_details"]) == turns
        answered = [m for m in assistant if chat.parse_turn(m["content"].removeprefix("<think>")).answer]
        assert len(row["answer_norms"]) == len(answered)
        assert abs(row["format_penalty"] + 0.1 * (turns - len(answered))) < 1e-9


# Prefix cache. Reused KV were computed with other padding and chunk boundaries than a full recompute, so
# logits agree to float rounding, not bitwise (max |diff| ~1e-8 on these tiny models, ~1e-6 on the toy
# reference: the size left padding alone already causes). A token could flip only where two (Gumbel-perturbed)
# logits tie to that precision; on these models none does, so rows are compared exactly, and KV to tolerance.


def test_prefix_cache_changes_no_row():
    """Greedy and sampled rows with the cache on and off: both toy families, worked examples, first turns
    beside later ones (a refilled batch), four turns deep, two layers."""
    model, tokenizer = make_tiny_lm(seed=1, layers=2)
    problems = load_problems("toy", "train", None, 6, 0)
    assert {p.meta["toy_family"] for p in problems} == {"add", "choice"}
    shots = load_shots(load_recipe(None, ["env.shots=1"]))
    for sampling in (Sampling(greedy=True, max_new_tokens=12), Sampling(max_new_tokens=12)):
        rows, cached = {}, {}
        for on in (True, False):
            jobs = make_jobs(problems, 2, 7, ExactChecker(), EpisodeSettings(max_turns=4), shots)
            done = rows[on] = {}
            stats = run_episodes(
                model,
                tokenizer,
                jobs,
                sampling,
                5,
                lambda j, done=done: done.__setitem__((j.episode.problem.id, j.traj_idx), j.episode.to_row()),
                prefix_cache=on,
            )
            cached[on] = stats["cached_prompt_tokens"]
        assert rows[True] == rows[False]
        assert max(len(r["reward_details"]) for r in rows[True].values()) == 4
        # most of every prompt came from the cache: count the prompt tokens of every turn from the rows
        prompt_tokens = 0
        for row in rows[True].values():
            messages = row["messages"]
            for k, message in enumerate(messages):
                if message["role"] == "assistant":
                    prompt = chat.render_prompt(tokenizer, messages[:k])
                    prompt_tokens += len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert cached[False] == 0 and cached[True] > 0.6 * prompt_tokens


def test_cached_prompt_kv_equals_a_full_recompute():
    """Row KV built on cached prefixes (a family head, the row's last prompt) with padding in the middle equal
    a plain forward of the same tokens, at every position and layer."""
    model, tokenizer = make_tiny_lm(seed=1, layers=2)
    problems = load_problems("toy", "train", None, 6, 0)
    jobs = make_jobs(problems, 1, 7, ExactChecker(), EpisodeSettings(max_turns=4))
    cache, sampling = PrefixCache(), Sampling(max_new_tokens=8)

    def turn(batch: list) -> list[int]:
        prompts = [chat.render_prompt(tokenizer, j.episode.messages) for j in batch]
        heads = [p[: p.rfind(j.episode.problem.question)] for p, j in zip(prompts, batch)]
        keys = [j.key + j.episode.turn for j in batch]
        texts, _ = generate_turn(
            model, tokenizer, prompts, keys, sampling, cache, [id(j) for j in batch], heads
        )
        for job, text in zip(batch, texts):
            job.episode.step(text)
        return [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]

    first = turn(jobs[:4])
    before = cache.reused_tokens
    turn(jobs[:2] + jobs[4:])  # two second turns beside two first turns
    assert cache.reused_tokens - before >= sum(first[:2])  # the second turns reused their whole first prompt
    assert len(cache.heads) == 2 and len(cache.last) == 6
    for prefix in cache.last.values():
        full = DynamicCache(config=model.config)
        with torch.no_grad():
            model(input_ids=torch.tensor([prefix.ids]), cache=full)
        kv = torch.stack([torch.stack((layer.keys[0], layer.values[0])) for layer in full.layers])
        assert prefix.kv.shape == kv.shape
        torch.testing.assert_close(prefix.kv, kv, atol=1e-5, rtol=0)


def test_prefix_cache_only_for_full_attention_caches():
    model, _ = make_tiny_lm()
    assert supports_prefix_cache(model)
    model.config.use_sliding_window, model.config.sliding_window, model.config.max_window_layers = True, 8, 0
    model.config.layer_types = ["sliding_attention"]
    assert not supports_prefix_cache(model)  # it keeps only a window: the prompt's KV is not all there


def _sliding_window_lm():
    """A tiny Qwen2 whose one layer keeps an 8-token sliding window."""
    model, tokenizer = make_tiny_lm(seed=2)
    config = Qwen2Config(
        **{
            **model.config.to_dict(),
            "use_sliding_window": True,
            "sliding_window": 8,
            "max_window_layers": 0,
            "layer_types": None,
        }
    )
    assert config.layer_types == ["sliding_attention"]
    return Qwen2ForCausalLM(config).eval(), tokenizer


def test_the_engine_report_says_whether_the_prefix_cache_ran():
    """`run_episodes` reports the turn engine and its prefix cache: on when asked for, off (with the reason)
    for a model whose cache keeps a sliding window."""
    sampling = Sampling(max_new_tokens=4)

    def report(model, tokenizer, prefix_cache: bool) -> dict:
        jobs = make_jobs(PROBLEMS[:2], 1, 7, ExactChecker(), EpisodeSettings(max_turns=2))
        stats = run_episodes(model, tokenizer, jobs, sampling, 2, lambda job: None, prefix_cache=prefix_cache)
        return stats["engine"]

    model, tokenizer = make_tiny_lm(seed=2)
    off = {"engine": "turn", "prefix_cache": False, "decoder_chain": False, "fallback": None}
    assert report(model, tokenizer, False) == off
    assert report(model, tokenizer, True) == {**off, "prefix_cache": True}
    windowed = report(*_sliding_window_lm(), True)
    assert windowed["prefix_cache"] is False and "sliding window" in windowed["fallback"]
