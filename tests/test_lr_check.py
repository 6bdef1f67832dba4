"""scripts/lr_check.py: one adapter per learning rate on the same rows, each with the method's objective
before and after training; a rate too small to move the adapter leaves the objective where it was."""

import importlib.util
import json
from pathlib import Path

import pytest
from test_examples import make_rows, write_rows
from test_models import make_tiny_model

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "lr_check.py"


@pytest.fixture(scope="module")
def lr_check():
    spec = importlib.util.spec_from_file_location("lr_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_large_rate_lowers_the_objective_and_a_tiny_one_does_not(tmp_path, lr_check):
    model = make_tiny_model(tmp_path / "model")
    data = write_rows(tmp_path / "w.jsonl", make_rows(8))
    overrides = [
        f"model.name={model}",
        "train.finetune=lora",
        "train.lora_dropout=0",
        "train.batch_size=4",
        "train.grad_accum=1",
        "train.epochs=3",
        "train.warmup_ratio=0",
        "train.save_steps=0",
    ]
    code = lr_check.main(
        [str(p) for p in ["toy", *overrides, "--data", data, "--out", tmp_path / "out"]]
        + ["--lr", "1e-9", "--lr", "0.02"]
    )
    assert code == 0
    results = json.loads((tmp_path / "out" / "lr-check.json").read_text())
    base = results["base_objective"]
    tiny, large = results["runs"]
    assert (tiny["lr"], large["lr"]) == (1e-9, 0.02) and tiny["steps"] == large["steps"] == 6
    assert tiny["objective"] == pytest.approx(base, rel=1e-4)  # LoRA's B starts at 0: nothing moved
    assert large["objective"] < 0.95 * base
    assert tiny["largest_lora_b"] < 1e-6 < 1e-3 < large["largest_lora_b"]
    # the objective is the method's loss over every row: recompute it from the rows and the same model
    assert base == pytest.approx(lr_check.objective(lr_check.load_recipe(None, overrides), str(data), None))
    table = (tmp_path / "out" / "lr-check.md").read_text()
    assert f"| 0.02 | 6 | {base:.4f} → {large['objective']:.4f} |" in table


def test_a_missing_data_file_is_one_line_and_exit_2(tmp_path, lr_check, capsys):
    code = lr_check.main(
        ["toy", "--data", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path), "--lr", "1e-4"]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.jsonl" in err and err.count("\n") == 1


def test_an_out_that_is_a_file_is_one_line_and_exit_2(tmp_path, lr_check, capsys):
    (tmp_path / "f").write_text("x")
    data = write_rows(tmp_path / "w.jsonl", make_rows(2))
    code = lr_check.main(["toy", "--data", str(data), "--out", str(tmp_path / "f"), "--lr", "1e-4"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / "f") in err and err.count("\n") == 1
