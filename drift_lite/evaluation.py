"""Multi-turn evaluation: the rollout engine, greedy by default (as the release evaluates), then metrics.

From the CLI:
    `drift-lite eval recipes/toy/drift.yaml --adapter runs/x/adapter --out runs/x/eval-trained`.

Sharded (`--shard I/N`, or automatic under a launcher, as rollouts: `drift_lite.shards`): a shard plays the
problems at positions I, I+N, ... of every eval set into its part folder (`eval-<set>.jsonl` and `shard.json`,
its settings; no metrics), and `merge_evals` (`drift-lite merge PART_DIR... --out DIR`) joins the parts into
the files a one-process evaluation writes. Rows are seeded per trajectory, so the merged rows are the same
in float32 (in bf16 a row also depends on its batch and engine: `rollouts.arithmetic_settings`).
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
from drift_lite.files import read_json, write_json_atomic
from drift_lite.jobs import make_jobs
from drift_lite.rollouts import arithmetic_settings, env_identity, episode_settings, load_shots
from drift_lite.sampling import Sampling
from drift_lite.shards import (
    check_shard,
    env_shard,
    parts_in_order,
    prompt_order,
    shard_path,
    shard_slice,
    use_local_device,
    wait_for_parts,
    write_interleaved,
)

PART_RECORD = "shard.json"  # a part folder's settings (never eval-*.json: a set could be named anything)


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


def eval_settings(recipe, adapter: str | None = None) -> dict:
    """Everything evaluation rows depend on (not the batch size: rows are seeded per trajectory); with
    `adapter`, its path and weight files' sizes and times (parts of other adapters must not be merged)."""
    from drift_lite import models

    data = recipe.to_dict()
    settings = {
        "model": models.model_identity(recipe.model, recipe.toy),
        "env": env_identity(recipe),
        "eval": {k: v for k, v in data["eval"].items() if k != "batch_size"},
        "task_seed": recipe.task.seed,
        "seed": recipe.seed,
        **arithmetic_settings(recipe, recipe.eval.batch_size),  # bf16: the engine and batch flip near-ties
    }
    if adapter is not None:
        folder = Path(adapter).resolve()
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith("adapter_"))
        settings["adapter"] = {
            "path": str(folder),
            "files": {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in files},
        }
    return settings


def evaluate(
    recipe,
    out_dir: str | Path,
    *,
    adapter: str | None = None,
    model=None,
    tokenizer=None,
    show_progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Evaluate the base model (or base + `adapter`) on every `eval.sets` entry; writes eval-<set>.json(l).

    Episodes last up to `eval.max_turns` turns (null: `env.max_turns`), so a method trained on 1-turn
    rollouts is still evaluated over 5. Returns, per set, {"metrics": (what eval-<set>.json holds),
    "generated_tokens", "seconds", "engine" (what ran, as `play_episodes` reports it)}.
    `shard=(i, n)`: only the problems at positions i, i+n, ... of each set, into the part folder `out_dir`
    (join parts with `merge_evals`; the returned metrics are the part's). Under a launcher (WORLD_SIZE > 1)
    with `shard=None`, each process writes its part beside `out_dir` and rank 0 merges them into `out_dir`.
    """
    out_dir = Path(out_dir)
    auto = shard is None and env_shard() is not None
    shard = env_shard() if auto else check_shard(shard)
    target = shard_path(out_dir, shard) if auto else out_dir
    if target.exists() and not target.is_dir():
        raise UserError(f"{target}: exists and is not a folder")
    check_set_names(recipe.eval.sets, target)
    if adapter is not None and not (Path(adapter) / "adapter_config.json").is_file():
        raise UserError(f"adapter not found: {adapter} (no adapter_config.json)")
    if model is None:
        if auto:
            use_local_device()
        model, tokenizer = _load(recipe, adapter)
    created = not target.exists()
    try:
        target.mkdir(parents=True, exist_ok=True)
        results = _evaluate_sets(recipe, target, model, tokenizer, show_progress, shard, adapter)
    except BaseException:
        if created:  # leave no empty output folder behind a failure (a written set file keeps it)
            with suppress(OSError):
                target.rmdir()
        raise
    if auto and shard[0] == 0:
        parts = [shard_path(out_dir, (i, shard[1])) for i in range(shard[1])]
        settings = eval_settings(recipe, adapter)

        def ready(part: Path, _: dict | None) -> bool:
            record = read_json(part / PART_RECORD)
            if not (isinstance(record, dict) and record.get("complete")):
                return False
            if record.get("settings") != settings:  # finished with other settings: waiting would never end
                raise UserError(
                    f"{part}: a finished evaluation part of other settings (another recipe, adapter path or "
                    "adapter files); remove it and launch again"
                )
            return True

        wait_for_parts(parts[1:], ready)
        merged = merge_evals(parts, out_dir)["sets"]
        results = {name: {**result, "metrics": merged[name]["metrics"]} for name, result in results.items()}
    return results


def _evaluate_sets(
    recipe, out_dir: Path, model, tokenizer, show_progress: bool, shard=None, adapter: str | None = None
) -> dict:
    """Play and score every eval set (shard `shard` of its problems) into `out_dir` (which exists)."""
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
    repeats = cfg.repeats if not cfg.greedy else 1
    record = {
        "settings": eval_settings(recipe, adapter),
        "shard": None,
        "sets": {},
        "rows_per_problem": repeats,
    }
    if shard is not None:
        record["shard"] = {"index": shard[0], "count": shard[1]}
        (out_dir / PART_RECORD).unlink(missing_ok=True)  # a part being rewritten is not a finished part
    for eval_set in cfg.sets:
        name = set_name(eval_set)
        problems = load_problems(eval_set.task, "eval", eval_set.source, eval_set.size, recipe.task.seed)
        record["sets"][name] = prompt_order([p.id for p in problems], shard)
        problems = shard_slice(problems, shard)
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
        if shard is None:  # a part's metrics are not the set's: `merge_evals` writes them
            _write_metrics(out_dir / f"eval-{name}.json", metrics)
        else:  # nor may a whole-set evaluation's metrics stay beside a part's rows
            (out_dir / f"eval-{name}.json").unlink(missing_ok=True)
        seconds = round(time.perf_counter() - start, 3)
        results[name] = {
            "metrics": metrics,
            "generated_tokens": stats["generated_tokens"],
            "seconds": seconds,
            "engine": stats["engine"],
        }
    if shard is not None:
        tokens = sum(r["generated_tokens"] for r in results.values())
        write_json_atomic(
            out_dir / PART_RECORD,
            {**record, "max_turns": max_turns, "complete": True, "generated_tokens": tokens},
        )
    return results


def _write_metrics(path: Path, metrics: dict) -> None:
    from drift_lite.files import atomic_writer

    with atomic_writer(path) as handle:
        handle.write(json.dumps(metrics, indent=1).encode("utf-8"))


def _part_record(part: Path) -> dict:
    """A part folder's record, checked to be a finished evaluation shard's."""
    if not part.is_dir():
        raise UserError(f"{part}: no such folder (an evaluation part is a folder)")
    record = read_json(part / PART_RECORD)
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise UserError(f"{part}: no readable {PART_RECORD} (not a part of `drift-lite eval --shard`)")
    if not record.get("complete"):
        raise UserError(f"{part}: unfinished; rerun its evaluation shard")
    return record


def _problems(record: dict) -> dict:
    """Each set's whole problem list (its total and ordered ids' hash), the same in every part of a split."""
    sets = record.get("sets") if isinstance(record.get("sets"), dict) else {}
    return {name: (order.get("total"), order.get("order")) for name, order in sets.items()}


def merge_evals(parts: list[str | os.PathLike], out_dir: str | os.PathLike) -> dict:
    """Join evaluation part folders (`evaluate(..., shard=(i, n))`) into the eval-<set>.jsonl and .json a
    one-process evaluation writes in `out_dir`; refuse (one line) a missing, duplicated, unfinished or
    mixed-settings part. Returns {"sets": {set: {"metrics", "rows"}}, "parts", "generated_tokens"}.

    Example: `merge_evals(["eval.shard-0-of-2", "eval.shard-1-of-2"], "runs/x/eval-trained")`.
    """
    from drift_lite.files import changed_keys
    from drift_lite.metrics import compute_metrics
    from drift_lite.records import iter_rows

    paths, out_dir = [Path(p) for p in parts], Path(out_dir)
    if not paths:
        raise UserError("merge: no parts given")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    if out_dir.exists() and any(os.path.samefile(p, out_dir) for p in paths if p.exists()):
        raise UserError(f"{out_dir}: is one of the parts; merge into another folder")
    records = [_part_record(p) for p in paths]
    first = records[0]
    for path, record in zip(paths[1:], records[1:]):
        if record["settings"] != first["settings"]:
            changed = ", ".join(changed_keys(first["settings"], record["settings"]))
            raise UserError(f"{path}: made with other evaluation settings than {paths[0]} ({changed})")
        if _problems(record) != _problems(first):
            raise UserError(f"{path}: made from other problems than {paths[0]} (another data or kit version)")
    ordered = parts_in_order(paths, records)
    out_dir.mkdir(parents=True, exist_ok=True)
    sets: dict = {}
    for name, order in first["sets"].items():
        out = out_dir / f"eval-{name}.jsonl"
        files = [p / out.name for p in ordered]
        write_interleaved(out, files, first["rows_per_problem"], order, lambda: None)
        metrics = compute_metrics(iter_rows(out), first["max_turns"])
        _write_metrics(out_dir / f"eval-{name}.json", metrics)
        sets[name] = {"metrics": metrics, "rows": order["total"] * first["rows_per_problem"]}
    tokens = sum(int(r.get("generated_tokens", 0)) for r in records)
    return {"sets": sets, "parts": len(ordered), "generated_tokens": tokens}
