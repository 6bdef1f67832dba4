"""Weighted SFT: masking token by token, loss by hand, GA equivalence, kill -9 resume, outputs, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_models import make_tiny_model

from drift_lite.chat import SYSTEM_PROMPT, render_prompt
from drift_lite.errors import UserError
from drift_lite.recipe import Recipe, TrainConfig, load_recipe
from drift_lite.toy_tokenizer import build_toy_tokenizer
from drift_lite.train import (
    CHECKPOINT_COMPLETE,
    CHECKPOINTS,
    IGNORE,
    WeightedCollator,
    batch_loss,
    build_examples,
    is_complete,
    read_weighted_rows,
    step_order,
    train,
)

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


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def recipe_for(model: str, *overrides: str) -> Recipe:
    base = [
        f"model.name={model}",
        "train.finetune=lora",
        "train.lr=0.01",
        "train.warmup_ratio=0.0",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.max_steps=2",
        "train.save_steps=0",
        "train.lora_r=4",
        "train.lora_alpha=8",
    ]
    return load_recipe(None, base + list(overrides))


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


# ---------------------------------------------------------------------------------------------------------
# Loss


def _float_model(tiny: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    model.eval()  # no dropout in the Qwen2 config anyway; eval keeps the check exact
    return model


def _batch(rows: list[dict]) -> tuple[dict, list]:
    tokenizer = build_toy_tokenizer()
    examples, _ = build_examples(rows, tokenizer, TrainConfig(), "toy")
    features = [{"input_ids": e.input_ids, "labels": e.labels, "weight": e.weight} for e in examples]
    return WeightedCollator(tokenizer.pad_token_id)(features), examples


@pytest.mark.parametrize("normalize", ["mean", "weight_sum"])
def test_loss_equals_a_hand_computation(tiny, normalize):
    model = _float_model(tiny)
    batch, examples = _batch(make_rows(3, weights=[0.5, 2.0, 0.0]))
    assert len({len(e.input_ids) for e in examples}) > 1  # right padding is exercised
    per_row = []
    with torch.no_grad():
        for e in examples:  # each row alone, unpadded, the textbook way
            logp = torch.log_softmax(model(input_ids=torch.tensor([e.input_ids])).logits[0].double(), -1)
            terms = [
                -logp[t - 1, e.input_ids[t]] for t in range(1, len(e.input_ids)) if e.labels[t] != IGNORE
            ]
            per_row.append(sum(terms) / len(terms))
        weights = [e.weight for e in examples]
        weighted = sum(w * n for w, n in zip(weights, per_row))
        want = weighted / (len(weights) if normalize == "mean" else sum(weights))
        got = batch_loss(model, batch, normalize)
    assert abs(float(got) - float(want)) < 1e-5


def test_zero_weight_rows_contribute_zero_gradient(tiny):
    def grads(rows):
        model = _float_model(tiny)
        batch, _ = _batch(rows)
        batch_loss(model, batch).backward()
        return [p.grad.clone() for p in model.parameters()]

    rows = make_rows(2, weights=[1.0, 0.0])
    other = make_rows(3, weights=[1.0, 0.0, 0.0])
    other[1]["messages"] = other[2]["messages"]  # the zero-weight row says something else entirely
    a, b = grads(rows), grads(other[:2])
    assert any(g.abs().sum() > 0 for g in a)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)


# ---------------------------------------------------------------------------------------------------------
# Training runs


class GradCapture:
    """TrainerCallback that keeps the LoRA gradients seen at each optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, torch.Tensor]] = []

    def __getattr__(self, name):  # every other callback event: do nothing
        if name.startswith("on_"):
            return lambda *a, **k: None
        raise AttributeError(name)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
        self.steps.append(grads)


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


@pytest.mark.parametrize("normalize", ["mean", "weight_sum"])
def test_grad_accumulation_matches_one_big_batch(tiny, tmp_path, normalize):
    data = write_rows(tmp_path / "w.jsonl", make_rows(8))
    runs = {}
    for batch, accum in [(2, 2), (4, 1), (1, 4)]:
        capture = GradCapture()
        recipe = recipe_for(
            tiny,
            f"train.batch_size={batch}",
            f"train.grad_accum={accum}",
            f"train.normalize={normalize}",
            "train.max_grad_norm=0",  # no clipping: compare raw gradients
            "train.lora_dropout=0",
        )
        summary = train(
            recipe, data, tmp_path / f"out{batch}x{accum}", show_progress=False, callbacks=[capture]
        )
        runs[(batch, accum)] = (capture.steps, _adapter(tmp_path / f"out{batch}x{accum}"), summary)
    ref_grads, ref_adapter, ref_summary = runs[(4, 1)]
    assert len(ref_grads) == 2 and any(g.abs().sum() > 0 for g in ref_grads[0].values())
    for key in [(2, 2), (1, 4)]:
        grads, adapter, summary = runs[key]
        for step, ref in zip(grads, ref_grads):
            for name in ref:
                torch.testing.assert_close(step[name], ref[name], rtol=1e-4, atol=1e-7, msg=f"{key} {name}")
        for name in ref_adapter:
            # Adam divides each gradient element by its own magnitude, so float summation-order noise in
            # near-zero elements grows: compare parameters at a tolerance far below the lr (0.01) scale.
            torch.testing.assert_close(adapter[name], ref_adapter[name], rtol=1e-3, atol=1e-4)
        assert abs(summary["final_loss"] - ref_summary["final_loss"]) < 1e-4


def test_saved_adapter_loads_changes_outputs_and_records_the_run(tiny, tmp_path):
    from peft import PeftModel

    from drift_lite.models import load_model

    data = write_rows(tmp_path / "w.jsonl", make_rows(8))
    out = tmp_path / "adapter"
    recipe = recipe_for(tiny, "train.max_steps=3")
    summary = train(recipe, data, out, show_progress=False)
    assert is_complete(out) and summary["steps"] == 3 and not (out / CHECKPOINTS).exists()
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log if "loss" in e] == [1, 2, 3]
    assert (out / "recipe.yaml").exists() and (out / "tokenizer.json").exists()
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == tiny

    base = load_model(tiny, recipe.model)
    ids = torch.tensor([[5, 20, 31, 44, 60, 70]])
    with torch.no_grad():
        before = base(input_ids=ids).logits
        tuned = PeftModel.from_pretrained(base, str(out))
        after = tuned(input_ids=ids).logits
    assert not torch.allclose(before, after, atol=1e-4)

    again = train(recipe, data, out, show_progress=False)  # same settings and data: nothing to redo
    assert again["skipped"] is True


_CHILD = """
import sys, time
from transformers import TrainerCallback
from drift_lite.recipe import load_recipe
from drift_lite.train import train

class Slow(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        open(sys.argv[3] + f"/step-{state.global_step}", "w").close()
        time.sleep(0.4)

recipe = load_recipe(None, sys.argv[4:])
train(recipe, sys.argv[1], sys.argv[2], show_progress=False, callbacks=[Slow()])
"""


def test_kill_9_mid_training_then_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    data = write_rows(tmp_path / "w.jsonl", make_rows(12))
    overrides = [
        f"model.name={tiny}",
        "train.finetune=qlora",  # the default path: 4-bit base, LoRA, dropout on (so RNG state matters)
        "train.lr=0.01",
        "train.warmup_ratio=0.3",
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.max_steps=6",
        "train.save_steps=2",
        "train.lora_r=4",
        "train.lora_dropout=0.1",
        "train.shuffle=true",
    ]
    recipe = load_recipe(None, overrides)
    reference = tmp_path / "reference"
    train(recipe, data, reference, show_progress=False)

    out, marks = tmp_path / "killed", tmp_path / "marks"
    marks.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(data), str(out), str(marks), *overrides],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while not (marks / "step-3").exists():  # past checkpoint-2, before checkpoint-4
            assert child.poll() is None and time.time() < deadline, "child ended or hung before step 3"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not is_complete(out) and not (out / "adapter_model.safetensors").exists()
    assert (out / CHECKPOINTS / "checkpoint-2" / CHECKPOINT_COMPLETE).exists()
    # a checkpoint a kill cut short (no completion marker) must be ignored
    (out / CHECKPOINTS / "checkpoint-4").mkdir(exist_ok=True)

    summary = train(recipe, data, out, show_progress=False)
    assert summary["resumed_from"] == 2 and summary["steps"] == 6 and is_complete(out)
    got, want = _adapter(out), _adapter(reference)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7, msg=name)


# ---------------------------------------------------------------------------------------------------------
# Bad input


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


def test_all_zero_weights_is_nothing_to_train(tiny, tmp_path):
    data = write_rows(tmp_path / "w.jsonl", make_rows(4, weights=[0.0] * 4))
    out = tmp_path / "out"
    message = _one_line_error(lambda: train(recipe_for(tiny), data, out, show_progress=False))
    assert "nothing to train" in message and not out.exists()


def test_out_dir_from_another_base_model_is_refused_untouched(tiny, tmp_path):
    data = write_rows(tmp_path / "w.jsonl", make_rows(4))
    out = tmp_path / "out"
    out.mkdir()
    config = json.dumps({"base_model_name_or_path": "/models/some-other-base", "peft_type": "LORA"})
    (out / "adapter_config.json").write_text(config)
    (out / "adapter_model.safetensors").write_bytes(b"old weights")
    message = _one_line_error(lambda: train(recipe_for(tiny), data, out, show_progress=False))
    assert "some-other-base" in message
    assert (out / "adapter_config.json").read_text() == config
    assert (out / "adapter_model.safetensors").read_bytes() == b"old weights"
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
