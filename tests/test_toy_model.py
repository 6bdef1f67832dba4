"""The embedded reference: tokenizer round trips, the scripted corpus, the exact batched loss, tiny builds."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random

import pytest
import torch

from drift_lite import chat, toy_model
from drift_lite.recipe import ModelConfig, ToyConfig
from drift_lite.tasks import toy
from drift_lite.toy_tokenizer import PHRASE_TOKENS, build_toy_tokenizer

TINY = ToyConfig(hidden_size=32, intermediate_size=64, layers=1, steps=4, batch_size=4, threads=1)


@pytest.fixture(scope="module")
def conversations():
    return toy_model.corpus(seed=0, n=40, per_problem=2)


def test_folder_tokenizer_matches_the_plain_one_and_round_trips(conversations, tmp_path):
    from transformers import AutoTokenizer

    folder = toy_model.folder_tokenizer()
    folder.save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    loaded = AutoTokenizer.from_pretrained(tmp_path)  # what load_tokenizer sees: a Qwen2Tokenizer
    plain = build_toy_tokenizer()
    assert len(plain) == len(folder) == len(loaded)
    for messages in conversations:
        text = plain.apply_chat_template(messages, tokenize=False)
        ids = plain(text, add_special_tokens=False)["input_ids"]
        assert folder(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids
        assert loaded.decode(ids) == text


def test_fixed_prompt_text_is_one_token_per_phrase_and_problems_one_per_character():
    tokenizer = build_toy_tokenizer()
    for phrase in PHRASE_TOKENS:
        assert len(tokenizer(phrase, add_special_tokens=False)["input_ids"]) == 1, phrase
    problem = toy.make_problem("add", 47, 38)
    messages = chat.initial_messages(problem)
    text = chat.render_prompt(tokenizer, messages)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert tokens[tokens.index("What is ") + 1 :][:6] == ["4", "7", "+", "3", "8", "?"]
    assert len(tokens) == 22  # 360 characters
    # text outside the phrases still tokenizes, one token per character
    assert len(tokenizer("Problem: x", add_special_tokens=False)["input_ids"]) == len("Problem: x")


@pytest.mark.parametrize("cls", toy.CLASSES)
def test_scripted_turns_are_what_the_solver_meant(cls):
    """Right turns score 1, slips are wrong answers, bare turns parse as no answer (a format error)."""
    rng = random.Random(0)
    seen = set()
    for a, b in toy._pool("train", "add", cls)[:60]:
        problem = toy.make_problem("add", a, b)
        episode, kinds = toy_model.scripted_episode(problem, rng)
        assert len(kinds) == episode.turn
        for turn, kind in enumerate(kinds, 1):
            seen.add(kind)
            assert (kind == "right") == bool(episode.verifier[f"t{turn}"])
            assert (kind == "bare") == (episode.details[f"t{turn}"]["actions"] == [])
    assert "right" in seen and (cls == "easy" or "slip" in seen)


def test_greedy_paths_of_the_policy_are_systematic():
    """The scripted policy (not a trained model), the mode of each decision: easy right at once, carry right
    at the retry; stubborn slips, drops the tags (at turn 1, else at the retry), then repeats its slip: what
    greedy decoding of a well-fit reference shows.
    """
    policy = toy_model.POLICY.items()
    mode = {k: (p.p_carry > 0.5, p.p_bare_slip > 0.5, p.p_bare_right > 0.5) for k, p in policy}
    assert mode[("easy", "first")][0]
    assert not mode[("carry", "first")][0] and mode[("carry", "retry")][0]
    assert not mode[("stubborn", "first")][0] and not mode[("stubborn", "retry")][0]
    assert mode[("stubborn", "first")][1] and not mode[("carry", "first")][1]
    assert mode[("stubborn", "retry")][1] and not mode[("stubborn", "after_bare")][1]
    assert not any(m[2] for m in mode.values())


def test_encode_masks_exactly_the_generated_tokens(conversations):
    tokenizer = toy_model.folder_tokenizer()
    (ids, mask), *_ = toy_model.encode(tokenizer, conversations[:1])
    targets = tokenizer.decode([t for t, m in zip(ids, mask) if m])
    assistant = [m["content"] for m in conversations[0] if m["role"] == "assistant"]
    # each turn after its <think> prefill, with the end-of-turn token
    assert targets == "".join(c.removeprefix(chat.THINK_PREFILL) + "<|im_end|>" for c in assistant)


def test_batch_loss_with_shared_prompts_equals_the_plain_loss(conversations):
    tokenizer = toy_model.folder_tokenizer()
    examples = toy_model.encode(tokenizer, conversations[:8])
    torch.manual_seed(0)
    model = toy_model_model(tokenizer)
    idx = list(range(8))
    shared = toy_model.batch_loss(model, examples, idx, tokenizer.pad_token_id)
    total, count = 0.0, 0
    for ids, mask in examples:
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
        labels = torch.tensor([t if m else -100 for t, m in zip(ids, mask)])[1:]
        total += torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
        count += int((labels != -100).sum())
    assert torch.allclose(shared, total / count, rtol=1e-5, atol=1e-6)


def toy_model_model(tokenizer):
    from transformers import Qwen2ForCausalLM

    return Qwen2ForCausalLM(toy_model.model_config(TINY, tokenizer)).eval()


def test_tiny_builds_are_deterministic_and_load_like_any_model(tmp_path):
    from drift_lite.models import load_model, load_tokenizer

    first = toy_model.build_toy_model(TINY, tmp_path / "a")
    second = toy_model.build_toy_model(TINY, tmp_path / "b")
    assert first["final_loss"] == second["final_loss"]
    assert first["conversations"] == TINY.steps * TINY.batch_size
    weights = sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".safetensors")
    assert weights
    for name in weights:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    model = load_model(str(tmp_path / "a"), ModelConfig(name=str(tmp_path / "a")))
    tokenizer = load_tokenizer(str(tmp_path / "a"), ModelConfig(name=str(tmp_path / "a")))
    problem = toy.make_problem("add", 47, 38)
    prompt = chat.render_prompt(tokenizer, chat.initial_messages(problem))
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    assert inputs["input_ids"].shape[1] == 22  # the folder's tokenizer has the phrase tokens
    assert model.generation_config.max_new_tokens == toy_model.MAX_NEW_TOKENS  # saved with the model
    new = model.generate(**inputs, do_sample=False)[0, inputs["input_ids"].shape[1] :].tolist()
    assert 0 < len(new) <= toy_model.MAX_NEW_TOKENS
    assert tokenizer(tokenizer.decode(new), add_special_tokens=False)["input_ids"] == new


def test_every_phrase_token_occurs_in_the_corpus():
    """Each phrase the tokenizer adds is used by the scripted conversations of both families (else it is
    dead vocabulary, or a wording changed in one place only)."""
    tokenizer = build_toy_tokenizer()
    texts = tokenizer.apply_chat_template(toy_model.corpus(seed=0, n=200, per_problem=1), tokenize=False)
    seen = {t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] for t in ids}
    for phrase in PHRASE_TOKENS:
        assert tokenizer.convert_tokens_to_ids(phrase) in seen, phrase


def test_cache_key_follows_settings_and_corpus_version(monkeypatch, tmp_path):
    assert toy_model.cache_key(TINY) == toy_model.cache_key(ToyConfig(**vars(TINY)))
    assert toy_model.cache_key(TINY) != toy_model.cache_key(ToyConfig(**{**vars(TINY), "seed": 1}))
    before = toy_model.cache_key(TINY)
    monkeypatch.setattr(toy_model, "CORPUS_VERSION", "another")
    assert toy_model.cache_key(TINY) != before
    after = toy_model.cache_key(TINY)
    monkeypatch.setattr(toy_model, "BARE_PREFIX", "so: ")  # an edit to the corpus without a version bump
    assert toy_model.cache_key(TINY) != after


def test_the_shipped_build_is_the_default_build_of_this_corpus(tmp_path):
    """The package ships the default build; editing the corpus, solver, tokenizer or settings without
    rebuilding it fails here."""
    cfg = ToyConfig()
    key = toy_model.cache_key(cfg)
    rebuild = f"rebuild it: {toy_model.SHIP_COMMAND}"
    folder = toy_model.shipped_toy_model(cfg)
    assert folder is not None, f"no shipped build for key {key} in {toy_model.SHIPPED_ROOT}: {rebuild}"
    shipped = [p.name for p in toy_model.SHIPPED_ROOT.iterdir() if not p.name.startswith("__")]
    assert shipped == [key], f"stale shipped builds {shipped}: {rebuild}"
    info = json.loads((folder / toy_model.BUILD_INFO).read_text())
    assert info["cache_key"] == key and info["toy"] == dataclasses.asdict(cfg), rebuild
    assert info["version"] == toy_model.CORPUS_VERSION, rebuild
    assert info["corpus_sha256"] == toy_model.corpus_fingerprint(cfg), f"the corpus changed: {rebuild}"
    weights = folder / toy_model.WEIGHTS
    assert info["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert weights.stat().st_size < 4_000_000  # fp32, ~0.5M parameters
    from transformers import AutoTokenizer

    text = build_toy_tokenizer().apply_chat_template(toy_model.corpus(seed=1, n=3), tokenize=False)
    assert (
        AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"]
        == toy_model.folder_tokenizer()(text, add_special_tokens=False)["input_ids"]
    ), f"the shipped tokenizer differs: {rebuild}"
    # the default settings use the shipped folder and build nothing; other settings are built into the cache
    assert toy_model.ensure_toy_model(cfg, tmp_path) == folder and not list(tmp_path.iterdir())
    built = toy_model.ensure_toy_model(TINY, tmp_path)
    assert built.parent == tmp_path and (built / toy_model.BUILD_INFO).is_file()


@pytest.mark.slow
def test_a_build_from_the_seed_is_byte_identical_to_the_shipped_one(tmp_path):
    """Minutes: the default build, from its seed, gives the shipped weights bit for bit (torch threads fixed
    by toy.threads)."""
    info = toy_model.build_toy_model(ToyConfig(), tmp_path / "build")
    shipped = json.loads((toy_model.shipped_toy_model(ToyConfig()) / toy_model.BUILD_INFO).read_text())
    assert info["weights_sha256"] == shipped["weights_sha256"], f"rebuild: {toy_model.SHIP_COMMAND}"
