"""Every recipe value checked in one place, before any data or model is read: choices, ranges, finiteness,
absurd sizes, names that become files, and keys that contradict each other. Each failure is one line naming
the key (`check_recipe`); `check_weights` is also used by the weight step for settings given in code.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass

from drift_lite.errors import UserError
from drift_lite.recipe_schema import Recipe, WeightsConfig


def build_typed(cls: type, data: object, where: str, prefix: str):
    """`data` as an instance of dataclass `cls`, each value of its declared type (one-line errors)."""
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
        return build_typed(tp, value, where, key + ".")
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
    build_typed(Recipe, data, where, "")  # types, for a recipe built in code (load_recipe built it this way)

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
            only = ", ".join(SYNTHETIC)
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
