"""Training examples: masking token by token, prompt cuts, step order, bad weights; shared row builders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drift_lite.chat import SYSTEM_PROMPT, render_prompt
from drift_lite.errors import UserError
from drift_lite.examples import build_examples, clip_history, read_weighted_rows, step_order, text_bound
from drift_lite.loss import IGNORE
from drift_lite.recipe import TrainConfig
from drift_lite.toy_tokenizer import build_toy_tokenizer

REPO = Path(__file__).resolve().parents[1]
RELEASE_ROWS = REPO / "tests" / "data" / "release_rows_simple.jsonl"


def conversation(a: int, b: int, turns: int) -> list[dict]:
    """System, problem, then `turns` assistant answers separated by the release's feedback."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": f"{a}+{b}=?"}]
    for t in range(turns):
        if t:
            messages.append({"role": "user", "content": "Incorrect. Please think again."})
        answer = a + b if t == turns - 1 else a + b + t + 1
        messages.append({"role": "assistant", "content": f"<think>{a}+{b}</think><answer>{answer}</answer>"})
    return messages


def make_rows(n: int, weights: list[float] | None = None) -> list[dict]:
    """n weighted rows of varied length, two per prompt."""
    rows = []
    for i in range(n):
        w = weights[i] if weights is not None else 0.25 + (i % 5) * 0.5
        rows.append(
            {
                "prompt_id": f"p{i // 2}",
                "messages": conversation(3 * i + 1, 7 * i % 50, 1 + i % 3),
                "turn_rewards": {"t1": 0.0},
                "return": 0.0,
                "weight": w,
            }
        )
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------------------
# Examples and masking


def _labeled_text(tokenizer, example) -> list[str]:
    """The labeled stretches of an example, decoded."""
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    return [tokenizer.decode(s) for s in spans]


def test_only_the_last_assistant_turn_is_labeled_token_by_token():
    tokenizer = build_toy_tokenizer()
    messages = conversation(12, 34, 3)
    (example,), _ = build_examples([{"messages": messages, "weight": 1.0}], tokenizer, TrainConfig(), "toy")
    prompt_ids = tokenizer(render_prompt(tokenizer, messages[:-1]), add_special_tokens=False)["input_ids"]
    target = messages[-1]["content"][len("<think>") :] + "<|im_end|>"
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    assert example.input_ids == prompt_ids + target_ids  # nothing after the end-of-turn token
    for i, (token, label) in enumerate(zip(example.input_ids, example.labels)):
        assert label == (IGNORE if i < len(prompt_ids) else token), i
    assert example.input_ids[-1] == tokenizer.eos_token_id
    assert _labeled_text(tokenizer, example) == [target]


def test_target_all_labels_every_assistant_turn_and_nothing_else():
    tokenizer = build_toy_tokenizer()
    messages = conversation(5, 6, 3)
    (example,), _ = build_examples(
        [{"messages": messages, "weight": 1.0}], tokenizer, TrainConfig(target="all"), "toy"
    )
    expected = [m["content"][len("<think>") :] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert _labeled_text(tokenizer, example) == expected
    # every labeled token sits after an assistant header + <think> prefill, none in system/user turns
    text = tokenizer.decode(example.input_ids)
    assert text.count("<|im_start|>assistant\n<think>") == 3
    for span in expected:
        assert "user" not in span and "system" not in span


def test_release_rows_keep_the_prefix_property():
    tokenizer = build_toy_tokenizer()
    rows = [dict(json.loads(line), weight=1.0) for line in RELEASE_ROWS.read_text().splitlines()]
    for target in ("last", "all"):
        examples, stats = build_examples(rows, tokenizer, TrainConfig(target=target), "toy")
        assert len(examples) == len(rows) and stats["truncated"] == 0
        for row, example in zip(rows, examples):
            assert _labeled_text(tokenizer, example)[-1] == row["messages"][-1]["content"][7:] + "<|im_end|>"


def test_a_template_that_breaks_the_prefix_is_an_error_naming_the_model():
    tokenizer = build_toy_tokenizer()
    # the generation prompt says "bot" but assistant turns render as "assistant": no prefix
    tokenizer.chat_template = tokenizer.chat_template.replace(
        "<|im_start|>assistant\\n", "<|im_start|>bot\\n"
    )
    with pytest.raises(UserError, match="model my-model: its chat template breaks the prompt-prefix") as err:
        build_examples(
            [{"messages": conversation(1, 2, 1), "weight": 1.0}], tokenizer, TrainConfig(), "my-model"
        )
    assert "\n" not in str(err.value)


def test_long_prompts_are_cut_from_the_left_and_the_target_kept():
    tokenizer = build_toy_tokenizer()
    messages = conversation(12, 34, 3)
    row = {"messages": messages, "weight": 1.0}
    (full,), _ = build_examples([row], tokenizer, TrainConfig(), "toy")
    n_target = sum(1 for t in full.labels if t != IGNORE)
    (cut,), stats = build_examples([row], tokenizer, TrainConfig(max_length=n_target + 5), "toy")
    assert stats["truncated"] == 1 and len(cut.input_ids) == n_target + 5
    assert cut.input_ids == full.input_ids[-(n_target + 5) :]
    assert _labeled_text(tokenizer, cut) == _labeled_text(tokenizer, full)
    dropped, stats = build_examples([row], tokenizer, TrainConfig(max_length=n_target), "toy")
    assert dropped == [] and stats["dropped_too_long"] == 1


def test_step_order_groups_by_length_only_inside_each_step():
    lengths = [5, 9, 1, 7, 3, 8, 2]
    order = step_order(lengths, 3, shuffle=False, group_by_length=True, seed=0, epoch=0)
    assert order == [1, 0, 2, 5, 3, 4, 6]
    assert step_order(lengths, 3, shuffle=False, group_by_length=False, seed=0, epoch=0) == list(range(7))
    shuffled = step_order(lengths, 3, shuffle=True, group_by_length=False, seed=1, epoch=0)
    assert sorted(shuffled) == list(range(7))
    assert shuffled == step_order(lengths, 3, shuffle=True, group_by_length=False, seed=1, epoch=0)


def _one_line_error(fn) -> str:
    with pytest.raises(UserError) as err:
        fn()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_bad_weights_are_one_line_errors(tmp_path):
    rows = make_rows(3)
    del rows[1]["weight"]
    assert "row 2: field 'weight' missing" in _one_line_error(
        lambda: read_weighted_rows(write_rows(tmp_path / "a.jsonl", rows))
    )
    rows = make_rows(3)
    rows[2]["weight"] = -0.5
    assert "row 3: field 'weight': expected a number >= 0" in _one_line_error(
        lambda: read_weighted_rows(write_rows(tmp_path / "b.jsonl", rows))
    )
    rows = make_rows(2)
    rows[0]["weight"] = "1.0"
    assert "expected a finite number" in _one_line_error(
        lambda: read_weighted_rows(write_rows(tmp_path / "c.jsonl", rows))
    )
    text = json.dumps(make_rows(1)[0]).replace('"weight": 0.25', '"weight": NaN')
    (tmp_path / "d.jsonl").write_text(text + "\n")
    _one_line_error(lambda: read_weighted_rows(tmp_path / "d.jsonl"))


# Far too long rows: measured in characters before tokenizing


class TokenizerSpy:
    """The toy tokenizer, remembering the longest text it was asked to tokenize."""

    def __init__(self) -> None:
        self.tokenizer = build_toy_tokenizer()
        self.longest = 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __call__(self, text, **kwargs):
        self.longest = max(self.longest, len(text))
        return self.tokenizer(text, **kwargs)


def test_a_last_turn_beyond_the_text_bound_is_dropped_before_tokenizing():
    spy = TokenizerSpy()
    train = TrainConfig(max_length=64)
    huge = conversation(1, 2, 1)
    huge[-1] = {"role": "assistant", "content": "<think>" + "9" * (text_bound(64) + 1)}
    rows = [{"messages": conversation(1, 2, 1), "weight": 1.0}, {"messages": huge, "weight": 1.0}]
    examples, stats = build_examples(rows, spy, train, "toy")
    assert [e.row for e in examples] == [1]
    assert stats["dropped_too_long"] == 1 and stats["dropped_long_text"] == 1
    assert spy.longest < 1000  # only the short row was tokenized


def test_a_history_beyond_the_text_bound_is_clipped_to_the_same_example(monkeypatch):
    from drift_lite import examples as examples_module

    messages = conversation(12, 34, 3)
    messages[1] = {"role": "user", "content": "x" * 50_000 + messages[1]["content"]}
    row = {"messages": messages, "weight": 1.0}
    train = TrainConfig(max_length=64)
    spy = TokenizerSpy()
    (clipped,), stats = build_examples([row], spy, train, "toy")
    assert spy.longest < text_bound(64) + 500  # the 50,000 characters were never tokenized
    assert stats["truncated"] == 1 and stats["dropped_long_text"] == 0
    monkeypatch.setattr(examples_module, "clip_history", lambda messages, bound: messages)
    (whole,), _ = build_examples([row], build_toy_tokenizer(), train, "toy")
    assert (clipped.input_ids, clipped.labels) == (whole.input_ids, whole.labels)


def test_clip_history_keeps_the_tail_and_never_cuts_an_assistant_turn():
    messages = [
        {"role": "user", "content": "a" * 10},
        {"role": "assistant", "content": "<think>" + "b" * 10},
        {"role": "user", "content": "c" * 10},
        {"role": "assistant", "content": "d" * 5},
    ]
    assert clip_history(messages, 100) is messages
    assert clip_history(messages, 20) == [{"role": "user", "content": "c" * 10}, messages[-1]]
    assert clip_history(messages, 12) == [{"role": "user", "content": "c" * 7}, messages[-1]]
    assert clip_history(messages, 16)[0]["content"] == "c" * 10  # the assistant turn at the edge: dropped
