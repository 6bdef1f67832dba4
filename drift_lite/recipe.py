"""Recipes: one YAML file per run, read into dataclasses, with `key.sub=value` overrides.

Unknown keys, wrong types and every value a run would fail on or misuse (`check_recipe`: choices, ranges,
finiteness, absurd sizes, names that become files, keys that contradict each other) are one-line errors that
name the file and the key, raised when the recipe is loaded, before any data or model is read.

A relative data `source` (task.source, eval.sets[i].source) is read relative to the current directory when
it exists there, else relative to the recipe file's folder when the file exists there (it is then stored
as an absolute path); otherwise it is kept as given: a hub id such as `openai/gsm8k` looks like a relative
path too, so it is only rewritten when the file actually exists.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drift_lite.errors import UserError
from drift_lite.files import atomic_writer, settings_hash
from drift_lite.recipe_files import find_recipe


@dataclass
class ModelConfig:
    """The reference policy: `toy` (embedded default), `smollm2-135m` (PyPI), a local folder or a hub id."""

    name: str = "toy"
    dtype: str = "float32"  # float32 | bfloat16 | float16
    quantization: str = "none"  # none | nf4
    device: str = "auto"  # auto | cpu | cuda
    trust_remote_code: bool = False


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


def load_recipe(path: str | Path | None, overrides: list[str] = ()) -> Recipe:
    """Read a recipe YAML (or the defaults when `path` is None) and apply `key.sub=value` overrides."""
    path = find_recipe(str(path)) if path is not None else None  # a packaged recipe by name, or a path
    where = str(path) if path is not None else "<defaults>"
    data: dict = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as e:
            raise UserError(f"{where}: cannot read recipe ({e.strerror or e})") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise UserError(f"{where}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if not isinstance(data, dict):
            raise UserError(f"{where}: expected a mapping of sections, got {type(data).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override '{item}': expected key.sub=value")
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        _set_path(data, key.strip().split("."), parsed)
    recipe = _build(Recipe, data, where, "")
    if path is not None:
        _resolve_sources(recipe, Path(path).parent)
    check_recipe(recipe, where)
    return recipe


def resolve_source(source: str | None, recipe_dir: str | Path) -> str | None:
    """A relative `source` as the recipe means it: kept when it exists relative to the current directory,
    else the recipe folder's file of that name (as an absolute path) when there is one, else kept as given
    (a hub id such as `openai/gsm8k`, or a missing file that loading reports)."""
    if not source or os.path.isabs(source) or os.path.exists(source):
        return source
    beside = Path(recipe_dir) / source
    return os.path.abspath(beside) if beside.is_file() else source


def _resolve_sources(recipe: Recipe, recipe_dir: Path) -> None:
    recipe.task.source = resolve_source(recipe.task.source, recipe_dir)
    for eval_set in recipe.eval.sets:
        eval_set.source = resolve_source(eval_set.source, recipe_dir)


def _set_path(data: dict, keys: list[str], value: object) -> None:
    for k in keys[:-1]:
        nxt = data.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            data[k] = nxt
        data = nxt
    data[keys[-1]] = value


def _build(cls: type, data: object, where: str, prefix: str):
    if not isinstance(data, dict):
        raise UserError(
            f"{where}: key '{prefix.rstrip('.') or '<top>'}': expected a mapping, got {_tname(data)}"
        )
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise UserError(f"{where}: unknown key '{full}'{hint}")
        kwargs[key] = _coerce(hints[key], value, where, full)
    return cls(**kwargs)


def _coerce(tp: object, value: object, where: str, key: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, where, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{where}: key '{key}': expected a list, got {_tname(value)}")
        return [_coerce(item_tp, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, key + ".")
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        value = _as_float(value)  # YAML 1.1 reads `1e-4` as a string
    if tp is int and isinstance(value, (float, str)):
        number = _as_float(value)  # `1e9` (a string in YAML 1.1) or `16.0`: an integer when it is whole
        if isinstance(number, float) and number.is_integer():
            value = int(number)
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise UserError(f"{where}: key '{key}': expected {tp.__name__}, got {_tname(value)} {value!r}")
    return value


def _as_float(value: int | str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _tname(value: object) -> str:
    return {dict: "mapping", list: "list", type(None): "null"}.get(type(value), type(value).__name__)


WEIGHT_SCHEMES = ("drift", "uniform", "correct_only")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_weights(w: WeightsConfig, where: str = "weights") -> WeightsConfig:
    """Raise a one-line UserError for an out-of-range weight setting; return `w` (the one check of them)."""
    rules = [
        ("scheme", w.scheme in WEIGHT_SCHEMES, f"must be one of {', '.join(WEIGHT_SCHEMES)}"),
        ("gamma", _is_real(w.gamma) and 0 < w.gamma <= 1, "must be a number in (0, 1]"),
        ("beta", _is_real(w.beta) and w.beta > 0, "must be a finite number > 0"),
        ("repeat_coef", _is_real(w.repeat_coef) and w.repeat_coef >= 0, "must be a finite number >= 0"),
        ("drop_equal_groups", isinstance(w.drop_equal_groups, bool), "must be true or false"),
        ("drop_failed_groups", isinstance(w.drop_failed_groups, bool), "must be true or false"),
        (
            "max_weight",
            w.max_weight is None or (_is_real(w.max_weight) and w.max_weight > 0),
            "must be a finite number > 0 (or null: no clipping)",
        ),
    ]
    for key, ok, rule in rules:
        if not ok:
            raise UserError(f"key '{where}.{key}': {rule}, got {getattr(w, key)!r}")
    return w


# ---------------------------------------------------------------------------------------------------------
# Every recipe value, checked before any work (`check_recipe`)

# transformers' SchedulerType values that run under the kit's TrainingArguments as they are: the others need
# `lr_scheduler_kwargs` (cosine_with_min_lr, cosine_warmup_with_min_lr, warmup_stable_decay) or an
# evaluation loop (reduce_lr_on_plateau, greedy); tests check the list against the installed transformers.
LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "inverse_sqrt",
)

CHOICES = {
    "algorithm": {"weighted_sft", "online_rl"},
    "online.reward": {"ufo", "drift"},
    "model.dtype": {"float32", "bfloat16", "float16"},
    "model.quantization": {"none", "nf4"},
    "model.device": {"auto", "cpu", "cuda"},
    "env.mode": {"simple", "full"},
    "rollout.engine": {"token", "turn"},
    "weights.scheme": set(WEIGHT_SCHEMES),
    "train.finetune": {"qlora", "lora", "full"},
    "train.lr_scheduler": set(LR_SCHEDULERS),
    "train.normalize": {"mean", "weight_sum"},
    "train.target": {"last", "all"},
}

# Names that become file and folder names (`name`, eval-set names): no separators, no `..`, not too long.
SAFE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,100}")


@dataclass(frozen=True)
class Range:
    """The allowed values of one number: integers or finite reals within bounds (inclusive unless open),
    optionally null (`null` says what null means). `why`: with both bounds, why the upper one (a value above
    it is refused with the bound and why); with one bound, a note on the values it allows."""

    lo: float | None = None
    hi: float | None = None
    real: bool = False  # a float key (else an integer)
    lo_open: bool = False
    hi_open: bool = False
    null: str | None = None
    why: str = ""

    def allows(self, v: object) -> bool:
        """Whether `v` is in the range."""
        if v is None:
            return self.null is not None
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float) if self.real else int)
            or not math.isfinite(v)
        ):
            return False
        return not self._below(v) and not self._above(v)

    def _below(self, v: float) -> bool:
        return self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo)

    def _above(self, v: float) -> bool:
        return self.hi is not None and (v >= self.hi if self.hi_open else v > self.hi)

    def rule(self, v: object = None) -> str:
        """The rule `v` breaks, as an error message states it ("<= 1024 (why)", ">= 1", "in (0, 1]")."""
        lo, hi = (None if b is None else f"{b:g}" if self.real else str(b) for b in (self.lo, self.hi))
        lo_op, hi_op = (">" if self.lo_open else ">="), ("<" if self.hi_open else "<=")
        null = f" (or null {self.null})" if self.null else ""
        why = f" ({self.why})" if self.why else ""
        kind = "a finite number " if self.real else ""
        number = _is_real(v) and (self.real or isinstance(v, int))
        if lo is not None and hi is not None:
            if self.why and number and self._above(v):
                return f"{hi_op} {hi}{why}"
            if self.why and number and self._below(v):
                return f"{kind}{lo_op} {lo}{null}"
            interval = f"{'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"
            return f"in {interval}{null}{why}"
        return f"{kind}{lo_op} {lo}{null}{why}" if lo is not None else f"{kind}{hi_op} {hi}{null}{why}"


SEED = Range(0, 2**32 - 1, why="numpy's seed range, which transformers.set_seed uses")
TOKENS = Range(1, 131_072, why="more tokens than any model the kit runs attends to")
BATCH = Range(1, 65_536, why="no GPU holds a larger batch")
PROBABILITY = Range(0, 1, real=True, lo_open=True)
MAX_TURNS = Range(1, 50, why="each turn adds a whole answer to every later prompt (the paper uses 5)")
SAMPLES = Range(1, 1024, why="episodes per prompt, 16 in the paper: more is a typo or months of GPU time")
STEP_LR = Range(0, 1, real=True, lo_open=True, why="an optimizer step moves each weight by about lr")
SIZE = Range(1, null="for all")

RANGES: dict[str, Range] = {
    "seed": SEED,
    "toy.seed": SEED,
    "toy.hidden_size": Range(2, 4096, why="the toy model is trained on a CPU (default 128)"),
    "toy.layers": Range(1, 64, why="the toy model is trained on a CPU (default 2)"),
    "toy.heads": Range(1, 256),
    "toy.kv_heads": Range(1, 256),
    "toy.intermediate_size": Range(1, 16_384, why="the toy model is trained on a CPU (default 512)"),
    "toy.steps": Range(1, 100_000, why="the toy model is trained on a CPU (default 1200)"),
    "toy.batch_size": Range(1, 1024, why="the toy model is trained on a CPU (default 16)"),
    "toy.per_problem": Range(1, 1024),
    "toy.lr": STEP_LR,
    "toy.threads": Range(1, 256, why="torch threads of the toy build"),
    "task.size": SIZE,
    "task.seed": SEED,
    "env.max_turns": MAX_TURNS,
    "env.format_penalty": Range(hi=0, real=True, why="a penalty, added to the return per answer-less turn"),
    "env.shots": Range(0, 64, why="each worked example adds a whole turn to every prompt"),
    "rollout.n_samples": SAMPLES,
    "rollout.max_new_tokens": TOKENS,
    "rollout.temperature": Range(0, real=True, lo_open=True),
    "rollout.top_p": PROBABILITY,
    "rollout.batch_size": BATCH,
    "train.lr": STEP_LR,
    "train.warmup_ratio": Range(0, 1, real=True),
    "train.epochs": Range(0, 1000, real=True),
    "train.max_steps": Range(-1, why="-1 or 0: train.epochs decides"),
    "train.batch_size": BATCH,
    "train.grad_accum": BATCH,
    "train.weight_decay": Range(0, real=True),
    "train.max_grad_norm": Range(0, real=True, why="0: no clipping"),
    "train.lora_r": Range(1, 4096),
    "train.lora_alpha": Range(1),
    "train.lora_dropout": Range(0, 1, real=True, hi_open=True),
    "train.max_length": Range(16, TOKENS.hi, why=TOKENS.why),
    "train.save_steps": Range(0, why="0: no checkpoints"),
    "train.seed": SEED,
    "online.iterations": Range(1, 100_000),
    "online.prompts": BATCH,
    "online.samples": Range(2, why="the group baseline needs two episodes"),
    "online.keep_groups": PROBABILITY,
    "online.lr": STEP_LR,
    "online.kl_coef": Range(0, real=True),
    "online.micro_batch": BATCH,
    "online.eval_every": Range(0, why="0: never"),
    "online.eval_size": Range(1),
    "eval.max_turns": Range(1, MAX_TURNS.hi, null="for env.max_turns", why=MAX_TURNS.why),
    "eval.temperature": Range(0, real=True, lo_open=True),
    "eval.top_p": PROBABILITY,
    "eval.repeats": SAMPLES,
    "eval.max_new_tokens": TOKENS,
    "eval.batch_size": BATCH,
}


def check_recipe(recipe: Recipe, where: str = "<recipe>") -> None:
    """Raise a one-line UserError naming the key for any value a run would fail on or misuse: a wrong type,
    an unknown choice, task or checker, a number out of range or not finite, an unsafe or repeated name, or
    settings that contradict each other. The one place recipe values are checked; it reads no data."""
    data = recipe.to_dict()
    _build(Recipe, data, where, "")  # types, for a recipe built in code (load_recipe built it this way)

    def fail(key: str, rule: str) -> typing.NoReturn:
        raise UserError(f"{where}: key '{key}': {rule}, got {_lookup(data, key)!r}")

    for key, allowed in CHOICES.items():
        if _lookup(data, key) not in allowed:
            fail(key, f"expected one of {sorted(allowed)}")
    try:
        check_weights(recipe.weights)
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    sets = recipe.eval.sets
    if not sets:
        fail("eval.sets", "must name at least one evaluation set")
    ranges = dict(RANGES)
    ranges.update({f"eval.sets[{i}].size": SIZE for i in range(len(sets))})
    for key, allowed in ranges.items():
        if not allowed.allows(_lookup(data, key)):
            fail(key, f"must be {allowed.rule(_lookup(data, key))}")
    _check_consistency(recipe, fail)
    _check_tasks(recipe, fail)
    _check_names(recipe, fail)


def _check_consistency(recipe: Recipe, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    """Rules between keys: the toy model's shapes, training length, LoRA targets, online RL's adapter."""
    toy, t = recipe.toy, recipe.train
    if toy.hidden_size % toy.heads:
        fail("toy.heads", f"must divide toy.hidden_size ({toy.hidden_size})")
    if (toy.hidden_size // toy.heads) % 2:
        fail("toy.heads", "must leave an even head width toy.hidden_size / toy.heads (rotary embeddings)")
    if toy.heads % toy.kv_heads:
        fail("toy.kv_heads", f"must divide toy.heads ({toy.heads})")
    if not (t.epochs > 0 or t.max_steps > 0):
        fail("train.epochs", "must be > 0 (or set train.max_steps > 0)")
    targets = t.target_modules
    if not targets:
        fail("train.target_modules", "must be a non-empty list of module names (e.g. [q_proj, v_proj])")
    for i, name in enumerate(targets):
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            fail(f"train.target_modules[{i}]", "must be a module name such as q_proj")
        if name in targets[:i]:
            fail(f"train.target_modules[{i}]", "repeats an earlier entry")
    if recipe.algorithm == "online_rl" and t.finetune == "full":
        fail(
            "train.finetune",
            "must be qlora or lora with algorithm online_rl (its KL reference is the base model with the "
            "adapter disabled)",
        )


def _check_tasks(recipe: Recipe, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    """Task and checker names exist; generated tasks take no source; worked examples exist for every task."""
    from drift_lite.tasks import CHECKERS, SYNTHETIC, task_names  # the registry: names only, no data read

    known = task_names()
    uses = [
        ("task", "name", recipe.task),
        *((f"eval.sets[{i}]", "task", s) for i, s in enumerate(recipe.eval.sets)),
    ]
    for key, field_name, use in uses:
        task = getattr(use, field_name)
        if task not in known:
            fail(f"{key}.{field_name}", f"expected a task of {known}")
        if use.checker is not None and use.checker not in CHECKERS:
            fail(f"{key}.checker", f"expected null (the task's default) or one of {sorted(CHECKERS)}")
        if task in SYNTHETIC and use.source is not None:
            fail(f"{key}.source", f"must be null: the {task} task is generated here and reads no source")
        if recipe.env.shots and task not in SYNTHETIC:
            only = " and ".join(SYNTHETIC)
            fail("env.shots", f"must be 0 with {key} task '{task}' (worked examples exist only for {only})")


def _check_names(recipe: Recipe, fail: typing.Callable[[str, str], typing.NoReturn]) -> None:
    """`name` and eval-set names become file names: safe characters, not `.`/`..`, eval sets apart."""
    rule = "must be 1-100 letters, digits, '_', '.' or '-' (it names files), not only dots"

    def safe(name: object) -> bool:
        return isinstance(name, str) and bool(SAFE_NAME.fullmatch(name)) and name.strip(".") != ""

    if not safe(recipe.name):
        fail("name", rule)
    seen: dict[str, int] = {}
    for i, s in enumerate(recipe.eval.sets):
        if s.name is not None and not safe(s.name):
            fail(f"eval.sets[{i}].name", rule)
        name = s.name or s.task
        if name in seen:
            fail(
                f"eval.sets[{i}].name",
                f"must differ from eval.sets[{seen[name]}]'s '{name}' (each set writes eval-<name>.json)",
            )
        seen[name] = i


def _lookup(data: dict, key: str) -> object:
    """The value at a dotted key such as `eval.sets[0].size`."""
    value: object = data
    for part in key.replace("[", ".").replace("]", "").split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def dump_recipe(recipe: Recipe, path: str | Path, extra: dict | None = None) -> None:
    """Write the resolved recipe as YAML (atomically), with optional extra top-level info (versions...)."""
    data = recipe.to_dict()
    text = yaml.safe_dump(data, sort_keys=False)
    if extra:
        text += "# provenance (not part of the recipe)\n" + "".join(
            f"# {line}\n" for line in yaml.safe_dump(extra, sort_keys=True).splitlines()
        )
    with atomic_writer(path) as handle:
        handle.write(text.encode("utf-8"))
