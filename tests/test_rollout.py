"""The rollout engine: per-trajectory seeds, batching independence, exact sampling, schema agreement,
per-problem worked examples, and `rollout` files: valid rows, determinism, kill -9 and resume, refusals."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_lm
from transformers import DynamicCache

from drift_lite import chat, records
from drift_lite.env import EpisodeSettings
from drift_lite.errors import UserError
from drift_lite.recipe import load_recipe
from drift_lite.rollout import (
    GumbelNoise,
    PerRowGumbelSampler,
    PrefixCache,
    Sampling,
    fingerprint_path,
    generate_turn,
    is_complete,
    load_shots,
    make_jobs,
    rollout,
    rollout_settings,
    row_generator,
    run_episodes,
    supports_prefix_cache,
)
from drift_lite.tasks import load_problems, toy
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


def test_gumbel_sampler_draws_from_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    probs = torch.softmax(logits / 0.7, -1)[0]
    counts = torch.zeros(4)
    for key in range(4000):
        proc = PerRowGumbelSampler([key], temperature=0.7, top_p=1.0, device=torch.device("cpu"))
        counts[proc(None, logits.clone()).argmax()] += 1
    assert torch.allclose(counts / 4000, probs, atol=0.03)


def test_gumbel_noise_in_blocks_equals_one_draw_per_token():
    """Blocks of a whole turn (small vocab), of a few tokens (large vocab) or of one: the same noise, token by
    token, as one `rand(vocab)` per token from the row's generator."""
    tiny = torch.finfo(torch.float32).tiny
    for vocab, max_tokens in ((116, 40), (116, 1), (100_000, 40)):
        noise = GumbelNoise(12345, max_tokens)
        generator = row_generator(12345)
        for _ in range(9):
            uniform = torch.rand(vocab, generator=generator).clamp(min=tiny, max=1.0 - 1e-7)
            assert torch.equal(noise.next(vocab), -torch.log(-torch.log(uniform)))
        assert len(noise.block) == (max_tokens if vocab == 116 else 2)
    whole = GumbelNoise(12345, 40).whole_turn(116)  # one block holds the turn: its 40 tokens' noise
    noise = GumbelNoise(12345, 40)
    assert torch.equal(whole, torch.stack([noise.next(116) for _ in range(40)]))
    assert GumbelNoise(12345, 40).whole_turn(100_000) is None  # 40 tokens of this vocab: more than a block


def test_top_p_never_picks_outside_the_nucleus():
    logits = torch.tensor([[5.0, 4.0, -3.0, -4.0]])
    for key in range(300):
        proc = PerRowGumbelSampler([key], temperature=1.0, top_p=0.9, device=torch.device("cpu"))
        assert proc(None, logits.clone()).argmax().item() in (0, 1)


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


def test_each_problem_gets_worked_examples_of_its_own_family():
    shots = load_shots(load_recipe(None, ["env.shots=2"]))
    problems = load_problems("toy", "train", None, 40, 0)
    jobs = make_jobs(problems, 2, 0, ExactChecker(), EpisodeSettings(), shots)
    assert len(jobs) == 80
    families = set()
    for job in jobs:
        problem, messages = job.episode.problem, job.episode.messages
        family = problem.meta["toy_family"]
        families.add(family)
        examples = toy.worked_examples(family, 2, avoid=problem)
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
        for (shot, content), user, assistant in zip(examples, messages[1:5:2], messages[2:5:2]):
            assert shot.meta["toy_family"] == family
            assert (
                user["content"] == chat.first_user_message(shot, "simple", 5)
                and assistant["content"] == content
            )
        assert messages[-1]["content"] == chat.first_user_message(problem, "simple", 5)
    assert families == {"add", "choice"}
    no_shots = make_jobs(problems[:1], 1, 0, ExactChecker(), EpisodeSettings(), load_shots(load_recipe(None)))
    assert len(no_shots[0].episode.messages) == 2


def test_worked_examples_only_for_the_toy_tasks():
    with pytest.raises(UserError, match="env.shots"):
        load_shots(load_recipe(None, ["env.shots=1", "task.name=gsm8k"]))
    shots = load_shots(load_recipe(None, ["env.shots=1"]))
    with pytest.raises(UserError, match="env.shots"):  # e.g. an eval set of another task
        shots(Problem("gsm8k-1", "1+1?", "2"))


# ---------------------------------------------------------------------------------------------------------
# The `rollout` function and the CLI on a tiny random Qwen2 saved to a folder (a recipe's model.name)

N = 3  # samples per prompt
MAX_TURNS = 3
SIZE = 40  # prompts: enough that a kill after the first group lands well before the end


@pytest.fixture(scope="module")
def recipe_path(tiny_lm, tmp_path_factory) -> Path:
    """A recipe naming a tiny random Qwen2 folder, the toy task and small settings."""
    folder = tmp_path_factory.mktemp("rollout")
    model, tokenizer = tiny_lm
    model.save_pretrained(folder / "model")
    tokenizer.save_pretrained(folder / "model")
    recipe = {
        "seed": 3,
        "model": {"name": str(folder / "model")},
        "task": {"name": "toy", "size": SIZE, "seed": 1},
        "env": {"max_turns": MAX_TURNS},
        "rollout": {"n_samples": N, "max_new_tokens": 12, "temperature": 1.0, "batch_size": 8},
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def reference(recipe_path) -> bytes:
    """The bytes of an uninterrupted rollout with the recipe's settings."""
    out = recipe_path.parent / "reference.jsonl"
    rollout(load_recipe(recipe_path), out, show_progress=False)
    return out.read_bytes()


def _run(recipe_path: Path, out: Path, *overrides: str) -> dict:
    return rollout(load_recipe(recipe_path, list(overrides)), out, show_progress=False)


def _assert_agrees_with_messages(row: dict) -> None:
    """t_star, verifier, turn_rewards, answer_norms and format_penalty recomputed from the messages."""
    roles = [m["role"] for m in row["messages"]]
    assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
    assert roles[2:] == ["assistant", "user"] * (len(roles[2:]) // 2) + ["assistant"]
    checker = ExactChecker()
    outputs = [
        m["content"].removeprefix(chat.THINK_PREFILL) for m in row["messages"] if m["role"] == "assistant"
    ]
    answers = [chat.parse_turn(text).answer for text in outputs]
    correct = [a is not None and checker.is_correct(a, row["gold"]) for a in answers]
    t_star = correct.index(True) + 1 if any(correct) else None
    assert row["t_star"] == t_star
    assert len(outputs) == (t_star or MAX_TURNS)
    assert row["verifier"] == {f"t{k}": int(k == t_star) for k in range(1, MAX_TURNS + 1)}
    assert row["turn_rewards"] == {k: float(v) for k, v in row["verifier"].items()}
    assert row["answer_norms"] == [checker.normalize(a) for a in answers if a is not None]
    assert row["format_penalty"] == round(-0.1 * answers.count(None), 10)
    assert len(row["reward_details"]) == len(outputs)


def test_every_written_row_validates_and_each_prompt_has_n_rows(recipe_path, reference):
    path = recipe_path.parent / "reference.jsonl"
    rows = list(records.iter_rows(path))  # validates each row against the schema
    problems = load_problems("toy", "train", None, SIZE, 1)
    assert len(rows) == SIZE * N
    assert [r["prompt_id"] for r in rows] == [p.id for p in problems for _ in range(N)]
    golds = {p.id: p.gold for p in problems}
    for i, row in enumerate(rows):
        assert records.validate_row(row, f"row {i}") is row
        assert row["traj_idx"] == i % N and row["gold"] == golds[row["prompt_id"]]
        assert (row["task"], row["seed"], row["ref_model"]) == ("toy", 3, str(recipe_path.parent / "model"))
        _assert_agrees_with_messages(row)
    meta = json.loads(fingerprint_path(path).read_text())
    assert meta["complete"] and is_complete(path, load_recipe(recipe_path))


def test_same_seed_and_settings_give_the_same_bytes(recipe_path, reference, tmp_path):
    out = tmp_path / "again.jsonl"
    _run(recipe_path, out, "rollout.batch_size=5")  # batch size is not a setting of the rows
    assert out.read_bytes() == reference
    _run(recipe_path, tmp_path / "seed4.jsonl", "seed=4")
    assert (tmp_path / "seed4.jsonl").read_bytes() != reference


def test_the_recipe_switches_of_engine_and_kv_reuse_change_no_byte(
    recipe_path, reference, tmp_path, monkeypatch
):
    """The default turn engine, with its prefix cache or without, and the opt-in token engine write the same
    bytes (and each switch reaches the engine it names)."""
    import drift_lite.rollout as rollout_module
    import drift_lite.token_batching as token_module

    seen = []
    real_turn, real_token = rollout_module.run_episodes, token_module.run_episodes_streaming
    monkeypatch.setattr(
        rollout_module, "run_episodes", lambda *a, **k: seen.append(k["prefix_cache"]) or real_turn(*a, **k)
    )
    monkeypatch.setattr(
        token_module, "run_episodes_streaming", lambda *a, **k: seen.append("token") or real_token(*a, **k)
    )
    for overrides, engine in (
        (["rollout.prefix_cache=true"], True),
        ([], False),
        (["rollout.engine=token"], "token"),
    ):
        seen.clear()
        out = tmp_path / f"{'-'.join(overrides) or 'default'}.jsonl"
        _run(recipe_path, out, *overrides)
        assert seen == [engine] and out.read_bytes() == reference, overrides


def _lines_end(data: bytes, k: int) -> int:
    """Byte offset just past the k-th line."""
    end = 0
    for _ in range(k):
        end = data.index(b"\n", end) + 1
    return end


def test_resume_drops_a_torn_line_and_a_partial_group(recipe_path, reference, tmp_path):
    out = tmp_path / "torn.jsonl"
    shutil.copy(fingerprint_path(recipe_path.parent / "reference.jsonl"), fingerprint_path(out))
    cut = _lines_end(reference, 2 * N + 1) + 25  # two groups, one row of the third and part of another
    out.write_bytes(reference[:cut])
    stats = _run(recipe_path, out)
    assert stats["resumed_prompts"] == 2
    assert out.read_bytes() == reference


def test_resume_with_other_settings_is_refused_and_touches_nothing(recipe_path, reference, tmp_path):
    out = tmp_path / "partial.jsonl"
    shutil.copy(fingerprint_path(recipe_path.parent / "reference.jsonl"), fingerprint_path(out))
    out.write_bytes(reference[: _lines_end(reference, N + 1) + 10])  # torn tail: would be cut on resume
    before = (out.read_bytes(), fingerprint_path(out).read_bytes())
    for override, key in [("rollout.temperature=0.7", "rollout.temperature"), ("seed=4", "seed")]:
        with pytest.raises(UserError) as err:
            _run(recipe_path, out, override)
        message = str(err.value)
        assert "\n" not in message and key in message and "other rollout settings" in message
        assert (out.read_bytes(), fingerprint_path(out).read_bytes()) == before
    fingerprint_path(out).unlink()
    with pytest.raises(UserError, match="settings file .* is missing"):
        _run(recipe_path, out)
    assert out.read_bytes() == before[0]


def test_killed_rollout_resumes_to_the_same_bytes(recipe_path, reference, tmp_path):
    out = tmp_path / "killed.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "drift_lite.cli", "rollout", str(recipe_path), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") >= N:  # one complete group on disk
                break
            time.sleep(0.01)
        assert proc.poll() is None, (
            f"the rollout ended before the kill: {proc.stderr.read().decode()[-2000:]}"
        )
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    killed = out.read_bytes()
    assert killed.count(b"\n") >= N and len(killed) < len(reference)  # mid-run: a group or more, not all
    assert reference.startswith(killed)  # what the killed run wrote is what an uninterrupted run writes
    assert not json.loads(fingerprint_path(out).read_text())["complete"]
    stats = _run(recipe_path, out, "rollout.batch_size=4")  # resume in this process, another batch size
    assert 1 <= stats["resumed_prompts"] < SIZE
    assert out.read_bytes() == reference
    # Float-level caveat: a resumed run batches rows with other mates (and here another batch size). A row's
    # logits move with its padding and cached prefixes at float-rounding level (measured max |diff| ~1e-7 on
    # this tiny model, ~1e-5 on the toy reference, fp32 CPU), so bytes match while no sampled token sits on a
    # tie at that precision: here none does; on a GPU or in bf16 (larger rounding) a near-tie could flip.


def test_rollout_settings_follow_the_toy_build_and_the_repeat_penalty(monkeypatch):
    from drift_lite import toy_model

    recipe = load_recipe(None)
    base = rollout_settings(recipe)
    assert base == rollout_settings(load_recipe(None, ["rollout.batch_size=3", "model.device=cpu"]))
    assert base != rollout_settings(load_recipe(None, ["weights.repeat_coef=0.3"]))  # in reward_details
    assert base != rollout_settings(load_recipe(None, ["toy.steps=7"]))
    monkeypatch.setattr(toy_model, "CORPUS_VERSION", "another-corpus")  # a rebuilt reference, same settings
    assert base != rollout_settings(recipe)
