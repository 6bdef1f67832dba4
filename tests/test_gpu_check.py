"""scripts/gpu_check.py: the `--tiny` CPU run of the prepared GPU check (a real subprocess) writes its JSON
with the training estimate against the measurement, both engines' throughput and their rows compared; the
shape configs are the ones `drift-lite check` assumes; the check's tokenizer round-trips any sampled id."""

import importlib.util
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from drift_lite import costs
from drift_lite.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module, imported with its offline settings kept out of this process's environment."""
    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")}
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return module


def test_tiny_run_writes_the_training_and_both_engines_figures_with_rows_compared(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--out", str(out)],
        cwd=tmp_path,  # the script finds its configs and recipes from its own place
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert (
        report["tiny"] is True and report["device"] == "cpu" and report["failed"] == report["skipped"] == []
    )
    assert {"versions", "budget_s", "seconds", "shapes"} <= set(report)
    shape = report["shapes"]["tiny"]
    assert shape["model"]["config"] == "scripts/gpu_configs/tiny.json" and shape["model"]["parameters"] > 0
    training = shape["training"]
    assert training["steps"] == 2 and training["micro_batch"] == 2 and training["row_tokens"] == 96
    assert training["estimated_allocated_bytes"] == training["estimate_parts"]["total"] > 0
    for key in ("measured_peak_allocated_bytes", "measured_peak_reserved_bytes", "measured_over_estimated"):
        assert key in training and training[key] is None  # measured on CUDA only
    rollout = shape["rollout"]
    assert rollout["episodes"] == rollout["prompts"] * rollout["n_samples"] == 8
    for name in ("turn", "token"):
        engine = rollout["engines"][name]
        assert engine["engine"]["engine"] == name and engine["engine"]["fallback"] is None
        # a random model never stops early: every episode runs all its turns to max_new_tokens
        assert engine["generated_tokens"] == 8 * rollout["max_turns"] * rollout["max_new_tokens"]
        assert engine["tokens_per_s"] > 0
    assert rollout["rows_compared"] == rollout["episodes"]
    assert 0 <= rollout["rows_equal"] <= rollout["rows_compared"]
    assert len(rollout["rows_differing"]) == min(10, rollout["rows_compared"] - rollout["rows_equal"])


@pytest.mark.parametrize("shape", ["qwen2.5-1.5b", "qwen2.5-3b"])
def test_the_shape_configs_are_the_architectures_check_assumes(gpu_check, shape, tmp_path):
    config, recipe, hub_id = gpu_check.SHAPES[shape]
    (tmp_path / "config.json").write_text((gpu_check.CONFIGS / config).read_text())
    assert costs.arch_for(str(tmp_path)) == costs.KNOWN_ARCHS[hub_id]
    assert load_recipe(str(ROOT / recipe)).model.name == hub_id  # each shape trains at its own recipe's sizes


def test_the_check_tokenizer_has_the_models_vocabulary_and_round_trips_sampled_ids(gpu_check):
    tokenizer = gpu_check.shape_tokenizer(512)
    assert len(tokenizer) == 512 and tokenizer.chat_template
    rng = random.Random(1)
    special = set(tokenizer.all_special_ids)
    ids = [i for i in (rng.randrange(512) for _ in range(3000)) if i not in special]
    assert tokenizer(tokenizer.decode(ids), add_special_tokens=False)["input_ids"] == ids
