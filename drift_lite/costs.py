"""The GPU cost model of `drift-lite check`: a decoder's architecture, peak memory and time formulas.

Memory and time are estimates from the model's architecture, not measurements: they say whether a setting
can fit a GPU before the GPU is rented. Bytes unless named otherwise; P = parameters, L = layers, h = hidden,
I = MLP width, V = vocabulary, B = batch, T = tokens of the longest sequence.

Training (QLoRA as `models.prepare_for_training` sets it up; peak of one micro-batch):
- base weights: nf4 = 4 bits + 0.127 bits of double-quantized block constants (blocks of 64 weights with an
  8-bit absmax, 256 of those with one fp32 constant) per projection weight. `prepare_model_for_kbit_training`
  upcasts the parameters nf4 leaves alone (embeddings, lm_head, norms, q/k/v biases) to fp32: 4 bytes each.
  lora: every weight in `model.dtype`; full: see the next item.
- trainable + AdamW: LoRA parameters are fp32: weight + grad + 2 moments = 16 bytes each. Full fine-tuning
  keeps all four in `model.dtype` (4 x its bytes per parameter).
- activations (`activation_bytes`): after the fp32 upcast the residual stream, and so the checkpointed layer
  inputs, is fp32 (qlora; else `model.dtype`). Weighted SFT on CUDA with `model.dtype: bfloat16` runs under
  bf16 autocast (`use_bf16`, the very function training.py sets the Trainer's `bf16` flag with). With nf4
  that saves little: bitsandbytes' 4-bit layers cast their output back to their input's dtype (fp32), so
  only the LoRA path and the casts are bf16: measured with saved-tensor hooks on CPU (test_costs), a layer
  keeps 13% fewer bytes than without autocast, counted as 3.5 bytes per element (NF4_AUTOCAST_BYTES; not
  measured on a GPU). lora under autocast holds bf16 weights: 2 bytes. Without autocast (CPU, another dtype,
  online RL's update, which does not use it) the kept tensors are in the residual stream's dtype. Tensors
  autograd keeps per token and layer: ~(14h + 3I + T) elements,
  fitted to saved-tensor-hook counts of CPU runs of small Qwen2 shapes (h 256-512, I 1024-2048, T 256-512)
  in nf4 + LoRA q/k/v/o (the T term is a per-layer mask-sized tensor of CPU attention; CUDA SDPA keeps
  less). On CUDA the kit checkpoints every decoder layer (`models.use_gradient_checkpointing`): L layer
  inputs (B*T*h) stay, and one layer's full set is rebuilt during backward. Without checkpointing (CPU) all
  L layers' sets stay.
- logits: only scored positions are projected (`logits_to_keep`), K = B x (last turn + eos); the fp32 logits,
  the saved log-softmax and its gradient make ~3 fp32 copies of K x V at the start of backward. That moment
  and the recomputed layer do not overlap, so the peak counts the larger of the two.
Generation (rollouts, evaluation; inference mode, no adapter merge):
- weights as loaded for sampling (`model.quantization`: nf4 as above but non-quantized parts in the compute
  dtype; none: all in `model.dtype`); KV cache B x context x 2·L·kv_heads·head_dim in the compute dtype; every
  turn re-reads the conversation (no cache reuse across turns), so prefill holds the KV of the longest
  prompt plus one layer's MLP intermediates (~(3I + 4h) per token) and a B·T² boolean mask; decoding then
  grows the cache to the full context. The peak counts the larger of prefill and the end of decoding.
Online RL (`algorithm: online_rl`, online.py): one model, prepared for training as above, both plays and
learns, so its AdamW state stays allocated while it generates:
- rollout (the policy = nf4 base + LoRA): generation as above with the weights as training holds them
  (embeddings, norms and lm_head upcast to fp32, so the residual stream and the KV cache are fp32) plus the
  LoRA/AdamW bytes.
- update: training as above with `online.micro_batch` rows of a whole episode, every assistant turn scored
  (K = micro_batch x max_turns x (max_new_tokens + 1)); besides the policy's 3 fp32 K x V copies, a KL term
  adds the reference's log-softmax, exp(logp), logp - ref and its gradient: 7 copies (counted, not measured).
- time per iteration: playing prompts x samples episodes with the policy; the update over the kept groups'
  episodes: 6P FLOPs per token for the policy (forward, recomputation, input gradients) + 2P for the
  reference's forward when kl_coef > 0; then the curve's greedy evaluations every `eval_every` iterations.
On a GPU the total adds 10% allocator fragmentation and 0.5 GiB of CUDA context and cuBLAS workspace.

Lengths: the first prompt (system + worked examples + instruction + problem + chat template) is measured by
`plan` with the recipe's tokenizer on the first problems (the longest for memory, the mean for time); when
the tokenizer is not here it is budgeted at PROMPT_TOKENS plus SHOT_TOKENS per worked example. Each feedback
turn is budgeted at FEEDBACK_TOKENS (more in `full` mode). Time ranges use the stated throughput assumptions
below; they are rough (a factor of ~2 either way).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from drift_lite.errors import UserError

GIB = 1024**3
NF4_BITS = 4 + 8 / 64 + 32 / (64 * 256)  # 4.127 bits per quantized weight (QLoRA double quantization)
PROMPT_TOKENS = 400  # first prompt: system + instruction + problem + template (all but the longest problems)
FEEDBACK_TOKENS = {"simple": 20, "full": 80}  # user feedback turn + chat-template tokens around it
SHOT_TOKENS = 150  # one worked example (user + assistant turn)
CUDA_FIXED = 0.5 * GIB
FRAGMENTATION = 1.10
# bytes per kept activation element of an nf4 + LoRA layer under bf16 autocast: 4 x 26508 / 30332 (bytes a
# layer saved per token with / without autocast, measured on CPU by test_costs; Qwen2 h 256, I 1376, T 256)
NF4_AUTOCAST_BYTES = 3.5

# Time assumptions: one RTX 3090/4090-class GPU (~1 TB/s, 36-83 bf16 TFLOP/s peak; a 12 GB RTX 3060 is 2-3x
# slower), HF `generate` in eager mode:
LAYER_STEP_S = (0.5e-3, 1.0e-3)  # per decoder layer per decoding step: kernel launches and Python
BANDWIDTH = (1000e9, 900e9)  # bytes/s of GPU memory
NF4_STEP_BYTES = 4.5  # bytes moved per nf4 weight per step: read nf4, write and read a bf16 copy (batch > 1)
GUMBEL_S_PER_ENTRY = (2.5e-9, 7e-9)  # CPU RNG of rollout.PerRowGumbelSampler per vocab entry (6.4 ns here)
GPU_FLOPS = (25e12, 10e12)  # effective FLOP/s of QLoRA training (~30% of bf16 peak; assumed, not measured)
PREFILL_FLOPS = (50e12, 20e12)  # effective FLOP/s of prefill (large bf16 matmuls, ~55% of peak)
TURNS = (2.0, 3.5)  # mean turns per trajectory: about half solved at turn 1, failures run all turns
EVAL_TURNS = (1.5, 3.0)  # the same when decoding greedily (more problems solved at turn 1)
TURN_FILL = (0.4, 0.9)  # mean generated tokens per turn / max_new_tokens
BATCH_STEPS = (0.8, 1.0)  # decoding steps of one batched turn / max_new_tokens (the longest row decides)


@dataclass(frozen=True)
class Arch:
    """What memory and compute depend on in a Qwen2/Llama-style decoder."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool = True  # Qwen2 has q/k/v biases, Llama does not

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads

    @property
    def kv_width(self) -> int:
        """Width of the k and v projections (grouped-query attention)."""
        return self.kv_heads * self.head_dim

    def linear_params(self) -> int:
        """Weights of the attention and MLP projections (what nf4 quantizes)."""
        h, kv = self.hidden, self.kv_width
        return self.layers * (2 * h * h + 2 * h * kv + 3 * h * self.intermediate)

    def embedding_params(self) -> int:
        """Input embedding plus an untied lm_head (never quantized)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def small_params(self) -> int:
        """Norm weights and q/k/v biases (never quantized)."""
        bias = self.hidden + 2 * self.kv_width if self.qkv_bias else 0
        return self.layers * (2 * self.hidden + bias) + self.hidden

    def total_params(self) -> int:
        """All parameters."""
        return self.linear_params() + self.embedding_params() + self.small_params()

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """KV-cache bytes per token (all layers)."""
        return 2 * self.layers * self.kv_width * dtype_bytes

    def lora_params(self, r: int, targets: list[str]) -> int:
        """LoRA parameters for rank r on the named projections."""
        h, kv, i = self.hidden, self.kv_width, self.intermediate
        fan = {"q_proj": h + h, "k_proj": h + kv, "v_proj": h + kv, "o_proj": h + h}
        fan |= {"gate_proj": h + i, "up_proj": h + i, "down_proj": i + h}
        return self.layers * sum(r * fan[t] for t in targets if t in fan)


# config.json of each model on the hub (layers, hidden, intermediate, heads, kv heads, vocab, tied), so the
# plan works offline. Parameter totals, as published: 0.49B, 1.54B, 3.09B, 7.62B, 134.5M (tests check them).
KNOWN_ARCHS = {
    "Qwen/Qwen2.5-0.5B-Instruct": Arch(24, 896, 4864, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": Arch(28, 1536, 8960, 12, 2, 151936, True),
    "Qwen/Qwen2.5-3B-Instruct": Arch(36, 2048, 11008, 16, 2, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": Arch(28, 3584, 18944, 28, 4, 152064, False),
    "smollm2-135m": Arch(30, 576, 1536, 9, 3, 49152, True, qkv_bias=False),
}


def arch_for(model_name: str, toy=None) -> Arch:
    """The architecture of a recipe's model: the toy settings, the known table, or a local config.json."""
    if model_name == "toy":
        from drift_lite.recipe import ToyConfig
        from drift_lite.toy_tokenizer import build_toy_tokenizer

        t = toy if toy is not None else ToyConfig()
        vocab = len(build_toy_tokenizer())
        return Arch(t.layers, t.hidden_size, t.intermediate_size, t.heads, t.kv_heads, vocab, True)
    if model_name in KNOWN_ARCHS:
        return KNOWN_ARCHS[model_name]
    config = Path(model_name).expanduser() / "config.json"
    if config.is_file():
        import json

        c = json.loads(config.read_text())
        try:
            return Arch(
                c["num_hidden_layers"],
                c["hidden_size"],
                c["intermediate_size"],
                c["num_attention_heads"],
                c.get("num_key_value_heads", c["num_attention_heads"]),
                c["vocab_size"],
                bool(c.get("tie_word_embeddings", False)),
                bool(c.get("attention_bias", c.get("model_type") == "qwen2")),
            )
        except KeyError as e:
            raise UserError(f"{config}: no '{e.args[0]}' (need a Llama/Qwen2-style decoder config)") from None
    known = ", ".join(["toy", *KNOWN_ARCHS])
    raise UserError(f"model '{model_name}': architecture unknown offline (known: {known}; or a local folder)")


def _dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def use_bf16(model_dtype: str, device: str) -> bool:
    """Whether weighted SFT trains under bf16 autocast (the Trainer's `bf16` flag): on CUDA when the recipe's
    dtype is bfloat16; a CPU stays fp32. training.py and `drift-lite check` both ask this function."""
    return device == "cuda" and model_dtype == "bfloat16"


def activation_bytes(finetune: str, model_dtype: str, bf16: bool) -> tuple[int, float]:
    """(residual stream, kept tensors) bytes per element in training: qlora's upcast makes the residual
    stream fp32 (else `model_dtype`); bf16 autocast shrinks the kept tensors (see the module docstring)."""
    residual = 4 if finetune == "qlora" else _dtype_bytes(model_dtype)
    if not bf16:
        return residual, residual
    return residual, NF4_AUTOCAST_BYTES if finetune == "qlora" else 2


def precision_label(finetune: str, model_dtype: str, bf16: bool) -> str:
    """What `drift-lite check` says of training's activations."""
    if bf16:
        return "bf16 autocast" + (" (nf4 layers return fp32)" if finetune == "qlora" else "")
    return f"{'float32' if finetune == 'qlora' else model_dtype} activations"


@dataclass(frozen=True)
class Lengths:
    """Token lengths the estimates use."""

    prompt: int  # longest rendered prompt of a turn (the last turn's)
    context: int  # longest prompt + one generated turn
    first: int = PROMPT_TOKENS  # longest first prompt (measured, else the budget)
    first_mean: int = PROMPT_TOKENS  # mean first prompt

    @property
    def mean_prompt(self) -> float:
        """The mean prompt over an episode's turns (first to last, in equal steps)."""
        return self.first_mean + (self.prompt - self.first) / 2


def lengths(
    recipe, max_new: int, first: int | None = None, first_mean: int | None = None, *, turns: int | None = None
) -> Lengths:
    """The longest prompt and context of an episode of `turns` turns (default `env.max_turns`) with `max_new`
    tokens per turn, from the measured first prompt (longest, mean) or else the PROMPT_TOKENS budget."""
    env = recipe.env
    if first is None:
        first = PROMPT_TOKENS + SHOT_TOKENS * env.shots
    first_mean = first if first_mean is None else first_mean
    turns = env.max_turns if turns is None else turns
    prompt = first + (turns - 1) * (max_new + FEEDBACK_TOKENS[env.mode])
    return Lengths(prompt, prompt + max_new, first, first_mean)


def training_memory(
    arch: Arch,
    recipe,
    seq_len: int,
    *,
    checkpointing: bool,
    batch: int | None = None,
    scored: int | None = None,
    logit_copies: int = 3,
    bf16: bool = False,
) -> dict[str, float]:
    """Peak memory of one training micro-batch by part, plus `total` (see the module docstring); `batch`
    (default train.batch_size), `scored` positions (default: the last turn, or all turns with target all)
    and fp32 `logit_copies` of K x V are set by the online update; `bf16`: under autocast (`use_bf16`)."""
    t, weight_bytes = recipe.train, _dtype_bytes(recipe.model.dtype)
    residual_bytes, act_bytes = activation_bytes(t.finetune, recipe.model.dtype, bf16)
    batch = t.batch_size if batch is None else batch
    unquantized = arch.embedding_params() + arch.small_params()
    parts: dict[str, float] = {}
    if t.finetune == "qlora":
        parts["nf4 weights"] = arch.linear_params() * NF4_BITS / 8
        parts["fp32 embeddings/norms"] = unquantized * 4
        parts["LoRA, grads, AdamW"] = arch.lora_params(t.lora_r, t.target_modules) * 16
    elif t.finetune == "lora":
        parts["weights"] = arch.total_params() * weight_bytes
        parts["LoRA, grads, AdamW"] = arch.lora_params(t.lora_r, t.target_modules) * 16
    else:
        parts["weights, grads, AdamW"] = arch.total_params() * weight_bytes * 4
    tokens = batch * seq_len
    layer = tokens * (14 * arch.hidden + 3 * arch.intermediate + seq_len) * act_bytes
    if checkpointing:
        parts["layer inputs"] = arch.layers * tokens * arch.hidden * residual_bytes
        # + the gradients in flight, which follow the residual stream
        parts["recomputed layer"] = layer + 2 * tokens * arch.hidden * residual_bytes
    else:
        parts["activations"] = arch.layers * layer
    if scored is None:
        scored = (
            batch * (recipe.rollout.max_new_tokens + 1) * (recipe.env.max_turns if t.target == "all" else 1)
        )
    parts["logits"] = logit_copies * min(scored, tokens) * arch.vocab * 4
    parts["total"] = total_of(parts)
    return parts


def generation_memory(arch: Arch, model, batch: int, lens: Lengths) -> dict[str, float]:
    """Peak memory of batched multi-turn generation by part, plus `total` (see the module docstring)."""
    nbytes = _dtype_bytes(model.dtype)
    unquantized = (arch.embedding_params() + arch.small_params()) * nbytes
    if model.quantization == "nf4":
        weights = arch.linear_params() * NF4_BITS / 8 + unquantized
    else:
        weights = arch.total_params() * nbytes
    kv = arch.kv_bytes_per_token(nbytes)
    prefill = batch * lens.prompt * (kv + (3 * arch.intermediate + 4 * arch.hidden) * nbytes + lens.prompt)
    decode = batch * lens.context * kv * (1 + 1 / arch.layers)  # + one layer's copy as the cache grows
    parts = {"weights": weights, "logits": 3 * batch * arch.vocab * 4, "prefill": prefill, "decoding": decode}
    parts["total"] = total_of(parts)
    return parts


# Parts that are never live together: the peak counts the larger one of each pair.
EXCLUSIVE = (("recomputed layer", "logits"), ("prefill", "decoding"))


def total_of(parts: dict[str, float]) -> float:
    """Sum of the parts, counting only the larger of each exclusive pair."""
    total = sum(v for k, v in parts.items() if k != "total")
    for a, b in EXCLUSIVE:
        if a in parts and b in parts:
            total -= min(parts[a], parts[b])
    return total


def formula(parts: dict[str, float], gpu: bool) -> str:
    """How `total_of` adds the parts up."""
    pairs = [(a, b) for a, b in EXCLUSIVE if a in parts and b in parts]
    paired = {k for pair in pairs for k in pair}
    terms = [f"{k} {size(parts[k])}" for k in parts if k not in paired and k != "total"]
    terms += [f"max({a} {size(parts[a])}, {b} {size(parts[b])})" for a, b in pairs]
    text = " + ".join(terms)
    return f"({text}) x {FRAGMENTATION:g} + {size(CUDA_FIXED)} CUDA context" if gpu else text


def size(nbytes: float) -> str:
    """Bytes as GiB (MiB below 1 GiB)."""
    return f"{nbytes / GIB:.1f} GiB" if nbytes >= GIB else f"{nbytes / 2**20:.0f} MiB"


def on_gpu_total(parts: dict[str, float]) -> float:
    """Allocated peak plus allocator fragmentation and CUDA context."""
    return parts["total"] * FRAGMENTATION + CUDA_FIXED


def gpu_class(nbytes: float) -> str:
    """The smallest common GPU memory size that holds `nbytes` (GB as sold, 1e9 bytes)."""
    for size in (8, 12, 16, 24, 48, 80):
        if nbytes <= size * 1e9 * 0.97:  # the driver keeps a little
            return f"{size} GB"
    return "more than 80 GB"


def step_seconds(arch: Arch, model, batch: int, context: float, sampled: bool) -> tuple[float, float]:
    """(fast, slow) seconds of one batched decoding step of HF `generate`."""
    nbytes = _dtype_bytes(model.dtype)
    per_param = NF4_STEP_BYTES if model.quantization == "nf4" else nbytes
    moved = arch.linear_params() * per_param + arch.vocab * arch.hidden * nbytes
    moved += batch * context * arch.kv_bytes_per_token(nbytes)
    out = []
    for k in range(2):
        s = arch.layers * LAYER_STEP_S[k] + moved / BANDWIDTH[k]
        out.append(s + (batch * arch.vocab * GUMBEL_S_PER_ENTRY[k] if sampled else 0.0))
    return out[0], out[1]


def generation_hours(
    arch: Arch, model, episodes: int, batch: int, max_new: int, lens: Lengths, sampled: bool, turns=TURNS
) -> tuple[float, float]:
    """(low, high) hours to play `episodes` multi-turn episodes, `batch` at a time: per batched turn, a
    prefill of the conversation so far (2P FLOPs per token) and the decoding steps."""
    mean_prompt = lens.mean_prompt
    step = step_seconds(arch, model, batch, mean_prompt + max_new / 2, sampled)  # mean context of a step
    out = []
    for k in range(2):
        prefill = batch * mean_prompt * 2 * arch.linear_params() / PREFILL_FLOPS[k]
        turn = prefill + BATCH_STEPS[k] * max_new * step[k]
        out.append(math.ceil(episodes * turns[k] / batch) * turn / 3600)
    return out[0], out[1]


def training_hours(arch: Arch, recipe, rows: int, row_tokens: tuple[float, float]) -> tuple[float, float]:
    """(low, high) hours of training: 6P FLOPs per token for projections (forward, recomputation, input
    gradients; 8P for full fine-tuning), 8·L·h·T for attention, 6·V·h per scored token for the lm_head."""
    t = recipe.train
    linear = 8 if t.finetune == "full" else 6
    scored = recipe.rollout.max_new_tokens + 1
    out = []
    for k in range(2):
        tokens = rows * t.epochs * row_tokens[k]
        flops = tokens * (linear * arch.linear_params() + 8 * arch.layers * arch.hidden * row_tokens[k] / 2)
        flops += rows * t.epochs * scored * 6 * arch.vocab * arch.hidden
        out.append(flops / GPU_FLOPS[k] / 3600)
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------------------
# Online RL (see the module docstring)


def policy_model(model, train):
    """The model settings online RL generates with: the training model (train.finetune decides the
    quantization, as `models.load_model` does: qlora is nf4 with the rest upcast to fp32; lora keeps
    model.dtype unquantized)."""
    if train.finetune == "qlora":
        return dataclasses.replace(model, dtype="float32", quantization="nf4")
    return dataclasses.replace(model, quantization="none")


def online_memory(
    arch: Arch, recipe, roll_len: Lengths, curve_len: Lengths, *, checkpointing: bool
) -> dict[str, dict[str, float]]:
    """Peak memory of online RL's phases by part: `rollout` (the policy plays), `training` (the update) and
    `curve evaluation` (the policy evaluated greedily at eval.batch_size)."""
    o, r, t = recipe.online, recipe.rollout, recipe.train
    optimizer = arch.lora_params(t.lora_r, t.target_modules) * 16

    def played(batch: int, lens: Lengths) -> dict[str, float]:
        parts = generation_memory(arch, policy_model(recipe.model, recipe.train), batch, lens)
        parts["LoRA, grads, AdamW"] = optimizer
        parts["total"] = total_of(parts)
        return parts

    play = played(r.batch_size, roll_len)
    scored = o.micro_batch * recipe.env.max_turns * (r.max_new_tokens + 1)
    seq = min(t.max_length, roll_len.context)
    update = training_memory(
        arch,
        recipe,
        seq,
        checkpointing=checkpointing,
        batch=o.micro_batch,
        scored=scored,
        logit_copies=7 if o.kl_coef else 3,
    )
    return {
        "rollout": play,
        "training": update,
        "curve evaluation": played(recipe.eval.batch_size, curve_len),
    }


def kept_episodes(online) -> int:
    """Episodes an update trains on: the kept groups (online_loss.keep_top_spread: ceil(share x n), >= 1)."""
    groups = (
        online.prompts
        if online.keep_groups >= 1
        else max(1, math.ceil(online.keep_groups * online.prompts - 1e-9))
    )
    return groups * online.samples


def curve_points(online) -> int:
    """Greedy evaluations of the curve: iteration 0, every `eval_every`-th iteration and the last one."""
    every = online.eval_every
    regular = online.iterations // every if every else 0
    return 1 + regular + (0 if every and online.iterations % every == 0 else 1)


def online_hours(
    arch: Arch, recipe, roll_len: Lengths, curve_len: Lengths, curve_problems: int, seq: int
) -> dict[str, tuple[float, float]]:
    """(low, high) hours of one online run's phases over all iterations: playing, updating, the curve."""
    o, r = recipe.online, recipe.rollout
    policy = policy_model(recipe.model, recipe.train)
    play = generation_hours(
        arch, policy, o.prompts * o.samples, r.batch_size, r.max_new_tokens, roll_len, True
    )
    linear = 6 + (2 if o.kl_coef else 0)
    feedback = FEEDBACK_TOKENS[recipe.env.mode]
    update = []
    for k in range(2):
        scored = TURNS[k] * TURN_FILL[k] * r.max_new_tokens
        row = min(seq, roll_len.first_mean + TURNS[k] * feedback + scored)
        flops = row * (linear * arch.linear_params() + 8 * arch.layers * arch.hidden * row / 2)
        flops += scored * linear * arch.vocab * arch.hidden
        update.append(kept_episodes(o) * flops / GPU_FLOPS[k] / 3600)
    e = recipe.eval
    curve = generation_hours(
        arch, policy, curve_problems, e.batch_size, e.max_new_tokens, curve_len, not e.greedy, EVAL_TURNS
    )
    n = o.iterations
    return {
        "online rollouts": (n * play[0], n * play[1]),
        "online updates": (n * update[0], n * update[1]),
        "curve evaluations": (curve_points(o) * curve[0], curve_points(o) * curve[1]),
    }
