"""Multi-turn rollouts with HF `generate`: batched, continuously refilled, seeded per trajectory, resumable.

Run it from the CLI: `drift-lite rollout recipes/toy/drift.yaml --out runs/x/rollouts.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer

from drift_lite import chat
from drift_lite.env import Episode, EpisodeSettings
from drift_lite.errors import UserError
from drift_lite.tasks.base import Problem


@dataclass(frozen=True)
class Sampling:
    """How each turn is decoded: greedy, or sampled with temperature / top-p from per-trajectory seeds."""

    greedy: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 512
    seed: int = 0


def trajectory_key(seed: int, prompt_id: str, traj_idx: int) -> int:
    """A 63-bit key naming one trajectory's random stream, independent of batching and order."""
    digest = hashlib.blake2b(f"{seed}\x1f{prompt_id}\x1f{traj_idx}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def row_generator(key: int) -> torch.Generator:
    """One row's random stream: a CPU generator seeded with `key`."""
    return torch.Generator(device="cpu").manual_seed(key)


# Floats drawn at once per row (1 MiB): a whole toy turn; one token of a Qwen vocabulary.
NOISE_BLOCK_ENTRIES = 1 << 18


class GumbelNoise:
    """One row's Gumbel noise for one turn, from its own generator (`row_generator(key)`).

    The k-th `next()` is the noise of the turn's k-th token. It is drawn in blocks of up to `max_tokens`
    tokens (within NOISE_BLOCK_ENTRIES floats): a CPU generator's `rand((k, vocab))` gives the same values
    as k calls of `rand(vocab)`, so the noise is that of one draw per token, for a fraction of the calls.
    """

    def __init__(self, key: int, max_tokens: int = 1):
        self.generator = row_generator(key)
        self.max_tokens = max(1, max_tokens)
        self.block: torch.Tensor | None = None
        self.used = self.rows = 0

    def next(self, vocab: int) -> torch.Tensor:
        """The next token's noise, [vocab]."""
        if self.used == self.rows:
            self._draw(vocab)
        self.used += 1
        return self.block[self.used - 1]

    def whole_turn(self, vocab: int) -> torch.Tensor | None:
        """All `max_tokens` tokens' noise, [max_tokens, vocab], when one block holds it (else None); call it
        before any `next()`, which it does not advance."""
        if self.max_tokens * vocab > NOISE_BLOCK_ENTRIES:
            return None
        if self.block is None:
            self._draw(vocab)
        return self.block

    def _draw(self, vocab: int) -> None:
        """The next block: as many tokens' noise as fit NOISE_BLOCK_ENTRIES, up to `max_tokens`."""
        self.rows = max(1, min(self.max_tokens, NOISE_BLOCK_ENTRIES // vocab))
        uniform = torch.rand((self.rows, vocab), generator=self.generator)
        tiny = torch.finfo(torch.float32).tiny
        # -log(-log(u)), in place (the same values as out of place, without four temporaries)
        self.block = uniform.clamp_(min=tiny, max=1.0 - 1e-7).log_().neg_().log_().neg_()
        self.used = 0


class PerRowGumbelSampler(LogitsProcessor):
    """Exact sampling per row with its own generator: argmax(warped logits + Gumbel noise).

    HF `generate` draws every row from one global RNG, so a row's sample would depend on its batch mates.
    Here greedy decoding runs over logits to which each row adds noise from a generator seeded by its own
    (trajectory, turn) key; the argmax of logits plus Gumbel noise is an exact draw from the softmax.
    `noises`: the rows' streams, in batch order (the token-level engine passes its own to `add_noise`).
    """

    def __init__(
        self,
        keys: list[int],
        temperature: float,
        top_p: float,
        device: torch.device,
        max_new_tokens: int = 1,
    ):
        self.noises = [GumbelNoise(key, max_new_tokens) for key in keys]
        self.warpers = [TemperatureLogitsWarper(temperature)] if temperature != 1.0 else []
        if top_p < 1.0:
            self.warpers.append(TopPLogitsWarper(top_p))
        self.device = device

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self.add_noise(scores, self.noises)

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        """The scores as float32, after temperature and top-p."""
        scores = scores.float()
        for warp in self.warpers:
            scores = warp(None, scores)
        return scores

    def add_noise(self, scores: torch.Tensor, noises: list[GumbelNoise]) -> torch.Tensor:
        """Warped scores plus each row's next noise from `noises` (one stream per row, in row order)."""
        vocab = scores.shape[-1]
        return self.warp(scores) + torch.stack([noise.next(vocab) for noise in noises]).to(self.device)


class Prefix(NamedTuple):
    """Prompt tokens and their KV cache: [layers, 2 (keys, values), kv_heads, tokens, head_dim]."""

    ids: list[int]
    kv: torch.Tensor


class PrefixCache:
    """KV caches of prompt prefixes, reused instead of recomputed: each row's last prompt and shared heads.

    A turn's prompt extends the previous one's (the conversation only grows), and the first-turn prompts of a
    task family share a head (system prompt, worked examples, instruction). Each row starts from the longest
    cached prefix of its tokens and only the rest is prefilled. Only identical tokens are reused, so a row's
    logits equal a full recompute up to float rounding (the same size as left padding already causes).
    Memory: the active rows' prompt KV, about as much again as `generate`'s own cache of the batch.
    """

    def __init__(self, max_heads: int = 32):
        self.heads: dict[str, Prefix] = {}  # head text -> its KV, computed once (batch 1)
        self.last: dict[Hashable, Prefix] = {}  # row -> KV of its latest prompt
        self.max_heads = max_heads
        self.reused_tokens = 0

    def forget(self, row: Hashable) -> None:
        """Drop a row's cached prompt (its episode ended)."""
        self.last.pop(row, None)

    def match(
        self, model, tokenizer, ids: list[int], row: Hashable, head: str | None
    ) -> tuple[int, Prefix | None]:
        """The longest reusable prefix of `ids` (all but one token at most): the row's last prompt or head."""
        best_n, best = 0, None
        for prefix in (self.last.get(row), self._head(model, tokenizer, head)):
            n = min(common_prefix(prefix.ids, ids), len(ids) - 1) if prefix is not None else 0
            if n > best_n:
                best_n, best = n, prefix
        self.reused_tokens += best_n
        return best_n, best

    def _head(self, model, tokenizer, text: str | None) -> Prefix | None:
        if not text:
            return None
        if text not in self.heads:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            cache = DynamicCache(config=model.config)
            with torch.inference_mode():
                model(input_ids=torch.tensor([ids], device=model.device), cache=cache)
            if len(self.heads) >= self.max_heads:
                del self.heads[next(iter(self.heads))]  # the oldest
            self.heads[text] = Prefix(ids, _stack(cache, len(ids))[:, :, 0])
        return self.heads[text]


def supports_prefix_cache(model) -> bool:
    """True when every layer's cache is a plain growing one (no sliding window), so prompt KV can be kept."""
    return all(type(layer) is DynamicLayer for layer in DynamicCache(config=model.config).layers)


def generate_turn(
    model,
    tokenizer,
    prompts: list[str],
    keys: list[int],
    sampling: Sampling,
    cache: PrefixCache | None = None,
    rows: list[Hashable] | None = None,
    heads: list[str | None] | None = None,
) -> tuple[list[str], list[int]]:
    """Generate one turn for a batch of rendered prompts; returns texts and token counts.

    Without `cache`: left padded. With it, row i reuses the longest cached prefix of its tokens (the last
    prompt of `rows[i]`, or the shared head text `heads[i]`): inputs are [padding][cached][padding][rest],
    positions follow the attention mask (HF counts them from its cumsum), and each row's prompt KV is kept
    for its next turn.
    """
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    if cache is None:
        batch = tokenizer(
            prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
        )
        inputs = {k: v.to(model.device) for k, v in batch.items()}
    else:
        ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
        rows = rows if rows is not None else [None] * len(ids)
        heads = heads if heads is not None else [None] * len(ids)
        reuse = [cache.match(model, tokenizer, x, r, h) for x, r, h in zip(ids, rows, heads)]
        inputs = _cached_inputs(model, ids, reuse, pad)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=sampling.max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        return_dict_in_generate=True,
    )
    processors = LogitsProcessorList()
    if not sampling.greedy:
        processors.append(
            PerRowGumbelSampler(
                keys, sampling.temperature, sampling.top_p, model.device, sampling.max_new_tokens
            )
        )
    with torch.inference_mode(), plain_generation_config(model):
        out = model.generate(**inputs, generation_config=config, logits_processor=processors)
    width = inputs["input_ids"].shape[1]
    if cache is not None:
        kv = _stack(out.cache, width)
        for i, (x, row) in enumerate(zip(ids, rows)):
            if row is not None:
                at = inputs["attention_mask"][i].nonzero().squeeze(1)
                cache.last[row] = Prefix(x, kv[:, :, i].index_select(3, at))
    texts, counts = [], []
    for ids in out.sequences[:, width:].tolist():
        n = next((i + 1 for i, t in enumerate(ids) if t in eos), len(ids))
        counts.append(n)
        texts.append(tokenizer.decode(ids[:n], skip_special_tokens=True))
    return texts, counts


@contextlib.contextmanager
def plain_generation_config(model):
    """Hide the checkpoint's own `generation_config` while `generate` runs: `generate` fills every setting we
    leave unset from it, and a repetition penalty, n-gram ban or minimum length set there would change the
    tokens (in greedy decoding too) unlike the recipe and the token-level engine, which apply none."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PeftModel's model
    saved = base.generation_config
    base.generation_config = GenerationConfig()
    try:
        yield
    finally:
        base.generation_config = saved


def _cached_inputs(model, ids: list[list[int]], reuse: list[tuple[int, Prefix | None]], pad: int) -> dict:
    """`generate` inputs: [pad][cached prefix][pad][rest] per row, and the cached prefixes as one cache."""
    width_c = max(n for n, _ in reuse)
    width_s = max(len(x) - n for x, (n, _) in zip(ids, reuse))
    input_ids = torch.full((len(ids), width_c + width_s), pad, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, (x, (n, _)) in enumerate(zip(ids, reuse)):
        input_ids[i, width_c - n : width_c] = torch.tensor(x[:n], dtype=torch.long)
        input_ids[i, width_c + width_s - (len(x) - n) :] = torch.tensor(x[n:], dtype=torch.long)
        mask[i, width_c - n : width_c] = 1
        mask[i, width_c + width_s - (len(x) - n) :] = 1
    inputs = {"input_ids": input_ids.to(model.device), "attention_mask": mask.to(model.device)}
    if width_c:
        kv0 = next(p.kv for n, p in reuse if n)
        kv = kv0.new_zeros(*kv0.shape[:2], len(ids), kv0.shape[2], width_c, kv0.shape[4])
        for i, (n, prefix) in enumerate(reuse):
            if n:
                kv[:, :, i, :, width_c - n :] = prefix.kv[:, :, :, :n]
        inputs["cache"] = DynamicCache([(layer[0], layer[1]) for layer in kv], config=model.config)
    return inputs


def _stack(cache: DynamicCache, width: int) -> torch.Tensor:
    """The first `width` positions of a cache as one tensor [layers, 2, batch, kv_heads, width, head_dim]."""
    return torch.stack(
        [torch.stack((layer.keys[:, :, :width], layer.values[:, :, :width])) for layer in cache.layers]
    )


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists."""
    if b[: len(a)] == a:
        return len(a)
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def eos_ids(model, tokenizer) -> list[int]:
    """The token ids that end a turn: the tokenizer's eos and the model's generation-config eos ids."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    extra = getattr(model.generation_config, "eos_token_id", None)
    for i in [extra] if isinstance(extra, int) else extra or []:
        if i not in ids:
            ids.append(i)
    if not ids:
        raise UserError("the tokenizer has no eos token: cannot tell where a turn ends")
    return ids


@dataclass
class Job:
    """One trajectory to play: its episode and the key of its random stream."""

    episode: Episode
    key: int
    traj_idx: int


def turn_key(job: Job) -> int:
    """The key of the random stream of a job's next turn: its trajectory key and the turn number."""
    return (job.key + 1_000_003 * job.episode.turn) % (1 << 63)


def run_episodes(
    model,
    tokenizer,
    jobs: Iterable[Job],
    sampling: Sampling,
    batch_size: int,
    on_done: Callable[[Job], None],
    on_turn: Callable[[int, int], None] | None = None,
    prefix_cache: bool = True,
) -> dict:
    """Play episodes to the end, `batch_size` at a time; a finished episode's slot is refilled at once.

    Every active episode generates its next turn in one batched `generate`; the ones that finish leave and
    queued ones take their places (continuous batching at the episode level). `on_done(job)` is called as each
    episode ends; `on_turn(episodes, tokens)` after each batched turn. With `prefix_cache`, prompt prefixes
    already computed (an episode's previous prompt, its family's head) are reused instead of prefilled again.
    """
    model.eval()
    cache = PrefixCache() if prefix_cache and supports_prefix_cache(model) else None
    queue = deque(jobs)
    active: list[Job] = []
    tokens = turns = 0
    while queue or active:
        while queue and len(active) < batch_size:
            active.append(queue.popleft())
        prompts = [chat.render_prompt(tokenizer, job.episode.messages) for job in active]
        keys = [turn_key(job) for job in active]
        rows = [id(job) for job in active]
        heads = [_head(p, job) for p, job in zip(prompts, active)]
        texts, counts = generate_turn(model, tokenizer, prompts, keys, sampling, cache, rows, heads)
        still = []
        for job, text in zip(active, texts):
            if job.episode.step(text):
                on_done(job)
                if cache is not None:
                    cache.forget(id(job))
            else:
                still.append(job)
        tokens += sum(counts)
        turns += len(active)
        if on_turn is not None:
            on_turn(len(active), sum(counts))
        active = still
    return {
        "generated_tokens": tokens,
        "turns": turns,
        "cached_prompt_tokens": cache.reused_tokens if cache is not None else 0,
    }


def play_episodes(
    model,
    tokenizer,
    jobs: Iterable[Job],
    sampling: Sampling,
    batch_size: int,
    on_done: Callable[[Job], None],
    on_turn: Callable[[int, int], None] | None = None,
    engine: str = "token",
    prefix_cache: bool = True,
) -> dict:
    """Play episodes with an engine (the same rows either way): `token`, slots refilled between tokens
    (`token_batching.run_episodes_streaming`, for the models it can play); else `turn`, one `generate` per
    turn (`run_episodes`, with `prefix_cache`)."""
    if engine == "token":
        from drift_lite.token_batching import run_episodes_streaming  # it builds on this module

        stats = run_episodes_streaming(model, tokenizer, jobs, sampling, batch_size, on_done, on_turn)
        if stats is not None:
            return stats
    return run_episodes(
        model, tokenizer, jobs, sampling, batch_size, on_done, on_turn, prefix_cache=prefix_cache
    )


def _head(prompt: str, job: Job) -> str | None:
    """A first turn's head, the prompt before the problem (system, examples, instruction): the same for
    a family's problems. Any prefix would be exact (only identical tokens are reused); this one is shared."""
    question = job.episode.problem.question
    at = prompt.rfind(question) if job.episode.turn == 0 and question else -1
    return prompt[:at] if at > 0 else None


Shots = list[tuple[Problem, str]]  # worked examples: (problem, assistant content) pairs


def make_jobs(
    problems: list[Problem],
    n_samples: int,
    seed: int,
    checker,
    settings: EpisodeSettings,
    shots: Shots | Callable[[Problem], Shots] = (),
    feedback_for=None,
) -> list[Job]:
    """N jobs per problem, in problem order; `shots`: one list for every problem, or a function of it."""
    jobs = []
    for p in problems:
        examples = shots(p) if callable(shots) else list(shots)
        jobs += [
            Job(Episode(p, checker, settings, examples, feedback_for), trajectory_key(seed, p.id, i), i)
            for i in range(n_samples)
        ]
    return jobs


class GroupWriter:
    """Collects finished trajectories and appends whole prompt groups, in prompt order, to a JSONL file.

    Writing in prompt order (not completion order) makes the file independent of batching, so an
    interrupted and resumed run writes the same bytes as an uninterrupted one.
    """

    def __init__(self, path: Path, order: list[str], n_samples: int, row_extra: Callable[[Job], dict]):
        from drift_lite.records import RowAppender

        self.appender = RowAppender(path)
        self.order = order
        self.next = 0
        self.n = n_samples
        self.pending: dict[str, list] = {}
        self.row_extra = row_extra
        self.groups_written = 0

    def add(self, job: Job) -> None:
        """Record a finished trajectory; flush every group that is now complete and next in order."""
        rows = self.pending.setdefault(job.episode.problem.id, [None] * self.n)
        rows[job.traj_idx] = job.episode.to_row(**self.row_extra(job))
        while self.next < len(self.order):
            group = self.pending.get(self.order[self.next])
            if group is None or any(r is None for r in group):
                break
            self.appender.append_group(group)
            del self.pending[self.order[self.next]]
            self.next += 1
            self.groups_written += 1

    def close(self) -> None:
        """Close the file."""
        self.appender.close()


def fingerprint_path(out_path: Path) -> Path:
    """Where the settings of a rollout file are stored."""
    return out_path.with_name(out_path.name + ".settings.json")


def rollout(recipe, out_path: str | Path, *, model=None, tokenizer=None, show_progress: bool = True) -> dict:
    """Sample `rollout.n_samples` multi-turn trajectories per training prompt into `out_path` (resumable)."""
    from drift_lite import models, records
    from drift_lite.recipe import check_recipe
    from drift_lite.tasks import checker_for, feedback_for, load_problems

    out_path = Path(out_path)
    records.check_output_path(out_path)
    check_recipe(recipe)  # load_recipe checked it already; a Recipe built in code has not been
    shots = load_shots(recipe)
    settings = rollout_settings(recipe)
    fp_path = fingerprint_path(out_path)
    problems = load_problems(
        recipe.task.name, "train", recipe.task.source, recipe.task.size, recipe.task.seed
    )
    _check_unique_ids(problems, recipe.task.name)
    n = recipe.rollout.n_samples
    resuming = out_path.exists()
    if resuming:
        _check_same_settings(out_path, settings)
    checker = checker_for(recipe.task.name, recipe.task.checker)
    env, feedback = episode_settings(recipe), feedback_for(recipe.task.name)
    jobs = make_jobs(problems, n, recipe.seed, checker, env, shots, feedback)
    if model is None:
        path = models.resolve_model_path(recipe.model, recipe.toy)
        tokenizer = models.load_tokenizer(path, recipe.model)
        model = models.load_model(path, recipe.model)
    # Every mistake that shows before sampling has been raised by now: only now touch the files.
    done_ids: set[str] = set()
    if resuming:
        done_ids = {row["prompt_id"] for row in records.read_complete_groups(out_path, n)}
    _write_json_atomic(fp_path, {"settings": settings, "complete": False})
    todo = [p for p in problems if p.id not in done_ids]
    jobs = [job for job in jobs if job.episode.problem.id not in done_ids]
    extra = {"task": recipe.task.name, "ref_model": recipe.model.name, "seed": recipe.seed}
    writer = GroupWriter(out_path, [p.id for p in todo], n, lambda job: {**extra, "traj_idx": job.traj_idx})
    sampling = Sampling(
        greedy=False,
        temperature=recipe.rollout.temperature,
        top_p=recipe.rollout.top_p,
        max_new_tokens=recipe.rollout.max_new_tokens,
        seed=recipe.seed,
    )
    bar = tqdm(
        total=len(problems), initial=len(done_ids), desc="rollout", unit="prompt", disable=not show_progress
    )
    start = time.perf_counter()
    counters = {"traj": 0, "tokens": 0}

    def on_done(job: Job) -> None:
        before = writer.groups_written
        writer.add(job)
        counters["traj"] += 1
        bar.update(writer.groups_written - before)

    def on_turn(_: int, tokens: int) -> None:
        counters["tokens"] += tokens
        elapsed = max(time.perf_counter() - start, 1e-9)
        bar.set_postfix(
            traj_s=f"{counters['traj'] / elapsed:.1f}", tok_s=f"{counters['tokens'] / elapsed:.0f}"
        )

    try:
        stats = play_episodes(
            model,
            tokenizer,
            jobs,
            sampling,
            recipe.rollout.batch_size,
            on_done,
            on_turn,
            engine=recipe.rollout.engine,
            prefix_cache=recipe.rollout.prefix_cache,
        )
    finally:
        writer.close()
        bar.close()
    seconds = time.perf_counter() - start
    summary = {
        "prompts": len(problems),
        "trajectories": len(problems) * n,
        "resumed_prompts": len(done_ids),
        "generated_tokens": stats["generated_tokens"],
        "seconds": round(seconds, 3),
        "tokens_per_s": round(stats["generated_tokens"] / max(seconds, 1e-9), 1),
    }
    _write_json_atomic(fp_path, {"settings": settings, "complete": True, "stats": summary})
    return summary


def rollout_settings(recipe) -> dict:
    """Everything a rollout file depends on (compared on resume); not the device, batch size, engine or KV
    reuse."""
    from drift_lite.models import model_identity

    data = recipe.to_dict()
    picked = {k: data[k] for k in ("task", "rollout", "seed")}
    picked["model"] = model_identity(recipe.model, recipe.toy)
    picked["env"] = env_identity(recipe)
    # Rows do not depend on their batch (per-trajectory seeds), so a run may resume with another batch size
    # or engine.
    picked["rollout"] = {
        k: v for k, v in picked["rollout"].items() if k not in ("batch_size", "engine", "prefix_cache")
    }
    return json.loads(json.dumps(picked))


def episode_settings(recipe) -> EpisodeSettings:
    """The environment's rules from a recipe."""
    return EpisodeSettings(
        max_turns=recipe.env.max_turns,
        format_penalty=recipe.env.format_penalty,
        repeat_coef=recipe.weights.repeat_coef,
        mode=recipe.env.mode,
    )


def env_identity(recipe) -> dict:
    """The environment settings rows depend on: `env`, and the repetition penalty the environment writes into
    each row's reward_details (a `weights` setting)."""
    return {**dataclasses.asdict(recipe.env), "repeat_coef": recipe.weights.repeat_coef}


def load_shots(recipe) -> Callable[[Problem], Shots]:
    """Worked examples shown as earlier turns (`env.shots`), per problem: its own task and family."""
    n = recipe.env.shots
    if n <= 0:
        return lambda problem: []
    from drift_lite.tasks import SYNTHETIC, arith, toy

    if recipe.task.name not in SYNTHETIC:
        raise UserError(
            f"env.shots: worked examples exist only for the toy and arith tasks, not '{recipe.task.name}'"
        )

    def shots_for(problem: Problem) -> Shots:
        if "toy_family" in problem.meta:
            return toy.worked_examples(problem.meta["toy_family"], n, avoid=problem)
        if problem.meta.get("task") == "arith":
            return arith.worked_examples(n, avoid=problem)
        raise UserError(
            f"env.shots: worked examples exist only for the toy and arith tasks, not '{problem.id}'"
        )

    return shots_for


def is_complete(out_path: str | Path, recipe) -> bool:
    """True when `out_path` holds a finished rollout made with this recipe's settings."""
    out_path = Path(out_path)
    meta = _read_settings(fingerprint_path(out_path))
    return (
        out_path.exists()
        and meta is not None
        and meta.get("complete")
        and meta["settings"] == rollout_settings(recipe)
    )


def _check_same_settings(out_path: Path, settings: dict) -> None:
    """Refuse to resume a file made with other settings (a one-line error; nothing is touched)."""
    fp_path = fingerprint_path(out_path)
    previous = _read_settings(fp_path)
    if previous is None:
        raise UserError(
            f"{out_path}: exists but its settings file {fp_path.name} is missing or unreadable; "
            "use another --out or delete it"
        )
    if previous.get("settings") != settings:
        changed = _changed_keys(previous.get("settings") or {}, settings)
        raise UserError(
            f"{out_path}: exists with other rollout settings ({', '.join(changed)}); "
            "use another --out or delete it"
        )


def _check_unique_ids(problems: list[Problem], task: str) -> None:
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise UserError(f"task '{task}': problem id '{p.id}' appears twice")
        seen.add(p.id)


def _read_settings(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += _changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
