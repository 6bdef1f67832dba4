"""`drift-lite check`: validate a recipe, resolve its data and print the plan: sizes, tokens, memory, time.

The memory and time estimates come from the cost model in `costs.py` (its docstring states the formulas);
this module checks the recipe (`recipe.check_recipe`), resolves every problem source as a run would
(offline, a shipped fixture stands in for a hub dataset; a size beyond the source is planned at what the
source has, and said), measures the first prompts with the recipe's tokenizer where it is here without
network or a build (else the PROMPT_TOKENS budget, and said), and formats the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from drift_lite.costs import (
    EVAL_TURNS,
    FEEDBACK_TOKENS,
    TURN_FILL,
    TURNS,
    Arch,
    Lengths,
    arch_for,
    generation_hours,
    generation_memory,
    lengths,
    on_gpu_total,
    online_hours,
    online_memory,
    training_hours,
    training_memory,
    use_bf16,
)
from drift_lite.errors import UserError
from drift_lite.recipe import check_recipe
from drift_lite.tasks.loading import hub_offline

# Published sizes of the datasets (all rows), to plan a recipe that asks for all of them while offline.
FULL_SIZES = {
    "metamathqa": 155_000,  # MetaMathQA-395K rows whose type starts with MATH_ (75k+50k+15k+15k)
    "math500": 500,
    "hendrycks_math": 5_000,
    "gsm8k": 1_319,
    "theoremqa": 800,
    "gpqa_diamond": 198,
    "mmlu_redux": 5_700,
    "mmlu_pro": 12_032,
}


# ---------------------------------------------------------------------------------------------------------
# Data

FIXTURES = Path(__file__).resolve().parent / "data" / "fixtures"


def _hub_default(task: str) -> str | None:
    from drift_lite.tasks import choice
    from drift_lite.tasks import math as math_tasks

    spec = math_tasks.HUB.get(task) or choice.HUB.get(task)
    return spec.path if spec is not None else None


def _fixture(task: str) -> Path | None:
    found = sorted(
        p for p in FIXTURES.glob(f"{task}.*") if p.suffix in (".json", ".jsonl", ".csv", ".parquet")
    )
    return found[0] if found else None


@dataclass
class Resolved:
    """A task's problems as checked here, and how many a real run would use."""

    planned: int  # problems a run would use
    loaded: int  # problems parsed here
    where: str
    note: str = ""  # the size asked for exceeds what the source has
    sample: list = field(default_factory=list, repr=False)  # the first problems, for prompt lengths


def resolve_problems(
    task: str, split: str, source: str | None, size: int | None, seed: int, key: str = "task.size"
) -> Resolved:
    """Load a task's problems; offline, a hub dataset is replaced by the shipped fixture (and says so).

    A `size` beyond what the source has is planned as the rollout runs it: with every problem there is (the
    note says so); a generated task refuses it, as the rollout does. `key` names the size in messages.
    """
    from drift_lite.tasks import SYNTHETIC, load_problems
    from drift_lite.tasks.loading import is_local

    def shrunk(have: int, where: str) -> str:
        return f"{key} {size:,} > {have:,} problems in {where}: using {have:,}" if (size or 0) > have else ""

    # the hub dataset a run would read: None for local files, toy tasks and tasks without a hub default
    hub = _hub_default(task) if source is None else None if is_local(source) else source
    if task not in SYNTHETIC and hub is not None and hub_offline():
        fixture = _fixture(task)
        if fixture is None:
            raise UserError(f"task '{task}': offline (HF_HUB_OFFLINE) and no fixture in {FIXTURES}")
        problems = load_problems(task, split, str(fixture), size, seed)
        n, full = len(problems), FULL_SIZES.get(task)
        if full is None:
            planned = size if size is not None else n
        else:
            planned = full if size is None else min(size, full)
        note = f"hub {hub}; offline, so its fixture {fixture.relative_to(FIXTURES.parent.parent)} stood in"
        where = f"{note} ({n} problems parsed)"
        return Resolved(planned, n, where, shrunk(full, f"hub {hub}") if full else "", problems[:MEASURED])
    try:
        problems = load_problems(task, split, source, size, seed)
    except UserError as exc:
        if task in SYNTHETIC:  # the only refusal of a generated task: more problems than its split has
            raise UserError(f"key '{key}': {size:,} problems asked; {exc}") from None
        raise
    where = source or ("generated" if task in SYNTHETIC else f"hub {hub}")
    note = shrunk(len(problems), where)
    return Resolved(len(problems), len(problems), where, note, problems[:MEASURED])


# ---------------------------------------------------------------------------------------------------------
# Prompt lengths, measured with the recipe's tokenizer where it is here

MEASURED = 256  # first prompts rendered and tokenized per problem set


def _cached_hub_tokenizer(name: str):
    """The tokenizer of hub model `name` from the local Hugging Face cache, or None (nothing downloaded)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):  # what transformers raises for a model that is not in the cache
        return None


def prompt_tokenizer(model) -> tuple[object | None, str]:
    """The tokenizer a run would use, when it is here without network or a model build, and its label; else
    None and why. Never runs a model folder's own code (`trust_remote_code`)."""
    import dataclasses

    from drift_lite import models

    if model.name == "toy":  # the same ids as the built toy model's folder tokenizer, without the build
        from drift_lite.toy_tokenizer import build_toy_tokenizer

        return build_toy_tokenizer(), "the toy tokenizer"
    if model.name == models.SMOLLM2_NAME:
        path = models.cache_root() / models.SMOLLM2_DIR
        if not (path / models._COMPLETE).exists():
            return None, f"{model.name} is converted from its GGUF on the first run"
    else:
        try:
            path = Path(models.resolve_model_path(model, None))  # a local folder (it exists) or a hub id
        except UserError:
            if model.name.startswith(("./", "../", "/", "~")):
                raise  # a local path that does not exist: a run would fail on it too
            path = Path(model.name)  # a hub id offline and not cached: the plan assumes prompt lengths
    if not path.is_dir():
        found = _cached_hub_tokenizer(model.name)
        if found is None:
            return None, f"the tokenizer of {model.name} is not in the local Hugging Face cache"
        if found.chat_template is None:
            raise UserError(
                f"model {model.name}: its tokenizer has no chat template (a chat model is needed)"
            )
        return found, f"the tokenizer of {model.name} (local Hugging Face cache)"
    try:
        return models.load_tokenizer(str(path), dataclasses.replace(model, trust_remote_code=False)), (
            f"the tokenizer of {path}"
        )
    except UserError:
        if not model.trust_remote_code:
            raise  # a run would fail to load it too
        return (
            None,
            f"the tokenizer of {path} needs its own code (trust_remote_code), which check does not run",
        )


def prompt_lengths(tokenizer, problems: list, recipe, max_turns: int) -> list[int]:
    """Tokens of each problem's first prompt as an episode renders it (worked examples included)."""
    from drift_lite.chat import initial_messages, render_prompt
    from drift_lite.rollouts import load_shots

    shots = load_shots(recipe)
    texts = [
        render_prompt(tokenizer, initial_messages(p, recipe.env.mode, max_turns, shots(p))) for p in problems
    ]
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []


# ---------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Measured:
    """Tokens of the first prompts (system, worked examples, problem, chat template, `<think>` prefill)."""

    tokenizer: str
    train: list[int]
    eval: list[int]

    @property
    def train_longest(self) -> int:
        """The longest measured training prompt."""
        return max(self.train)

    @property
    def train_mean(self) -> int:
        """The mean measured training prompt."""
        return round(sum(self.train) / len(self.train))

    @property
    def eval_longest(self) -> int:
        """The longest measured evaluation prompt (all sets)."""
        return max(self.eval)

    @property
    def eval_mean(self) -> int:
        """The mean measured evaluation prompt (all sets)."""
        return round(sum(self.eval) / len(self.eval))


@dataclass
class Plan:
    """Everything `check` prints, as numbers (GPU totals include fragmentation and CUDA context)."""

    arch: Arch
    gpu: bool
    train_set: Resolved
    eval_sets: list[tuple[str, Resolved]]
    trajectories: int
    generated: tuple[float, float, int]  # expected low, expected high, at most
    optimizer_steps: int
    train_seq: int
    rollout_lengths: Lengths
    eval_lengths: Lengths
    memory: dict[str, dict[str, float]]  # phase -> parts, with `total` as allocated
    hours: dict[str, tuple[float, float]]  # phase -> (low, high); empty on a CPU
    measured: Measured | None  # first-prompt lengths; None: the tokenizer is not here (costs.PROMPT_TOKENS)
    tokenizer: str  # which tokenizer measured them, or why none did
    bf16: bool = False  # whether weighted-SFT training runs under bf16 autocast (costs.use_bf16)

    def peak(self, phase: str) -> float:
        """Estimated peak bytes of a phase (`training`, `rollout`, `evaluation`) as a GPU reports it."""
        parts = self.memory[phase]
        return on_gpu_total(parts) if self.gpu else parts["total"]


def uses_gpu(model) -> bool:
    """Whether a run would use CUDA: `cuda`, or `auto` on a machine with a CUDA device."""
    if model.device != "auto":
        return model.device == "cuda"
    import torch

    return torch.cuda.is_available()


def make_plan(recipe, tokenizer: tuple[object | None, str] | None = None) -> Plan:
    """Validate the recipe, resolve its data, and estimate tokens, memory and time.

    `tokenizer`: (tokenizer or None, label) for the prompt lengths; default `prompt_tokenizer(recipe.model)`.
    """
    check_recipe(recipe)  # load_recipe checked it already; a Recipe built in code has not been
    m, r, tr, ev = recipe.model, recipe.rollout, recipe.train, recipe.eval
    arch = arch_for(m.name, recipe.toy)
    gpu = uses_gpu(m)
    train_set = resolve_problems(
        recipe.task.name, "train", recipe.task.source, recipe.task.size, recipe.task.seed
    )
    eval_sets = [
        (
            s.name or s.task,
            resolve_problems(s.task, "eval", s.source, s.size, recipe.task.seed, f"eval.sets[{i}].size"),
        )
        for i, s in enumerate(ev.sets)
    ]
    eval_turns = ev.max_turns if ev.max_turns is not None else recipe.env.max_turns
    tok, label = tokenizer if tokenizer is not None else prompt_tokenizer(m)
    measured = None
    if tok is not None:
        train_lens = prompt_lengths(tok, train_set.sample, recipe, recipe.env.max_turns)
        eval_lens = [n for _, s in eval_sets for n in prompt_lengths(tok, s.sample, recipe, eval_turns)]
        measured = Measured(label, train_lens, eval_lens)
    else:  # the worked examples are still built, so a recipe whose tasks have none fails here as in a run
        from drift_lite.rollouts import load_shots

        shots = load_shots(recipe)
        for found in [train_set, *(s for _, s in eval_sets)]:
            shots(found.sample[0])
    online = recipe.algorithm == "online_rl"
    o = recipe.online
    # online RL plays prompts x samples fresh episodes with the policy at each iteration
    trajectories = o.iterations * o.prompts * o.samples if online else train_set.planned * r.n_samples
    per_traj = [TURNS[k] * TURN_FILL[k] * r.max_new_tokens for k in range(2)]
    generated = (
        trajectories * per_traj[0],
        trajectories * per_traj[1],
        trajectories * recipe.env.max_turns * r.max_new_tokens,
    )
    first = (measured.train_longest, measured.train_mean) if measured else (None, None)
    eval_first = (measured.eval_longest, measured.eval_mean) if measured else (None, None)
    roll_len = lengths(recipe, r.max_new_tokens, *first)
    eval_len = lengths(recipe, ev.max_new_tokens, *eval_first, turns=eval_turns)
    seq = min(tr.max_length, roll_len.context)
    # weighted SFT trains under bf16 autocast where training.py does (the same `use_bf16`); online RL's
    # update does not use autocast
    bf16 = not online and use_bf16(m.dtype, "cuda" if gpu else "cpu")
    if online:  # one optimizer step per iteration
        steps = o.iterations
        memory = online_memory(arch, recipe, roll_len, eval_len, checkpointing=gpu)
    else:
        steps = (
            tr.max_steps
            if tr.max_steps > 0
            else math.ceil(trajectories * tr.epochs / (tr.batch_size * tr.grad_accum))
        )
        memory = {
            "training": training_memory(arch, recipe, seq, checkpointing=gpu, bf16=bf16),
            "rollout": generation_memory(arch, m, r.batch_size, roll_len),
        }
    memory["evaluation"] = generation_memory(arch, m, ev.batch_size, eval_len)
    hours: dict[str, tuple[float, float]] = {}
    if gpu and online:  # the curve scores the first eval set's first `online.eval_size` problems
        hours = online_hours(arch, recipe, roll_len, eval_len, min(o.eval_size, eval_sets[0][1].planned), seq)
    elif gpu:
        hours["rollouts"] = generation_hours(
            arch, m, trajectories, r.batch_size, r.max_new_tokens, roll_len, True
        )
        feedback = FEEDBACK_TOKENS[recipe.env.mode]
        rows = tuple(
            min(seq, roll_len.first_mean + TURNS[k] * (TURN_FILL[k] * r.max_new_tokens + feedback))
            for k in range(2)
        )
        hours["training"] = training_hours(arch, recipe, trajectories, rows)
    if gpu:
        episodes = sum(found.planned for _, found in eval_sets) * ev.repeats
        once = generation_hours(
            arch, m, episodes, ev.batch_size, ev.max_new_tokens, eval_len, not ev.greedy, EVAL_TURNS
        )
        hours["evaluation"] = (2 * once[0], 2 * once[1])  # the reference, then the trained model
    return Plan(
        arch,
        gpu,
        train_set,
        eval_sets,
        trajectories,
        generated,
        steps,
        seq,
        roll_len,
        eval_len,
        memory,
        hours,
        measured,
        label,
        bf16,
    )
