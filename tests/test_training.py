"""Weighted SFT runs: GA equivalence, kill -9 resume, saved outputs, bad input."""

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
from test_examples import make_rows, write_rows
from test_models import make_tiny_model

from drift_lite.errors import UserError
from drift_lite.recipe import Recipe, load_recipe
from drift_lite.training import CHECKPOINT_COMPLETE, CHECKPOINTS, is_complete, train

REPO = Path(__file__).resolve().parents[1]


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
from drift_lite.training import train

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


_HOLDER = """
import sys, time
from drift_lite.files import exclusive_lock
with exclusive_lock(sys.argv[1], "training output"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_second_process_on_the_same_output_is_refused(tiny, tmp_path):
    data = write_rows(tmp_path / "w.jsonl", make_rows(4))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(out)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        message = _one_line_error(lambda: train(recipe_for(tiny), data, out, show_progress=False))
        assert f"pid {holder.pid}" in message
        assert sorted(p.name for p in out.iterdir()) == [".drift-lite.lock"]  # nothing of ours written
    finally:
        holder.kill()
        holder.wait()
    assert train(recipe_for(tiny), data, out, show_progress=False)["steps"] == 2  # free again


def test_bf16_autocast_only_on_cuda_with_a_bfloat16_recipe():
    from drift_lite.training import use_bf16

    assert use_bf16("bfloat16", "cuda")
    assert not use_bf16("bfloat16", "cpu")  # CPU training stays fp32
    assert not use_bf16("float32", "cuda")
