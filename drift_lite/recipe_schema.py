"""The recipe's schema: one dataclass per section, with the defaults (one place for each default).

The value checks are in recipe_checks.py; reading YAML and `key.sub=value` overrides in recipe.py.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from drift_lite.files import settings_hash


@dataclass
class ModelConfig:
    """The reference policy: `toy` (embedded default), `smollm2-135m` (PyPI), a local folder or a hub id."""

    name: str = "toy"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    quantization: str = "none"  # none | nf4
    device: str = "auto"  # auto | cpu | cuda
    trust_remote_code: bool = False  # runs the model repository's own code: announced on stderr
    allow_pickle: bool = False  # load .bin/.pt weights (unpickling can run code); safetensors only by default


@dataclass
class ToyConfig:
    """How the embedded default reference model is built (only used when model.name is `toy`)."""

    seed: int = 0
    hidden_size: int = 128
    layers: int = 2
    heads: int = 4
    kv_heads: int = 2  # grouped-query attention, as in Qwen2.5
    intermediate_size: int = 512
    steps: int = 1200  # training steps on scripted conversations in the kit's prompt format (fresh data)
    batch_size: int = 16
    per_problem: int = 4  # conversations scripted per problem (they share the prompt, computed once a batch)
    lr: float = 3e-3  # peak; linear warmup then cosine decay to 10%
    threads: int = 2  # torch threads while building (fixed, so two builds give identical weights)


@dataclass
class TaskConfig:
    """Where training prompts come from."""

    name: str = "toy"
    source: str | None = None  # hub id or local json/jsonl/csv/parquet path; None = the task's default
    size: int | None = 256  # number of prompts (None = all)
    seed: int = 0
    checker: str | None = None  # None = the task's default checker


@dataclass
class EnvConfig:
    """The multi-turn environment (release values by default)."""

    max_turns: int = 5
    format_penalty: float = -0.1
    mode: str = "simple"  # simple | full
    shots: int = 0  # worked examples shown as earlier turns (part of the masked prompt)


@dataclass
class RolloutConfig:
    """Sampling the reference policy (release: T 1.0, top_p 1.0, 512 tokens/turn, N 16)."""

    n_samples: int = 8
    max_new_tokens: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64
    # How episodes share the batch (also for evaluation; the same rows either way). `turn` (default): each
    # turn is one plain HF `generate` call over the batch, refilled between turns. `token` (opt-in
    # accelerator, drift_lite/token_engine.py): a slot is refilled as soon as its episode ends, between
    # tokens; CPU-validated only (full-attention caches; other models fall back to `turn`).
    engine: str = "turn"
    # `turn` engine, opt-in: reuse the KV of prompt prefixes already computed (the family's instruction head,
    # each episode's previous prompt) instead of prefilling them again; same tokens either way. Costs about
    # twice the KV memory of the active rows.
    prefix_cache: bool = False


@dataclass
class WeightsConfig:
    """Returns and weights: `drift` (self-normalized exp(R/beta)), `uniform` (SFT), `correct_only` (RFT)."""

    scheme: str = "drift"
    gamma: float = 0.9  # the release's scripts (its argparse default: 0.7)
    beta: float = 0.1  # the release's scripts (its argparse default: 0.2)
    repeat_coef: float = 0.5  # the release env's repetition penalty coefficient
    drop_equal_groups: bool = False  # leave out groups whose returns are all equal (no signal)
    drop_failed_groups: bool = False  # leave out groups in which no trajectory succeeded
    max_weight: float | None = None  # clip weights at this value after normalizing (iw-SFT clips at 16)


@dataclass
class TrainConfig:
    """Weighted SFT (release: lr 5e-6, constant + 10% warmup, 1 epoch, batch 128, wd 0.1, clip 1.0)."""

    finetune: str = "qlora"  # qlora (nf4 + LoRA) | lora | full
    lr: float = 5e-6
    lr_scheduler: str = "constant_with_warmup"
    warmup_ratio: float = 0.1
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 8
    grad_accum: int = 16
    weight_decay: float = 0.1
    max_grad_norm: float = 1.0
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    normalize: str = "mean"  # mean: mean_i w_i l_i | weight_sum: sum_i w_i l_i / sum_i w_i
    target: str = "last"  # last assistant message | all assistant messages
    max_length: int = 2048
    shuffle: bool = False
    group_by_length: bool = True
    save_steps: int = 50
    seed: int = 0


@dataclass
class OnlineConfig:
    """Online multi-turn RL baseline (UFO-style, critic-free group baseline + KL to the reference).

    UFO (arXiv 2507.14295): PPO, 200 steps, 8 prompt groups x 16 rollouts per step keeping the top 25% of
    groups by reward spread, actor lr 1e-6, KL 0.001, reward 0.5^(t-1) + repetition penalty, T 1.0.
    """

    iterations: int = 20  # policy updates; each plays `prompts` x `samples` fresh episodes
    prompts: int = 16  # prompt groups per iteration
    samples: int = 8  # episodes per prompt (the group of the baseline)
    reward: str = "ufo"  # ufo: 0.5^(t-1) at the first correct turn + repetition penalty | drift: the return
    keep_groups: float = 1.0  # keep this share of groups with the largest reward spread (UFO: 0.25)
    lr: float = 1e-3
    kl_coef: float = 0.001
    micro_batch: int = 16
    eval_every: int = 5  # iterations between greedy evaluations of the curve (0: never)
    eval_size: int = 64  # problems of the first eval set scored for the curve


@dataclass
class EvalSetConfig:
    """One evaluation set: a task, its source and size."""

    task: str = "toy"
    source: str | None = None
    size: int | None = 128
    checker: str | None = None
    name: str | None = None  # the `<set>` in eval-<set>.json; defaults to the task name


@dataclass
class EvalConfig:
    """Multi-turn evaluation (release: greedy)."""

    sets: list[EvalSetConfig] = field(default_factory=lambda: [EvalSetConfig()])
    # turns per evaluation episode; null: env.max_turns (single-turn methods train on 1-turn rollouts and are
    # still evaluated over 5 turns)
    max_turns: int | None = None
    greedy: bool = True
    temperature: float = 1.0
    top_p: float = 1.0
    repeats: int = 1
    max_new_tokens: int = 512
    batch_size: int = 64


@dataclass
class ReportConfig:
    """What the report shows."""

    plots: bool = True


@dataclass
class Recipe:
    """One run: recipe → rollouts → weights → training → evaluation → report."""

    name: str = "run"
    seed: int = 0
    # weighted_sft: DRIFT and its SFT baselines (rollout -> weight -> train); online_rl: the online multi-turn
    # RL baseline (the current policy plays, a group-baseline policy gradient updates it)
    algorithm: str = "weighted_sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    toy: ToyConfig = field(default_factory=ToyConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    weights: WeightsConfig = field(default_factory=WeightsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    online: OnlineConfig = field(default_factory=OnlineConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    def fingerprint(self, *sections: str) -> str:
        """A short hash of the named sections (all when none): what a step's outputs depend on."""
        data = self.to_dict()
        picked = {s: data[s] for s in sections} if sections else data
        return settings_hash(picked)
