"""Multi-turn evaluation: the rollout engine, greedy by default (as the release evaluates), then metrics.

From the CLI:
    `drift-lite eval recipes/toy/drift.yaml --adapter runs/x/adapter --out runs/x/eval-trained`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import suppress
from pathlib import Path

from tqdm.auto import tqdm

from drift_lite.episodes import play_episodes
from drift_lite.errors import UserError
from drift_lite.jobs import make_jobs
from drift_lite.rollouts import episode_settings, load_shots
from drift_lite.sampling import Sampling


def set_name(eval_set) -> str:
    """The `<set>` in eval-<set>.json."""
    return eval_set.name or eval_set.task


def check_set_names(sets, out_dir: str | Path) -> list[str]:
    """The sets' names, refused (one line) when one is repeated or would write outside `out_dir`.

    The recipe check refuses such names too; this is the last guard before writing: the resolved output
    path of every set (normalized, without following a symlinked file) must sit directly in `out_dir`.
    """
    root = Path(out_dir).resolve()
    names: list[str] = []
    for eval_set in sets:
        name = set_name(eval_set)
        target = Path(os.path.normpath(root / f"eval-{name}.jsonl"))  # lexical: a symlinked file may stay
        if target.parent != root or os.sep in name or (os.altsep and os.altsep in name) or "\0" in name:
            raise UserError(f"eval set name {name!r}: would write outside {out_dir}; use [A-Za-z0-9_.-] only")
        if name in names:
            raise UserError(f"eval set name {name!r} appears twice: each set needs its own name")
        names.append(name)
    return names


def _load(recipe, adapter: str | None):
    """Tokenizer and model (+ adapter, checked against the recipe's base model first)."""
    from drift_lite import models

    path = models.resolve_model_path(recipe.model, recipe.toy)
    if adapter is not None:
        models.check_adapter_base(adapter, path)
    tokenizer = models.load_tokenizer(path, recipe.model)
    # an adapter of other shapes is one line from models.load_adapter (PEFT's size-mismatch list otherwise)
    model = models.load_model(path, recipe.model, adapter=adapter)
    return model, tokenizer


def evaluate(
    recipe,
    out_dir: str | Path,
    *,
    adapter: str | None = None,
    model=None,
    tokenizer=None,
    show_progress: bool = True,
) -> dict:
    """Evaluate the base model (or base + `adapter`) on every `eval.sets` entry; writes eval-<set>.json(l).

    Episodes last up to `eval.max_turns` turns (null: `env.max_turns`), so a method trained on 1-turn
    rollouts is still evaluated over 5. Returns, per set, {"metrics": (what eval-<set>.json holds),
    "generated_tokens", "seconds", "engine" (what ran, as `play_episodes` reports it)}.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    check_set_names(recipe.eval.sets, out_dir)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"adapter not found: {adapter} (no adapter_config.json)")
    if model is None:
        model, tokenizer = _load(recipe, adapter)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return _evaluate_sets(recipe, out_dir, model, tokenizer, show_progress)
    except BaseException:
        if created:  # leave no empty output folder behind a failure (a written set file keeps it)
            with suppress(OSError):
                out_dir.rmdir()
        raise


def _evaluate_sets(recipe, out_dir: Path, model, tokenizer, show_progress: bool) -> dict:
    """Play and score every eval set into `out_dir` (which exists)."""
    from drift_lite.files import atomic_writer
    from drift_lite.metrics import compute_metrics
    from drift_lite.records import write_rows_atomic
    from drift_lite.tasks import checker_for, feedback_for, load_problems

    cfg = recipe.eval
    sampling = Sampling(
        greedy=cfg.greedy,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        max_new_tokens=cfg.max_new_tokens,
        seed=recipe.seed,
    )
    max_turns = cfg.max_turns if cfg.max_turns is not None else recipe.env.max_turns
    env = dataclasses.replace(episode_settings(recipe), max_turns=max_turns)
    shots = load_shots(recipe)
    results: dict = {}
    for eval_set in cfg.sets:
        name = set_name(eval_set)
        problems = load_problems(eval_set.task, "eval", eval_set.source, eval_set.size, recipe.task.seed)
        repeats = cfg.repeats if not cfg.greedy else 1
        jobs = make_jobs(
            problems,
            repeats,
            recipe.seed + 1,
            checker_for(eval_set.task, eval_set.checker),
            env,
            shots,
            feedback_for(eval_set.task),
        )
        rows: list[dict | None] = [None] * len(jobs)
        index = {(j.episode.problem.id, j.traj_idx): i for i, j in enumerate(jobs)}
        bar = tqdm(total=len(jobs), desc=f"eval {name}", unit="episode", disable=not show_progress)
        extra = {"task": eval_set.task, "seed": recipe.seed}

        def on_done(job, rows=rows, index=index, bar=bar, extra=extra) -> None:
            rows[index[(job.episode.problem.id, job.traj_idx)]] = job.episode.to_row(
                **extra, traj_idx=job.traj_idx
            )
            bar.update(1)

        start = time.perf_counter()
        stats = play_episodes(
            model,
            tokenizer,
            jobs,
            sampling,
            cfg.batch_size,
            on_done,
            engine=recipe.rollout.engine,
            prefix_cache=recipe.rollout.prefix_cache,
        )
        bar.close()
        write_rows_atomic(out_dir / f"eval-{name}.jsonl", rows)
        metrics = compute_metrics(rows, max_turns)
        with atomic_writer(out_dir / f"eval-{name}.json") as handle:
            handle.write(json.dumps(metrics, indent=1).encode("utf-8"))
        seconds = round(time.perf_counter() - start, 3)
        results[name] = {
            "metrics": metrics,
            "generated_tokens": stats["generated_tokens"],
            "seconds": seconds,
            "engine": stats["engine"],
        }
    return results
