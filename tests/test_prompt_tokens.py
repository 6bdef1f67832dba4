"""Prompt tokenization from the previous prompt's last anchor: the same ids as tokenizing the whole prompt."""

from conftest import make_tiny_lm
from tokenizers import AddedToken

from drift_lite import chat, engine_token, prompt_tokens
from drift_lite.env import EpisodeSettings
from drift_lite.jobs import make_jobs
from drift_lite.prompt_tokens import PromptTokenizer, anchors
from drift_lite.sampling import Sampling
from drift_lite.tasks import load_problems
from drift_lite.tasks.base import ExactChecker
from drift_lite.toy_tokenizer import build_toy_tokenizer


def _full(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_anchors_are_the_special_tokens_no_other_added_token_shares_text_with():
    tokenizer = build_toy_tokenizer()
    safe = anchors(tokenizer)
    assert {"<|im_start|>", "<|im_end|>"} <= set(safe)
    assert "<think>" not in safe  # not special, and inside the format-rule phrase token
    tokenizer.add_tokens([AddedToken("x<|im_start|>", special=True, normalized=False)])
    tokenizer.add_tokens([AddedToken("q<|im", special=True, normalized=False)])
    safe = anchors(tokenizer)
    assert "<|im_start|>" not in safe and "<|im_end|>" not in safe  # inside one, overlapped by the other


def test_every_prompt_of_real_episodes_equals_its_whole_tokenization(monkeypatch):
    """Four-turn toy episodes played by the token engine: each prompt it tokenizes from an anchor on equals
    the whole prompt's ids, and most later prompts take that path."""
    model, tokenizer = make_tiny_lm(seed=1, layers=2)
    seen = []
    real = PromptTokenizer.encode

    def checked(self, texts, previous):
        if self not in cuts:
            cuts.append(self)
        out = real(self, texts, previous)
        seen.extend(zip(texts, out, previous))
        return out

    cuts = []  # the engine's PromptTokenizer
    monkeypatch.setattr(PromptTokenizer, "encode", checked)
    problems = load_problems("toy", "train", None, 6, 0)
    jobs = make_jobs(problems, 3, 7, ExactChecker(), EpisodeSettings(max_turns=4), [])
    engine_token.run_episodes_streaming(
        model, tokenizer, jobs, Sampling(max_new_tokens=12), 4, lambda job: None
    )
    assert all(ids == _full(tokenizer, text) for text, ids, _ in seen)
    later = sum(prev is not None for _, _, prev in seen)
    assert len(cuts) == 1 and later > 20 and cuts[0].cut >= later - 2


def test_a_prompt_that_does_not_extend_the_previous_one_is_tokenized_whole():
    tokenizer = build_toy_tokenizer()
    messages = chat.initial_messages(load_problems("toy", "train", None, 2, 0)[0])
    first = chat.render_prompt(tokenizer, messages)
    other = chat.render_prompt(tokenizer, chat.initial_messages(load_problems("toy", "train", None, 2, 0)[1]))
    prompts = PromptTokenizer(tokenizer)
    # a stale "previous" whose ids do not match its text: not used, since the text does not extend it
    out = prompts.encode([other], [(first, [5, 6, 7])])
    assert out == [_full(tokenizer, other)] and prompts.cut == 0
    # the next turn of the same conversation is cut at the previous prompt's last anchor
    turn2 = messages + [
        {"role": "assistant", "content": "<think>12</think><answer>3</answer>"},
        {"role": "user", "content": "Incorrect. Please think again."},
    ]
    second = chat.render_prompt(tokenizer, turn2)
    out = prompts.encode([second], [(first, _full(tokenizer, first))])
    assert out == [_full(tokenizer, second)] and prompts.cut == 1
    assert prompt_tokens.anchors(tokenizer)  # the toy tokenizer has anchors at all
    # the same next turn again (another trajectory that gave the same answer): its tail is memoized
    calls = []
    real_call = prompts._call
    prompts._call = lambda texts: calls.append(texts) or real_call(texts)
    out = prompts.encode([second], [(first, _full(tokenizer, first))])
    assert out == [_full(tokenizer, second)] and prompts.cut == 2 and calls == []


def test_an_added_token_that_overlaps_itself_is_no_anchor():
    """In "xxABABAyy" the text "ABA" occurs at 2 and 4, but only the first is the token: never cut there."""
    tokenizer = build_toy_tokenizer()
    tokenizer.add_tokens([AddedToken("ABA", special=True, normalized=False)])
    assert "ABA" not in anchors(tokenizer) and "<|im_start|>" in anchors(tokenizer)
