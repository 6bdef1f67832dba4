"""`drift-lite check`: every shipped recipe passes it, the architecture table and the memory formulas hold."""

import re
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from drift_lite import plan
from drift_lite.cli import main
from drift_lite.recipe import ToyConfig, load_recipe

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted(ROOT.glob("recipes/**/*.yaml"))
PAPER_3B = ROOT / "recipes" / "paper" / "qwen2.5-3b-metamathqa.yaml"


@pytest.fixture
def offline(monkeypatch):
    """No hub: the plan uses the shipped fixtures; relative data paths resolve from the project root."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)


def run_check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_paper_recipes_exist():
    names = {p.name for p in RECIPES if p.parent.name == "paper"}
    assert {
        "qwen2.5-1.5b-metamathqa.yaml",
        "qwen2.5-3b-metamathqa.yaml",
        "qwen2.5-7b-metamathqa.yaml",
        "qwen2.5-3b-extra-evals.yaml",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_passes_check(offline, capsys, path):
    code, out, err = run_check(capsys, str(path))
    assert code == 0, err
    assert out.startswith(f"recipe '{load_recipe(path).name}': valid")
    assert "peak" in out and "training" in out and "rollout" in out and "evaluation" in out


def test_offline_check_says_the_fixtures_stand_in(offline, capsys):
    code, out, _ = run_check(capsys, str(PAPER_3B))
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("train prompts:"))
    assert "256 of metamathqa" in line  # planned at the recipe's size, not the fixture's
    assert "offline" in line and "data/fixtures/metamathqa.json stood in" in line
    evals = [x for x in out.splitlines() if x.startswith("eval set ")]
    names = [x.split()[2].rstrip(":") for x in evals]
    assert names == ["math500", "hendrycks_math", "theoremqa", "gpqa_diamond", "mmlu_redux", "mmlu_pro"]
    assert "4,096 trajectories" in out and "32 optimizer steps" in out


def _printed_gib(out: str, phase: str) -> float:
    match = re.search(rf"^  {phase} \(.*\): ([\d.]+) GiB", out, re.M)
    assert match, out
    return float(match.group(1))


def test_3b_memory_estimate_is_printed_and_sane(offline, capsys):
    code, out, _ = run_check(capsys, str(PAPER_3B))
    assert code == 0
    train = _printed_gib(out, "training")
    assert "micro-batch 4 x 3040 tokens, checkpointed" in out
    assert 4 < train < 24
    for phase in ("rollout", "evaluation"):
        assert 4 < _printed_gib(out, phase) < 22.35  # what a 24 GB card offers
    recipe = load_recipe(PAPER_3B)
    assert train == pytest.approx(plan.make_plan(recipe).peak("training") / plan.GIB, abs=0.05)


@pytest.mark.parametrize("key", ["train.batch_size", "rollout.batch_size", "eval.batch_size"])
def test_memory_grows_with_batch_size(offline, key):
    phase = {"train": "training", "rollout": "rollout", "eval": "evaluation"}[key.split(".")[0]]
    peaks = [plan.make_plan(load_recipe(PAPER_3B, [f"{key}={b}"])).peak(phase) for b in (1, 2, 4, 8)]
    assert all(a < b for a, b in zip(peaks, peaks[1:])), peaks
    static = plan.make_plan(load_recipe(PAPER_3B)).memory[phase][
        "weights" if phase != "training" else "nf4 weights"
    ]
    assert peaks[0] > static  # the batch-dependent part is on top of the weights


@pytest.mark.parametrize(
    "path, phase, gb",
    [
        ("qwen2.5-1.5b-metamathqa.yaml", "training", 12),
        ("qwen2.5-1.5b-metamathqa.yaml", "rollout", 12),
        ("qwen2.5-1.5b-metamathqa.yaml", "evaluation", 12),
        ("qwen2.5-7b-metamathqa.yaml", "training", 24),
        ("qwen2.5-7b-metamathqa.yaml", "rollout", 24),
        ("qwen2.5-7b-metamathqa.yaml", "evaluation", 24),
    ],
)
def test_variants_fit_their_gpu_class_with_margin(offline, path, phase, gb):
    peak = plan.make_plan(load_recipe(ROOT / "recipes" / "paper" / path)).peak(phase)
    assert peak < 0.9 * gb * 1e9, f"{path} {phase}: {peak / plan.GIB:.1f} GiB"


def test_qlora_parts_by_hand():
    """The 3B parts, computed here from the published config without the module's helpers."""
    recipe = load_recipe(PAPER_3B)
    parts = plan.training_memory(
        plan.KNOWN_ARCHS["Qwen/Qwen2.5-3B-Instruct"], recipe, 3040, checkpointing=True
    )
    h, kv, i, layers, vocab = 2048, 256, 11008, 36, 151936
    linear = layers * (2 * h * h + 2 * h * kv + 3 * h * i)
    assert parts["nf4 weights"] == pytest.approx(linear * (4 + 8 / 64 + 32 / 64 / 256) / 8)
    assert parts["fp32 embeddings/norms"] == pytest.approx(4 * (vocab * h + layers * (3 * h + 2 * kv) + h))
    lora = layers * 16 * ((h + h) * 2 + (h + kv) * 2)
    assert lora == 7_372_800 and parts["LoRA, grads, AdamW"] == 16 * lora
    assert parts["layer inputs"] == layers * 4 * 3040 * h * 4  # fp32 residual stream, one per layer
    assert parts["logits"] == 3 * 4 * 513 * vocab * 4  # scored positions only: 512 tokens + eos per row
    expected = sum(v for k, v in parts.items() if k not in ("total", "recomputed layer"))
    assert parts["recomputed layer"] < parts["logits"] and parts["total"] == pytest.approx(expected)


def test_kv_cache_and_decoding_by_hand(offline):
    recipe = load_recipe(PAPER_3B)
    arch = plan.KNOWN_ARCHS["Qwen/Qwen2.5-3B-Instruct"]
    assert arch.kv_bytes_per_token(2) == 2 * 36 * 2 * 128 * 2
    lens = plan.lengths(recipe, 512)
    assert (lens.prompt, lens.context) == (400 + 4 * (512 + 20), 400 + 4 * (512 + 20) + 512)
    parts = plan.generation_memory(arch, recipe.model, 32, lens)
    assert parts["decoding"] == pytest.approx(32 * lens.context * 36_864 * (1 + 1 / 36))


# (all, non-embedding) parameters as the model cards print them (in B, last digit +-1), and SmolLM2 as
# measured on the GGUF-loaded model (DESIGN.md, 134.5 M)
PUBLISHED_PARAMETERS = {
    "Qwen/Qwen2.5-0.5B-Instruct": (0.49e9, 0.36e9),
    "Qwen/Qwen2.5-1.5B-Instruct": (1.54e9, 1.31e9),
    "Qwen/Qwen2.5-3B-Instruct": (3.09e9, 2.77e9),
    "Qwen/Qwen2.5-7B-Instruct": (7.61e9, 6.53e9),
    "smollm2-135m": (134.5e6, None),
}


@pytest.mark.parametrize("name", sorted(plan.KNOWN_ARCHS))
def test_known_architectures_match_published_counts(name):
    a = plan.KNOWN_ARCHS[name]
    total, non_embedding = PUBLISHED_PARAMETERS[name]
    unit = 0.01e9 if total > 1e8 and name.startswith("Qwen/") else 0.1e6
    assert a.total_params() == pytest.approx(total, abs=unit)
    if non_embedding is not None:
        assert a.total_params() - a.embedding_params() == pytest.approx(non_embedding, abs=unit)


def _meta_counts(config) -> tuple[int, int]:
    """(all parameters, projection weights) of the transformers model for `config`, without memory."""
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    linear = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head")
    )
    return total, linear


@pytest.mark.parametrize("name", [n for n in plan.KNOWN_ARCHS if n.startswith("Qwen/")])
def test_formulas_match_transformers_qwen2(name):
    a = plan.KNOWN_ARCHS[name]
    config = Qwen2Config(
        vocab_size=a.vocab,
        hidden_size=a.hidden,
        intermediate_size=a.intermediate,
        num_hidden_layers=a.layers,
        num_attention_heads=a.heads,
        num_key_value_heads=a.kv_heads,
        tie_word_embeddings=a.tied,
    )
    assert _meta_counts(config) == (a.total_params(), a.linear_params())


def test_toy_architecture_follows_the_toy_settings():
    from drift_lite.toy_model import folder_tokenizer, model_config

    cfg = ToyConfig(hidden_size=64, layers=3, heads=4, kv_heads=1, intermediate_size=200)
    arch = plan.arch_for("toy", cfg)
    assert (arch.layers, arch.hidden, arch.intermediate, arch.heads, arch.kv_heads) == (3, 64, 200, 4, 1)
    assert _meta_counts(model_config(cfg, folder_tokenizer())) == (arch.total_params(), arch.linear_params())


def test_local_model_folder_is_read_from_config_json(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, '
        '"num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, '
        '"tie_word_embeddings": true}'
    )
    assert plan.arch_for(str(tmp_path)) == plan.KNOWN_ARCHS["smollm2-135m"]


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("drift-lite: error: ") and "Traceback" not in err
    return err


def test_a_typo_exits_2_with_one_line(offline, capsys, tmp_path):
    text = PAPER_3B.read_text().replace("  n_samples: 16", "  n_sample: 16")
    (tmp_path / "typo.yaml").write_text(text)
    err = _one_line_error(*run_check(capsys, str(tmp_path / "typo.yaml")))
    assert "rollout.n_sample" in err and "did you mean 'rollout.n_samples'" in err


def test_a_bad_override_exits_2_with_one_line(offline, capsys):
    err = _one_line_error(*run_check(capsys, str(PAPER_3B), "train.batch_size=four"))
    assert "train.batch_size" in err


def test_a_missing_local_data_file_exits_2_with_one_line(offline, capsys):
    err = _one_line_error(*run_check(capsys, str(PAPER_3B), "task.source=data/no-such-file.jsonl"))
    assert "data/no-such-file.jsonl" in err


def test_an_eval_set_without_a_source_exits_2_even_offline(offline, capsys):
    # MTU-Bench has no hub default: the fixture must not hide that a run would fail
    err = _one_line_error(*run_check(capsys, str(PAPER_3B), "eval.sets=[{task: mtu_bench}]"))
    assert "mtu_bench" in err


def test_an_unknown_model_exits_2_with_one_line(offline, capsys):
    err = _one_line_error(*run_check(capsys, str(PAPER_3B), "model.name=org/unknown-model"))
    assert "org/unknown-model" in err


@pytest.mark.slow
def test_activation_coefficients_match_saved_tensors(tmp_path):
    """The (14h + 3I + T) elements per token and layer of the training estimate, measured again: the bytes
    autograd saves for one more decoder layer of an nf4 + LoRA Qwen2 (CPU, fp32 activations: upcast)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from drift_lite.models import disable_cpu_repacking

    hidden, inter, batch, seq = 256, 1376, 2, 256

    def saved_bytes(layers: int) -> int:
        config = Qwen2Config(
            vocab_size=512,
            hidden_size=hidden,
            intermediate_size=inter,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            tie_word_embeddings=True,
        )
        torch.manual_seed(0)
        Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp_path / str(layers))
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
        model = AutoModelForCausalLM.from_pretrained(
            tmp_path / str(layers), dtype=torch.bfloat16, quantization_config=quant, device_map={"": "cpu"}
        )
        disable_cpu_repacking(model)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        lora = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.05, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]
        )
        model = get_peft_model(model, lora).train()
        storages: dict[int, int] = {}

        def pack(t):
            ptr = t.untyped_storage().data_ptr()
            storages[ptr] = max(storages.get(ptr, 0), t.untyped_storage().nbytes())
            return t

        ids = torch.randint(0, 512, (batch, seq))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        return sum(storages.values())

    per_token = (saved_bytes(2) - saved_bytes(1)) / (batch * seq) / 4
    print(f"saved fp32 elements per token and layer: {per_token:.0f}")
    assert per_token == pytest.approx(14 * hidden + 3 * inter + seq, rel=0.1)
