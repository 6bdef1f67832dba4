"""Training guards: non-finite training, rows of another model, unencodable text, sorted adapter_config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_examples import make_rows, write_rows
from test_models import make_tiny_model
from test_training import _one_line_error, recipe_for

from drift_lite.training import is_complete, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _nothing_written(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left in ([], [".drift-lite.lock"]), left


@pytest.mark.parametrize("case", ["infinite_lr", "overflowing_loss"])
def test_non_finite_training_stops_with_one_line_and_writes_nothing(tiny, tmp_path, case):
    weights = [1e38] * 4 if case == "overflowing_loss" else None  # finite weights whose loss overflows
    data = write_rows(tmp_path / "w.jsonl", make_rows(4, weights=weights))
    recipe = recipe_for(tiny, "train.save_steps=1", "train.max_steps=3", "train.grad_accum=1")
    if case == "infinite_lr":
        recipe.train.lr = float("inf")  # set past the recipe checks: training itself must stop
    out = tmp_path / "out"
    message = _one_line_error(lambda: train(recipe, data, out, show_progress=False))
    assert message.startswith("training stopped at step 1: ")
    assert "not finite" in message or " is inf" in message or " is nan" in message
    assert not is_complete(out)
    _nothing_written(out)


def test_rows_sampled_from_another_model_are_refused_unless_forced(tiny, tmp_path):
    rows = make_rows(4)
    for row in rows:
        row["ref_model"] = "Qwen/Qwen2.5-1.5B-Instruct"
    data = write_rows(tmp_path / "w.jsonl", rows)
    out = tmp_path / "out"
    message = _one_line_error(lambda: train(recipe_for(tiny), data, out, show_progress=False))
    assert "row 1" in message and "Qwen/Qwen2.5-1.5B-Instruct" in message and "--force" in message
    assert not out.exists()
    assert train(recipe_for(tiny), data, out, show_progress=False, force=True)["steps"] == 2

    for row in rows:  # rows of the recipe's own model (its name, as the rollout step writes it) train
        row["ref_model"] = tiny
    same = write_rows(tmp_path / "same.jsonl", rows)
    assert train(recipe_for(tiny), same, tmp_path / "same", show_progress=False)["steps"] == 2


def test_data_the_tokenizer_cannot_encode_is_refused_unless_forced(tiny, tmp_path):
    rows = make_rows(4)
    for row in rows:  # the toy tokenizer knows printable ASCII only: CJK text is all unknown tokens
        row["messages"][-1]["content"] = "<think>" + "数学题" * 20 + "</think><answer>七</answer>"
    data = write_rows(tmp_path / "w.jsonl", rows)
    out = tmp_path / "out"
    message = _one_line_error(lambda: train(recipe_for(tiny), data, out, show_progress=False))
    assert "of the text is unknown to the tokenizer" in message and "--force" in message
    assert not out.exists()
    assert train(recipe_for(tiny), data, out, show_progress=False, force=True)["steps"] == 2


def test_adapter_config_lists_target_modules_sorted(tiny, tmp_path):
    data = write_rows(tmp_path / "w.jsonl", make_rows(4))
    out = tmp_path / "out"
    recipe = recipe_for(tiny, "train.target_modules=[v_proj,q_proj,o_proj,k_proj,up_proj,gate_proj]")
    train(recipe, data, out, show_progress=False, force=True)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["target_modules"] == ["gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
