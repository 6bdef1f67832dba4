"""The GPU cost model: the architecture table, the memory formulas by hand and against saved tensors."""

from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from drift_lite import costs
from drift_lite.recipe import ToyConfig, load_recipe

ROOT = Path(__file__).resolve().parent.parent
PAPER_3B = ROOT / "recipes" / "paper" / "qwen2.5-3b-metamathqa.yaml"


def test_qlora_parts_by_hand():
    """The 3B parts, computed here from the published config without the module's helpers."""
    recipe = load_recipe(PAPER_3B)
    parts = costs.training_memory(
        costs.KNOWN_ARCHS["Qwen/Qwen2.5-3B-Instruct"], recipe, 3040, checkpointing=True
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


def test_kv_cache_and_decoding_by_hand():
    recipe = load_recipe(PAPER_3B)
    arch = costs.KNOWN_ARCHS["Qwen/Qwen2.5-3B-Instruct"]
    assert arch.kv_bytes_per_token(2) == 2 * 36 * 2 * 128 * 2
    lens = costs.lengths(recipe, 512)
    assert (lens.prompt, lens.context) == (400 + 4 * (512 + 20), 400 + 4 * (512 + 20) + 512)
    parts = costs.generation_memory(arch, recipe.model, 32, lens)
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


@pytest.mark.parametrize("name", sorted(costs.KNOWN_ARCHS))
def test_known_architectures_match_published_counts(name):
    a = costs.KNOWN_ARCHS[name]
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


@pytest.mark.parametrize("name", [n for n in costs.KNOWN_ARCHS if n.startswith("Qwen/")])
def test_formulas_match_transformers_qwen2(name):
    a = costs.KNOWN_ARCHS[name]
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
    arch = costs.arch_for("toy", cfg)
    assert (arch.layers, arch.hidden, arch.intermediate, arch.heads, arch.kv_heads) == (3, 64, 200, 4, 1)
    assert _meta_counts(model_config(cfg, folder_tokenizer())) == (arch.total_params(), arch.linear_params())


def test_local_model_folder_is_read_from_config_json(tmp_path):
    (tmp_path / "config.json").write_text(
        '{"model_type": "llama", "num_hidden_layers": 30, "hidden_size": 576, "intermediate_size": 1536, '
        '"num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152, '
        '"tie_word_embeddings": true}'
    )
    assert costs.arch_for(str(tmp_path)) == costs.KNOWN_ARCHS["smollm2-135m"]


@pytest.mark.slow
@pytest.mark.parametrize("autocast", [False, True])
def test_activation_coefficients_match_saved_tensors(tmp_path, autocast):
    """The (14h + 3I + T) elements per token and layer of the training estimate at its bytes per element,
    measured again: the bytes autograd saves for one more decoder layer of an nf4 + LoRA Qwen2 on CPU, without
    autocast (fp32: upcast) and under bf16 autocast (as training.py trains on CUDA: NF4_AUTOCAST_BYTES)."""
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
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), hooks:
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
        return sum(storages.values())

    per_token = (saved_bytes(2) - saved_bytes(1)) / (batch * seq)
    _, kept = costs.activation_bytes("qlora", "bfloat16", bf16=autocast)
    print(f"saved bytes per token and layer (autocast {autocast}): {per_token:.0f}")
    assert per_token == pytest.approx((14 * hidden + 3 * inter + seq) * kept, rel=0.1)


def test_lengths_from_a_measured_first_prompt():
    recipe = load_recipe(PAPER_3B)
    budget = costs.lengths(recipe, 512)
    assert (budget.first, budget.first_mean) == (costs.PROMPT_TOKENS, costs.PROMPT_TOKENS)
    measured = costs.lengths(recipe, 512, 3400, 900)
    assert measured.prompt == 3400 + 4 * (512 + 20) and measured.context == measured.prompt + 512
    assert measured.mean_prompt == 900 + 4 * (512 + 20) / 2  # mean first prompt, then half the growth
    assert budget.mean_prompt == (costs.PROMPT_TOKENS + budget.prompt) / 2  # as before the measurement
    shots = costs.lengths(load_recipe(None, ["env.shots=2"]), 40)
    assert shots.first == costs.PROMPT_TOKENS + 2 * costs.SHOT_TOKENS  # the budget counts worked examples


def test_evaluation_lengths_follow_their_own_turns():
    recipe = load_recipe(PAPER_3B)
    one = costs.lengths(recipe, 512, 300, turns=1)
    assert one.prompt == 300 and one.context == 812
    assert costs.lengths(recipe, 512, 300).prompt == 300 + 4 * (512 + 20)


def test_time_grows_with_the_measured_prompt():
    recipe = load_recipe(PAPER_3B)
    arch = costs.KNOWN_ARCHS["Qwen/Qwen2.5-3B-Instruct"]
    short = costs.generation_hours(arch, recipe.model, 4096, 32, 512, costs.lengths(recipe, 512, 200), True)
    long = costs.generation_hours(arch, recipe.model, 4096, 32, 512, costs.lengths(recipe, 512, 3400), True)
    assert long[0] > short[0] and long[1] > short[1]


PAPER_ONLINE = ROOT / "recipes" / "paper" / "qwen2.5-3b-online-rl.yaml"


@pytest.mark.parametrize("kl, copies", [(0.001, 7), (0.0, 3)])
def test_online_update_logits_by_hand(kl, copies):
    """Every assistant token of a whole 5-turn episode is scored; the KL term adds the reference's copies."""
    recipe = load_recipe(PAPER_ONLINE, [f"online.kl_coef={kl}"])
    arch = costs.KNOWN_ARCHS["Qwen/Qwen2.5-3B-Instruct"]
    lens = costs.lengths(recipe, 512)
    parts = costs.online_memory(arch, recipe, lens, lens, checkpointing=True)
    update = parts["training"]
    assert update["logits"] == copies * 1 * 5 * 513 * 151936 * 4  # micro-batch 1 x 5 turns x (512 + eos)
    assert update["layer inputs"] == 36 * 1 * 3040 * 2048 * 4
    play = parts["rollout"]
    assert play["LoRA, grads, AdamW"] == 16 * 7_372_800  # the optimizer stays allocated while it plays
    # the policy generates as training holds it: embeddings fp32, so fp32 KV (twice the bf16 reference's)
    reference = costs.generation_memory(arch, recipe.model, recipe.rollout.batch_size, lens)
    assert play["decoding"] == pytest.approx(2 * reference["decoding"])
    assert play["weights"] > reference["weights"]


def test_kept_episodes_and_curve_points_by_hand():
    o = load_recipe(PAPER_ONLINE).online
    assert costs.kept_episodes(o) == 2 * 16  # ceil(0.25 x 8) groups of 16
    assert costs.curve_points(o) == 1 + 10  # iteration 0, then 20, 40, ..., 200
    odd = load_recipe(PAPER_ONLINE, ["online.iterations=50", "online.keep_groups=0.3"]).online
    assert costs.curve_points(odd) == 1 + 2 + 1  # 0, 20, 40 and the last (50)
    assert costs.kept_episodes(odd) == 3 * 16  # ceil(2.4)
    never = load_recipe(PAPER_ONLINE, ["online.eval_every=0"]).online
    assert costs.curve_points(never) == 2  # the reference and the last iteration


def test_online_hours_scale_with_iterations():
    recipe = load_recipe(PAPER_ONLINE)
    arch = costs.KNOWN_ARCHS["Qwen/Qwen2.5-3B-Instruct"]
    lens = costs.lengths(recipe, 512)
    one = costs.online_hours(arch, recipe, lens, lens, 100, 3040)
    half = costs.online_hours(
        arch, load_recipe(PAPER_ONLINE, ["online.iterations=100"]), lens, lens, 100, 3040
    )
    assert one["online rollouts"][0] == pytest.approx(2 * half["online rollouts"][0])
    assert one["online updates"][1] == pytest.approx(2 * half["online updates"][1])
    assert all(low < high for low, high in one.values())


def test_the_policy_generates_as_the_training_model_is_loaded():
    """train.finetune decides the policy's weights (models.load_model), not model.quantization."""
    toy = load_recipe(ROOT / "recipes" / "toy" / "drift.yaml")  # reference unquantized fp32, training qlora
    policy = costs.policy_model(toy.model, toy.train)
    assert (policy.quantization, policy.dtype) == ("nf4", "float32")
    paper = load_recipe(PAPER_ONLINE, ["train.finetune=lora"])
    policy = costs.policy_model(paper.model, paper.train)
    assert (policy.quantization, policy.dtype) == ("none", "bfloat16")


def test_training_and_the_estimate_share_the_bf16_rule():
    from drift_lite import training

    assert training.use_bf16 is costs.use_bf16  # one function: the estimate cannot drift from the code
    assert costs.use_bf16("bfloat16", "cuda") and not costs.use_bf16("bfloat16", "cpu")
    assert not costs.use_bf16("float16", "cuda") and not costs.use_bf16("float32", "cuda")


def test_bf16_autocast_shrinks_the_kept_tensors_not_the_fp32_residual_stream():
    recipe = load_recipe(PAPER_3B)
    arch = costs.KNOWN_ARCHS["Qwen/Qwen2.5-3B-Instruct"]
    fp32, bf16 = (
        costs.training_memory(arch, recipe, 3040, checkpointing=True, bf16=b) for b in (False, True)
    )
    h, i, tokens = 2048, 11008, 4 * 3040
    assert bf16["layer inputs"] == fp32["layer inputs"] == 36 * tokens * h * 4  # nf4 layers return fp32
    kept = tokens * (14 * h + 3 * i + 3040)
    assert fp32["recomputed layer"] == kept * 4 + 2 * tokens * h * 4
    assert bf16["recomputed layer"] == pytest.approx(kept * costs.NF4_AUTOCAST_BYTES + 2 * tokens * h * 4)
    # here the logits outweigh the recomputed layer (the peak counts the larger): the total stays
    assert bf16["recomputed layer"] < fp32["recomputed layer"] < fp32["logits"]
    assert bf16["total"] == fp32["total"]
    few = {"checkpointing": True, "scored": 4}  # few scored positions: the recomputed layer is the peak
    assert costs.training_memory(arch, recipe, 3040, bf16=True, **few)["total"] == pytest.approx(
        costs.training_memory(arch, recipe, 3040, bf16=False, **few)["total"]
        - kept * (4 - costs.NF4_AUTOCAST_BYTES)
    )
    # lora under autocast holds bf16 weights and activations; without autocast fp32 weights keep fp32
    assert costs.activation_bytes("lora", "bfloat16", bf16=True) == (2, 2)
    assert costs.activation_bytes("lora", "float32", bf16=False) == (4, 4)
    assert costs.activation_bytes("qlora", "float16", bf16=False) == (4, 4)
