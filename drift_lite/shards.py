"""Sharded rollouts: which prompts a shard plays, the shard a process gets under `accelerate launch`, and
`merge`, which joins finished parts into one rollout file equal to a one-process run.

A shard (i, n), 0 <= i < n, plays the prompts at positions i, i+n, i+2n, ... of the kit's prompt order.
Position slicing rather than a hash of `prompt_id`: shard sizes differ by at most one prompt, neighbouring
prompts (often of one family and difficulty) spread over all shards, and `merge` rebuilds the kit's order by
interleaving the parts, so it needs no recipe. A shard's settings file (`<part>.settings.json`) records the
run's rollout settings, the shard and a hash of the run's whole ordered prompt list; `merge` checks all of
them. Rows are seeded per trajectory (`sampling.trajectory_key`), so merged parts hold the bytes a
one-process run writes in float32 (in bf16 a row also depends on its batch: `rollouts.arithmetic_settings`).

Under `accelerate launch` (or torchrun) the shard comes from the RANK / WORLD_SIZE environment variables that
the launcher sets for every process: no process group is needed for rollouts (no communication, no NCCL
timeout while shards take different times), and it works the same under torchrun or a SLURM wrapper.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

from drift_lite import records
from drift_lite.errors import UserError
from drift_lite.files import (
    atomic_writer,
    check_output_path,
    exclusive_lock,
    read_json,
    settings_hash,
    write_json_atomic,
)

__all__ = [
    "Group",
    "check_shard",
    "env_shard",
    "iter_groups",
    "merge",
    "parse_shard",
    "parts_in_order",
    "prompt_order",
    "shard_of",
    "shard_path",
    "shard_slice",
    "use_local_device",
    "wait_for_parts",
    "write_interleaved",
]

Shard = tuple[int, int]


def parse_shard(text: str) -> Shard:
    """`I/N` (as `--shard` takes it; I is 0-based, like RANK) as (i, n); a one-line UserError otherwise."""
    head, sep, tail = str(text).partition("/")
    try:
        shard = (int(head), int(tail)) if sep else None
    except ValueError:
        shard = None
    if shard is None or shard[1] < 1 or not 0 <= shard[0] < shard[1]:
        raise UserError(f"--shard {text}: expected I/N with integers, N >= 1 and I from 0 to N-1, e.g. 0/4")
    return shard


def check_shard(shard: object) -> Shard | None:
    """Validate a shard (i, n); None for no sharding or for (0, 1), which is the whole run."""
    if shard is None:
        return None
    ok = (
        isinstance(shard, (tuple, list))
        and len(shard) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in shard)
    )
    if not ok:
        raise UserError(f"shard {shard!r}: expected (i, n), two integers")
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise UserError(f"shard {i}/{n}: expected N >= 1 and I from 0 to N-1")
    return None if n == 1 else (i, n)


def env_shard() -> Shard | None:
    """The shard of this process under a launcher (RANK / WORLD_SIZE), or None when WORLD_SIZE <= 1."""
    world = os.environ.get("WORLD_SIZE", "").strip()
    if not world:
        return None
    rank = os.environ.get("RANK", "0").strip()
    try:
        shard = (int(rank), int(world))
    except ValueError:
        raise UserError(
            f"RANK={rank!r} WORLD_SIZE={world!r}: expected integers (set by the launcher)"
        ) from None
    if shard[1] <= 1:
        return None
    try:
        return check_shard(shard)
    except UserError:
        raise UserError(f"RANK={rank} WORLD_SIZE={world}: RANK must be from 0 to WORLD_SIZE-1") from None


def use_local_device() -> None:
    """Under a launcher on a CUDA machine, make `cuda` mean this process's GPU (LOCAL_RANK), not GPU 0."""
    local = os.environ.get("LOCAL_RANK", "").strip()
    if not local.isdigit():
        return
    import torch

    if torch.cuda.is_available() and int(local) < torch.cuda.device_count():
        torch.cuda.set_device(int(local))


def shard_slice(items: list, shard: Shard | None) -> list:
    """The items shard (i, n) plays: positions i, i+n, ...; all of them for None."""
    if shard is None:
        return list(items)
    i, n = shard
    if n > len(items):
        raise UserError(f"shard {i}/{n}: only {len(items)} prompts; use at most {len(items)} shards")
    return list(items[i::n])


def shard_path(out: str | os.PathLike, shard: Shard) -> Path:
    """Where an automatic shard writes its part: rollouts.jsonl -> rollouts.shard-0-of-4.jsonl beside it."""
    out = Path(out)
    i, n = shard
    return out.with_name(f"{out.stem}.shard-{i}-of-{n}{out.suffix}")


def prompt_order(all_ids: list[str], shard: Shard | None) -> dict:
    """The settings-file record of which prompts a file holds: its count, the run's total, and a hash of the
    run's whole ordered id list (what `merge` checks the merged order against)."""
    return {
        "count": len(shard_slice(all_ids, shard)),
        "total": len(all_ids),
        "order": settings_hash(list(all_ids)),
    }


def shard_of(meta: dict) -> Shard | None:
    """The shard a rollout settings file records (None: a whole run, or a file from before shards)."""
    shard = meta.get("shard")
    if not isinstance(shard, dict):
        return None
    return (shard.get("index"), shard.get("count"))


# ---------------------------------------------------------------------------------------------------------
# Reading groups


class Group(NamedTuple):
    """One prompt's rows as they stand in a file: its id, where it starts, its raw lines."""

    prompt_id: str
    where: str
    lines: list[bytes]


def iter_groups(path: str | os.PathLike, n_samples: int, *, validate: bool = True) -> Iterator[Group]:
    """Yield the prompt groups of a rollout file, each exactly `n_samples` contiguous rows; raise UserError
    at a group of another size, a prompt in two groups, a torn or bad line. `validate=False` reads only each
    row's `prompt_id` (a fast completeness check)."""
    import orjson

    name = os.fspath(path)
    seen: set[str] = set()
    pid, start, lines = None, "", []
    with records.open_for_reading(name) as handle:
        for lineno, raw in records.iter_raw_lines(handle):
            where = f"{name}:{lineno}"
            if not raw.endswith(b"\n"):
                raise UserError(f"{where}: last line is incomplete (a killed writer); rerun its rollout")
            if validate:
                row = records.validate_row(records.parse_json_line(raw, where), where)
            else:
                try:
                    row = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    raise UserError(f"{where}: not valid JSON") from None
                if not isinstance(row, dict) or not isinstance(row.get("prompt_id"), str):
                    raise UserError(f"{where}: field 'prompt_id': missing or not a string")
            if row["prompt_id"] != pid:
                if pid is not None:
                    _check_group_size(pid, start, len(lines), n_samples)
                    yield Group(pid, start, lines)
                pid, start, lines = row["prompt_id"], where, []
                if pid in seen:
                    raise UserError(f"{where}: duplicated prompt '{pid}' (a second group in this file)")
                seen.add(pid)
            lines.append(raw)
            if len(lines) > n_samples:
                _check_group_size(pid, start, len(lines), n_samples)
    if pid is not None:
        _check_group_size(pid, start, len(lines), n_samples)
        yield Group(pid, start, lines)


def _check_group_size(pid: str, where: str, size: int, n_samples: int) -> None:
    if size != n_samples:
        kind = "an incomplete group" if size < n_samples else "an oversized group"
        raise UserError(f"{where}: {kind}: prompt '{pid}' has {size} rows, expected {n_samples}")


# ---------------------------------------------------------------------------------------------------------
# Merging


def _part_meta(part: Path) -> dict:
    """A part's settings file, checked to be a finished rollout's."""
    from drift_lite.records import fingerprint_path

    fp = fingerprint_path(part)
    meta = read_json(fp)
    if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
        raise UserError(
            f"{part}: its settings file {fp.name} is missing or unreadable (not a kit rollout part)"
        )
    if not meta.get("complete"):
        raise UserError(f"{part}: unfinished (its settings file says so); rerun its rollout to resume it")
    prompts = meta.get("prompts")
    if not isinstance(prompts, dict) or not {"count", "total", "order"} <= set(prompts):
        raise UserError(
            f"{part}: its settings file {fp.name} does not record its prompts (an older kit's file)"
        )
    return meta


def merge(parts: list[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Join finished shard parts into one rollout file at `out`, in the kit's prompt order, with its settings
    file; refuse (one-line UserError, `out` untouched) a duplicated or missing prompt, an incomplete group, an
    unfinished part or parts made with other settings. Returns prompts, trajectories, parts, generated_tokens.

    Example: `merge(["r.shard-0-of-2.jsonl", "r.shard-1-of-2.jsonl"], "rollouts.jsonl")["prompts"]`.
    """
    from drift_lite.files import changed_keys
    from drift_lite.records import fingerprint_path

    paths, out = [Path(p) for p in parts], Path(out)
    if not paths:
        raise UserError("merge: no parts given")
    check_output_path(out)
    for path in paths:
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        if out.exists() and os.path.samefile(path, out):
            raise UserError(f"{out}: is one of the parts; merge into another file")
    metas = [_part_meta(p) for p in paths]
    first, first_meta = paths[0], metas[0]
    for path, meta in zip(paths[1:], metas[1:]):
        if meta["settings"] != first_meta["settings"]:
            changed = ", ".join(changed_keys(first_meta["settings"], meta["settings"]))
            raise UserError(f"{path}: made with other rollout settings than {first} ({changed})")
        if meta["prompts"]["order"] != first_meta["prompts"]["order"]:
            raise UserError(
                f"{path}: made from other prompts than {first} (another task data or kit version)"
            )
    ordered = parts_in_order(paths, metas)
    count = len(ordered)
    settings = first_meta["settings"]
    n_samples = settings["rollout"]["n_samples"]
    order = first_meta["prompts"]
    fp = fingerprint_path(out)
    with exclusive_lock(out, "rollout file"):
        # Marked unfinished only once every check passed, just before the rows replace `out`: a refused
        # merge writes nothing, and a kill between the two leaves a file that says it is unfinished.
        def mark_unfinished() -> None:
            write_json_atomic(
                fp, {"settings": settings, "prompts": _whole(order), "shard": None, "complete": False}
            )

        ids = write_interleaved(out, ordered, n_samples, order, mark_unfinished)
        summary = {
            "prompts": len(ids),
            "trajectories": len(ids) * n_samples,
            "parts": count,
            "generated_tokens": sum(int(m.get("stats", {}).get("generated_tokens", 0)) for m in metas),
        }
        stats = {**summary, "merged_from": [str(p) for p in ordered]}
        write_json_atomic(
            fp,
            {"settings": settings, "prompts": _whole(order), "shard": None, "complete": True, "stats": stats},
        )
    return summary


def parts_in_order(paths: list[Path], metas: list[dict]) -> list[Path]:
    """The parts by shard index 0..n-1 (`metas`: their records, with `shard` as `shard_of` reads it); refuse
    (one line) a part of another split, a shard given twice or a missing one."""
    first, count = paths[0], (shard_of(metas[0]) or (0, 1))[1]
    by_index: dict[int, Path] = {}
    for path, meta in zip(paths, metas):
        index, split = shard_of(meta) or (0, 1)
        if split != count:
            raise UserError(
                f"{path}: shard {_shown(meta)} is of another split than {first} ({_shown(metas[0])})"
            )
        if index in by_index:
            raise UserError(
                f"{path}: duplicated prompts: it is shard {index}/{count} again (as {by_index[index]})"
            )
        by_index[index] = path
    missing = [f"{i}/{count}" for i in range(count) if i not in by_index]
    if missing:
        raise UserError(
            f"missing prompts: shard {', '.join(missing)} not given (all of 0..{count - 1} needed)"
        )
    return [by_index[i] for i in range(count)]


def _whole(order: dict) -> dict:
    return {"count": order["total"], "total": order["total"], "order": order["order"]}


def _shown(meta: dict) -> str:
    shard = shard_of(meta)
    return "0/1 (a whole run)" if shard is None else f"{shard[0]}/{shard[1]}"


def write_interleaved(
    out: Path, parts: list[Path], n_samples: int, order: dict, before_replace: Callable[[], None]
) -> list[str]:
    """Write the parts' groups round-robin (position p comes from shard p mod n) into `out` atomically;
    `before_replace()` runs after every check passed, before the new file replaces `out`."""
    count, total = len(parts), order["total"]
    groups = [iter_groups(p, n_samples) for p in parts]
    seen: dict[str, str] = {}
    ids: list[str] = []
    with atomic_writer(out) as handle:
        for position in range(total):
            group = next(groups[position % count], None)
            if group is None:
                part = parts[position % count]
                expected = len(range(position % count, total, count))
                raise UserError(f"{part}: missing prompts: it ends before its {expected} prompts of {total}")
            if group.prompt_id in seen:
                raise UserError(
                    f"{group.where}: duplicated prompt '{group.prompt_id}' (also at {seen[group.prompt_id]})"
                )
            seen[group.prompt_id] = group.where
            ids.append(group.prompt_id)
            handle.write(b"".join(group.lines))
        for part, rest in zip(parts, groups):
            extra = next(rest, None)
            if extra is not None:
                raise UserError(
                    f"{extra.where}: prompt '{extra.prompt_id}' is beyond {part}'s share of {total}"
                )
        if settings_hash(ids) != order["order"]:
            raise UserError(
                f"{out}: the merged prompts are not the run's prompts in order (a part was edited?)"
            )
        before_replace()
    return ids


def wait_for_parts(
    parts: list[Path], ready: Callable[[Path, dict | None], bool], poll_s: float = 2.0
) -> None:
    """Block until `ready(part, its settings file)` holds for every part (rank 0 waiting for the others)."""
    from drift_lite.records import fingerprint_path

    waiting = list(parts)
    told = False
    while waiting:
        waiting = [p for p in waiting if not ready(p, read_json(fingerprint_path(p)))]
        if waiting and not told:
            names = ", ".join(str(p) for p in waiting)
            print(
                f"drift-lite: waiting for the other shards to finish: {names} (on several nodes these "
                "must be on a shared file system)",
                file=sys.stderr,
                flush=True,
            )
            told = True
        if waiting:
            time.sleep(poll_s)
