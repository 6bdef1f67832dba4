"""`drift-lite check`: validate a recipe, resolve its data and print the plan: sizes, tokens, memory, time.

The memory figures are estimates from the architecture (formulas below), not measurements: they say whether a
setting can fit a GPU before the GPU is rented. Numbers in bytes unless named otherwise.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from drift_lite.errors import UserError

GIB = 1024**3


@dataclass(frozen=True)
class Arch:
    """What memory depends on in a decoder-only transformer."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden // self.heads

    def linear_params(self) -> int:
        """Parameters of the attention and MLP projections (what nf4 quantizes)."""
        kv = self.kv_heads * self.head_dim
        attn = self.hidden * self.hidden * 2 + self.hidden * kv * 2
        mlp = 3 * self.hidden * self.intermediate
        return self.layers * (attn + mlp)

    def embedding_params(self) -> int:
        """Input embedding plus an untied output head (kept in 16 bits under nf4)."""
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def lora_params(self, r: int, targets: list[str]) -> int:
        """LoRA parameters for rank r on the named projections."""
        kv = self.kv_heads * self.head_dim
        shapes = {
            "q_proj": (self.hidden, self.hidden),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (self.hidden, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }
        return self.layers * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets if t in shapes)


# Published configs (config.json on the hub) of the models the recipes name, so the plan works offline.
KNOWN_ARCHS = {
    "Qwen/Qwen2.5-0.5B-Instruct": Arch(24, 896, 4864, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": Arch(28, 1536, 8960, 12, 2, 151936, True),
    "Qwen/Qwen2.5-3B-Instruct": Arch(36, 2048, 11008, 16, 2, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": Arch(28, 3584, 18944, 28, 4, 152064, False),
    "smollm2-135m": Arch(30, 576, 1536, 9, 3, 49152, True),
}


def arch_for(model_name: str, toy=None) -> Arch:
    """The architecture of a recipe's model: known table, a local config.json, or the toy settings."""
    if model_name == "toy":
        h = toy.hidden_size if toy is not None else 128
        return Arch(toy.layers if toy is not None else 2, h, 2 * h, 4, 2, 104, True)
    if model_name in KNOWN_ARCHS:
        return KNOWN_ARCHS[model_name]
    config = Path(model_name) / "config.json"
    if config.is_file():
        c = json.loads(config.read_text())
        return Arch(
            c["num_hidden_layers"],
            c["hidden_size"],
            c["intermediate_size"],
            c["num_attention_heads"],
            c.get("num_key_value_heads", c["num_attention_heads"]),
            c["vocab_size"],
            bool(c.get("tie_word_embeddings", False)),
        )
    raise UserError(
        f"model '{model_name}': unknown architecture offline (give a local folder with config.json)"
    )


def training_memory(arch: Arch, recipe, seq_len: int) -> dict:
    """Peak GPU memory of one training micro-batch, by part (bytes).

    weights: nf4 = 4 bits + ~0.127 bits of double-quantized constants per linear parameter (QLoRA paper),
    embeddings in 16 bits; lora/full: 16-bit weights. Trainable parameters hold fp32 weight + grad + two Adam
    moments = 16 bytes each. Activations: with gradient checkpointing one hidden state per layer (2 bytes)
    plus one recomputed layer (~34·h bytes per token, Korthikanti et al.) and the fp32 logits of the batch
    (logits + their gradient: 8 bytes per vocab entry per token), which dominate for 150k-token vocabularies.
    """
    t = recipe.train
    tokens = t.batch_size * seq_len
    if t.finetune == "qlora":
        weights = arch.linear_params() * (4.127 / 8) + arch.embedding_params() * 2
    else:
        weights = (arch.linear_params() + arch.embedding_params()) * 2
    trainable = (
        arch.linear_params() + arch.embedding_params()
        if t.finetune == "full"
        else arch.lora_params(t.lora_r, t.target_modules)
    )
    optimizer = trainable * 16
    activations = tokens * arch.hidden * 2 * arch.layers + tokens * arch.hidden * 34
    logits = tokens * arch.vocab * 8
    overhead = 0.6 * GIB  # CUDA context and allocator slack
    parts = {
        "weights": weights,
        "trainable+optimizer": optimizer,
        "activations": activations,
        "logits": logits,
        "cuda overhead": overhead,
    }
    parts["total"] = sum(parts.values())
    return parts


def rollout_memory(arch: Arch, recipe, context_tokens: int) -> dict:
    """Peak GPU memory of batched generation: weights plus the KV cache of a full batch at full length."""
    weights_bytes = 2 if recipe.model.quantization == "none" else 4.127 / 8
    weights = arch.linear_params() * weights_bytes + arch.embedding_params() * 2
    kv_per_token = 2 * arch.layers * arch.kv_heads * arch.head_dim * 2
    kv = recipe.rollout.batch_size * context_tokens * kv_per_token
    logits = recipe.rollout.batch_size * arch.vocab * 4 * 2
    parts = {"weights": weights, "kv cache": kv, "logits": logits, "cuda overhead": 0.6 * GIB}
    parts["total"] = sum(parts.values())
    return parts


def _gib(x: float) -> str:
    return f"{x / GIB:.2f} GiB"


FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"
# Rough, stated assumptions for time ranges: HF `generate` tokens/s over a full batch, and training tokens/s,
# on one 24 GB consumer GPU (RTX 3090/4090 class) for a ~3B model; scaled by parameter count for others.
GPU_GEN_TOKENS_PER_S_3B = (600, 2500)
GPU_TRAIN_TOKENS_PER_S_3B = (1500, 4000)


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")


def _fixture(task: str) -> Path | None:
    found = sorted(
        p for p in FIXTURES.glob(f"{task}.*") if p.suffix in (".json", ".jsonl", ".csv", ".parquet")
    )
    return found[0] if found else None


def resolve_problems(
    task: str, split: str, source: str | None, size: int | None, seed: int
) -> tuple[list, str]:
    """Load a task's problems; offline, a hub source is replaced by the shipped fixture (and says so)."""
    from drift_lite.tasks import load_problems

    if task != "toy" and source is None and _offline():
        fixture = _fixture(task)
        if fixture is None:
            raise UserError(f"task '{task}': offline and no fixture in {FIXTURES}")
        problems = load_problems(task, split, str(fixture), size, seed)
        return (
            problems,
            f"{fixture.relative_to(FIXTURES.parent.parent)} (offline: fixture stands in for the hub)",
        )
    return load_problems(task, split, source, size, seed), source or ("generated" if task == "toy" else "hub")


def check(recipe) -> str:
    """Validate the recipe, resolve every data source, and return the printed plan."""
    from drift_lite.tasks import checker_for

    lines = [f"recipe '{recipe.name}': valid"]
    arch = arch_for(recipe.model.name, recipe.toy)
    lines.append(
        f"model: {recipe.model.name} ({recipe.model.dtype}, quantization {recipe.model.quantization}); "
        f"{arch.layers} layers, hidden {arch.hidden}, vocab {arch.vocab}, "
        f"{(arch.linear_params() + arch.embedding_params()) / 1e9:.2f} B parameters"
    )
    t = recipe.task
    problems, where = resolve_problems(t.name, "train", t.source, t.size, t.seed)
    checker_for(t.name, t.checker)
    n = recipe.rollout.n_samples
    turns, per_turn = recipe.env.max_turns, recipe.rollout.max_new_tokens
    trajectories = len(problems) * n
    most = trajectories * turns * per_turn
    lines.append(f"train prompts: {len(problems)} from {t.name}: {where}")
    lines.append(
        f"rollouts: {len(problems)} prompts x N={n} = {trajectories} trajectories; at most {turns} turns x "
        f"{per_turn} tokens = {most:,} generated tokens (expect 25-60% of that: early solves, early stops)"
    )
    for s in recipe.eval.sets:
        eval_problems, eval_where = resolve_problems(s.task, "eval", s.source, s.size, t.seed)
        checker_for(s.task, s.checker)
        lines.append(f"eval set {s.name or s.task}: {len(eval_problems)} problems from {eval_where}")
    tr = recipe.train
    batch = tr.batch_size * tr.grad_accum
    steps = tr.max_steps if tr.max_steps > 0 else max(1, round(trajectories * tr.epochs / batch))
    seq = min(tr.max_length, 400 + turns * per_turn)
    lines.append(
        f"training: {trajectories} rows, batch {tr.batch_size} x GA {tr.grad_accum} = {batch}, "
        f"{steps} optimizer steps, {tr.finetune}, sequences up to {seq} tokens"
    )
    mem_train = training_memory(arch, recipe, seq)
    mem_roll = rollout_memory(arch, recipe, seq)
    lines.append("peak GPU memory, estimated (see drift_lite/plan.py for the formulas):")
    lines.append("  training micro-batch: " + ", ".join(f"{k} {_gib(v)}" for k, v in mem_train.items()))
    lines.append("  rollout batch:        " + ", ".join(f"{k} {_gib(v)}" for k, v in mem_roll.items()))
    scale = 3.09e9 / max(arch.linear_params() + arch.embedding_params(), 1)
    gen = [r * scale for r in GPU_GEN_TOKENS_PER_S_3B]
    trn = [r * scale for r in GPU_TRAIN_TOKENS_PER_S_3B]
    expected = 0.4 * most
    train_tokens = trajectories * tr.epochs * seq * 0.6
    lines.append(
        f"time on one 24 GB GPU, rough: rollouts "
        f"{expected / gen[1] / 3600:.1f}-{expected / gen[0] / 3600:.1f} h, "
        f"training {train_tokens / trn[1] / 3600:.1f}-{train_tokens / trn[0] / 3600:.1f} h "
        f"(assumes {gen[0]:.0f}-{gen[1]:.0f} generated and {trn[0]:.0f}-{trn[1]:.0f} trained tokens/s)"
    )
    return "\n".join(lines)
