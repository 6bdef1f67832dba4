"""The rollout step: N multi-turn trajectories per training prompt into a JSONL file, written in prompt order,
resumable, with a settings fingerprint beside it (`<file>.settings.json`).

Run it from the CLI: `drift-lite rollout recipes/toy/drift.yaml --out runs/x/rollouts.jsonl`. The episodes are
played by `episodes.play_episodes` (engines: `engine_turn`, the default, and the opt-in `engine_token`).
Sharding (a slice of the prompts per process, merged after) is in `drift_lite.shards`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from drift_lite.env import EpisodeSettings
from drift_lite.episodes import play_episodes
from drift_lite.errors import UserError
from drift_lite.files import changed_keys, check_output_path, exclusive_lock, read_json, write_json_atomic
from drift_lite.jobs import Job, Shots, make_jobs
from drift_lite.records import fingerprint_path
from drift_lite.records_resume import read_complete_groups
from drift_lite.sampling import Sampling
from drift_lite.shards import (
    check_shard,
    env_shard,
    iter_groups,
    merge,
    prompt_order,
    shard_of,
    shard_path,
    shard_slice,
    use_local_device,
    wait_for_parts,
)
from drift_lite.tasks.base import Problem

__all__ = [
    "GroupWriter",
    "Job",
    "Sampling",
    "env_identity",
    "episode_settings",
    "is_complete",
    "load_shots",
    "make_jobs",
    "play_episodes",
    "rollout",
    "rollout_settings",
]


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


def rollout(
    recipe,
    out_path: str | Path,
    *,
    shard: tuple[int, int] | None = None,
    model=None,
    tokenizer=None,
    show_progress: bool = True,
) -> dict:
    """Sample `rollout.n_samples` multi-turn trajectories per training prompt into `out_path` (resumable).

    `shard=(i, n)` plays only the prompts at positions i, i+n, ... (see `drift_lite.shards`) into `out_path`;
    join the parts with `shards.merge`. With `shard=None` under a launcher (WORLD_SIZE > 1 in the
    environment, as `accelerate launch` sets it), the shard is (RANK, WORLD_SIZE), each process writes its
    part beside `out_path` (`shards.shard_path`) and rank 0 waits for the others and merges into `out_path`.
    One process writes a file at a time (`files.exclusive_lock`): a second one is refused with one line.

    Returns stats: prompts, trajectories, resumed_prompts, generated_tokens, seconds, tokens_per_s and
    `engine` (what `play_episodes` reports ran), plus `shard` ("i/n") when sharded; they are also written to
    the fingerprint file. Example: `rollout(load_recipe("toy"), "runs/x/rollouts.jsonl")["engine"]["engine"]`.
    """
    from drift_lite.recipe import check_recipe
    from drift_lite.tasks import load_problems

    out_path = Path(out_path)
    check_output_path(out_path)
    check_recipe(recipe)  # load_recipe checked it already; a Recipe built in code has not been
    shots = load_shots(recipe)  # env.shots is refused before any data loads
    auto = shard is None and env_shard() is not None
    shard = env_shard() if auto else check_shard(shard)
    part = shard_path(out_path, shard) if auto else out_path
    problems = load_problems(
        recipe.task.name, "train", recipe.task.source, recipe.task.size, recipe.task.seed
    )
    _check_unique_ids(problems, recipe.task.name)
    size = recipe.task.size
    if size is not None and len(problems) < size:  # said as `drift-lite check` says it, not shrunk silently
        where = recipe.task.source or recipe.task.name
        print(
            f"task.size {size:,} > {len(problems):,} problems in {where}: using {len(problems):,}",
            file=sys.stderr,
        )
    mine = shard_slice(problems, shard)
    order = prompt_order([p.id for p in problems], shard)
    if auto and model is None:
        use_local_device()
    summary = _rollout_one(recipe, part, mine, shots, order, shard, model, tokenizer, show_progress)
    if auto and shard[0] == 0:
        parts = [shard_path(out_path, (i, shard[1])) for i in range(shard[1])]
        settings = rollout_settings(recipe)

        def ready(path: Path, meta: dict | None) -> bool:
            return (
                isinstance(meta, dict)
                and bool(meta.get("complete"))
                and meta.get("settings") == settings
                and meta.get("prompts") == prompt_order([p.id for p in problems], shard_of(meta))
                and shard_of(meta) == (parts.index(path), shard[1])
            )

        wait_for_parts(parts[1:], ready)
        summary["merged"] = merge(parts, out_path)
    return summary


def _rollout_one(
    recipe,
    out_path: Path,
    problems: list[Problem],
    shots: Callable[[Problem], Shots],
    order: dict,
    shard,
    model,
    tokenizer,
    show_progress: bool,
) -> dict:
    """`rollout` of `problems` (the shard's) into `out_path`: every check and the model first, then the
    sampling under the file's lock."""
    from drift_lite import models
    from drift_lite.tasks import checker_for, feedback_for

    settings = rollout_settings(recipe)
    recorded_shard = None if shard is None else {"index": shard[0], "count": shard[1]}
    n = recipe.rollout.n_samples
    if Path(f"{out_path}.lock").exists():  # `files.exclusive_lock`'s lock file: one may be holding it now
        with exclusive_lock(out_path, "rollout file"):
            pass  # refused at once, before a model loads, when another process writes the file
    if out_path.exists():  # refused before the model loads; checked again under the lock
        _check_same_settings(out_path, settings, shard, order)
    checker = checker_for(recipe.task.name, recipe.task.checker)
    env, feedback = episode_settings(recipe), feedback_for(recipe.task.name)
    jobs = make_jobs(problems, n, recipe.seed, checker, env, shots, feedback)
    if model is None:
        path = models.resolve_model_path(recipe.model, recipe.toy)
        tokenizer = models.load_tokenizer(path, recipe.model)
        model = models.load_model(path, recipe.model)
    # Every mistake that shows before sampling has been raised by now: only now touch the files, holding the
    # file's lock from the first write to the last (two writers would interleave their groups). The lock
    # file (`<out>.lock`) stays: removing it would let a third process lock a new file while a second holds
    # the old one.
    meta = {"settings": settings, "prompts": order, "shard": recorded_shard}
    with exclusive_lock(out_path, "rollout file"):
        _remove_own_temps(out_path)
        if out_path.exists():  # again: another process may have written it while the model loaded
            _check_same_settings(out_path, settings, shard, order)
        return _sample(recipe, out_path, problems, jobs, model, tokenizer, meta, show_progress)


def _sample(
    recipe,
    out_path: Path,
    problems: list[Problem],
    jobs: list[Job],
    model,
    tokenizer,
    meta: dict,
    show_progress: bool,
) -> dict:
    """Play the jobs of the prompts not yet in `out_path` and append their groups (under the file's lock)."""

    n, shard = recipe.rollout.n_samples, shard_of(meta)
    fp_path = fingerprint_path(out_path)
    done_ids = {row["prompt_id"] for row in read_complete_groups(out_path, n)}
    write_json_atomic(fp_path, {**meta, "complete": False})
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
    desc = "rollout" if shard is None else f"rollout {shard[0]}/{shard[1]}"
    bar = tqdm(
        total=len(problems), initial=len(done_ids), desc=desc, unit="prompt", disable=not show_progress
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
        "engine": stats["engine"],  # which engine and optional paths ran (not a setting of the rows)
    }
    if shard is not None:
        summary["shard"] = f"{shard[0]}/{shard[1]}"
    write_json_atomic(fp_path, {**meta, "complete": True, "stats": summary})
    return summary


def _remove_own_temps(out_path: Path) -> int:
    """Delete the temp files a killed writer of this file (or its settings file) left; only under its lock.

    Only this file's own temps (`.<name>.<8 hex>.tmp`): other files in the folder may have live writers.
    """
    names = {out_path.name, fingerprint_path(out_path).name}
    pattern = re.compile(r"^\.(.+)\.[0-9a-f]{8}\.tmp$")
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(out_path.parent):
            match = pattern.match(entry.name)
            if match and match.group(1) in names and entry.is_file():
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def arithmetic_settings(recipe, batch_size: int) -> dict:
    """What decides the order of a row's arithmetic: nothing in float32, where rows do not depend on their
    batch or engine (per-trajectory seeds; tested), but in bf16/fp16 the engine, KV reuse and batch size,
    which flip near-ties (measured on SmolLM2: 2 of 24 greedy trajectories differ across engines in bf16,
    docs/cpu-model.md)."""
    if recipe.model.dtype == "float32":
        return {}
    r = recipe.rollout
    return {"engine": r.engine, "prefix_cache": r.prefix_cache, "batch_size": batch_size}


def rollout_settings(recipe) -> dict:
    """Everything a rollout file depends on (compared on resume); not the device, and in float32 not the
    batch size, engine or KV reuse (`arithmetic_settings`)."""
    from drift_lite.models import model_identity

    data = recipe.to_dict()
    picked = {k: data[k] for k in ("task", "rollout", "seed")}
    picked["model"] = model_identity(recipe.model, recipe.toy)
    picked["env"] = env_identity(recipe)
    # In float32 rows do not depend on their batch (per-trajectory seeds), so a run may resume with another
    # batch size or engine; in reduced precision these are kept (arithmetic_settings).
    picked["rollout"] = {
        k: v for k, v in picked["rollout"].items() if k not in ("batch_size", "engine", "prefix_cache")
    }
    picked["rollout"].update(arithmetic_settings(recipe, recipe.rollout.batch_size))
    return json.loads(json.dumps(picked))


def episode_settings(recipe) -> EpisodeSettings:
    """The environment's rules from a recipe (`env`; the return's settings belong to the weight step)."""
    return EpisodeSettings(
        max_turns=recipe.env.max_turns,
        format_penalty=recipe.env.format_penalty,
        mode=recipe.env.mode,
    )


def env_identity(recipe) -> dict:
    """The environment settings rows depend on: the recipe's `env` section (no `weights` setting)."""
    return dataclasses.asdict(recipe.env)


def load_shots(recipe) -> Callable[[Problem], Shots]:
    """Worked examples shown as earlier turns (`env.shots`), per problem: its own task and family."""
    n = recipe.env.shots
    if n <= 0:
        return lambda problem: []
    import importlib

    from drift_lite.tasks import SYNTHETIC, toy

    only = ", ".join(SYNTHETIC)
    if recipe.task.name not in SYNTHETIC:
        name = recipe.task.name
        raise UserError(f"env.shots: worked examples exist only for the tasks {only}, not '{name}'")

    def shots_for(problem: Problem) -> Shots:
        if "toy_family" in problem.meta:
            return toy.worked_examples(problem.meta["toy_family"], n, avoid=problem)
        if problem.meta.get("task") in SYNTHETIC:
            module = importlib.import_module(f"drift_lite.tasks.{problem.meta['task']}")
            return module.worked_examples(n, avoid=problem)
        raise UserError(f"env.shots: worked examples exist only for the tasks {only}, not '{problem.id}'")

    return shots_for


def is_complete(out_path: str | Path, recipe, shard: tuple[int, int] | None = None) -> bool:
    """True when `out_path` holds a finished rollout (or shard `shard`) made with this recipe's settings:
    its settings file says so, and the file holds exactly its prompts' groups of `n_samples` rows each."""
    out_path = Path(out_path)
    meta = read_json(fingerprint_path(out_path))
    if not (
        out_path.exists()
        and isinstance(meta, dict)
        and meta.get("complete")
        and meta.get("settings") == rollout_settings(recipe)
        and shard_of(meta) == check_shard(shard)
    ):
        return False
    prompts = meta.get("prompts") if isinstance(meta.get("prompts"), dict) else {}
    expected = prompts.get("count", (meta.get("stats") or {}).get("prompts"))  # files from before shards
    try:
        groups = sum(1 for _ in iter_groups(out_path, recipe.rollout.n_samples, validate=False))
    except UserError:  # a group of another size, a prompt twice, a torn line
        return False
    return groups == expected


def _check_same_settings(out_path: Path, settings: dict, shard, order: dict) -> None:
    """Refuse to resume a file made with other settings, as another shard or from other prompts (a one-line
    error; nothing is touched)."""
    fp_path = fingerprint_path(out_path)
    previous = read_json(fp_path)
    if not isinstance(previous, dict):
        raise UserError(
            f"{out_path}: exists but its settings file {fp_path.name} is missing or unreadable; "
            "use another --out or delete it"
        )
    if previous.get("settings") != settings:
        changed = changed_keys(previous.get("settings") or {}, settings)
        raise UserError(
            f"{out_path}: exists with other rollout settings ({', '.join(changed)}); "
            "use another --out or delete it"
        )
    if shard_of(previous) != shard:
        shown = {None: "the whole run"}
        was, now = (shown.get(s) or f"shard {s[0]}/{s[1]}" for s in (shard_of(previous), shard))
        raise UserError(f"{out_path}: holds {was}, not {now}; use another --out or delete it")
    if "prompts" in previous and previous["prompts"] != order:
        raise UserError(
            f"{out_path}: exists with other prompts (another task data or kit version); "
            "use another --out or delete it"
        )


def _check_unique_ids(problems: list[Problem], task: str) -> None:
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise UserError(f"task '{task}': problem id '{p.id}' appears twice")
        seen.add(p.id)
