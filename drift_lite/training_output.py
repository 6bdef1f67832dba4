"""The training output folder: done marker, completeness, checkpoints to resume from, the final files.

`out_dir` holds the adapter (or full model), tokenizer, `recipe.yaml`, `train_log.jsonl`,
`trainer_state.json`, `summary.json`, and `done.json` written last (`is_complete`). Final files are written
into a temp folder and renamed in; checkpoints go to `out_dir/checkpoints`, a rerun resumes from the last one
marked complete, and they are deleted once `done.json` is written. Under several processes only the main one
writes here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from drift_lite.errors import UserError
from drift_lite.files import atomic_writer, read_json, write_json_atomic
from drift_lite.recipe import Recipe, dump_recipe

DONE_FILE = "done.json"
FINGERPRINT_FILE = "train_fingerprint.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_COMPLETE = "checkpoint_complete"
_FINAL_TMP = ".final.tmp"


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The highest-numbered checkpoint folder with a completion marker, or None."""
    best, best_step = None, -1
    if folder.is_dir():
        for path in folder.glob("checkpoint-*"):
            step = path.name.rpartition("-")[2]
            if step.isdigit() and (path / CHECKPOINT_COMPLETE).exists() and int(step) > best_step:
                best, best_step = path, int(step)
    return best


def _drop_incomplete_checkpoints(folder: Path) -> None:
    for path in folder.glob("checkpoint-*") if folder.is_dir() else []:
        if not (path / CHECKPOINT_COMPLETE).exists():
            shutil.rmtree(path, ignore_errors=True)


def is_complete(out_dir: str | os.PathLike) -> bool:
    """Whether out_dir holds a finished training output (done.json present, every file it lists intact)."""
    out = Path(out_dir)
    done = _read_dict(out / DONE_FILE)
    try:
        files = done["files"]
        return all(
            (out / name).is_file() and (out / name).stat().st_size == size for name, size in files.items()
        )
    except (OSError, KeyError, TypeError, AttributeError):
        return False


def _read_dict(path: Path) -> dict | None:
    data = read_json(path)
    return data if isinstance(data, dict) else None


def check_out_dir(out: Path, base: str, fingerprint: str, resume: bool) -> dict | None:
    """Refuse an out_dir from another base model; return the stored summary when it is already done."""
    from drift_lite.models import check_adapter_base, same_base

    check_adapter_base(out, base)
    stored = _read_dict(out / FINGERPRINT_FILE) or {}
    if isinstance(stored.get("base"), str) and not same_base(stored["base"], base):
        raise UserError(f"{out}: holds a training run for base model {stored['base']}, not {base}")
    done = _read_dict(out / DONE_FILE)
    if resume and done is not None and done.get("fingerprint") == fingerprint and is_complete(out):
        return done.get("summary", {})
    return None


def pick_checkpoint(out: Path, fingerprint: str, resume: bool) -> Path | None:
    """The checkpoint to resume from; checkpoints of other settings or data (or resume off) are deleted."""
    stored = _read_dict(out / FINGERPRINT_FILE) or {}
    checkpoints = out / CHECKPOINTS
    if resume and stored.get("fingerprint") == fingerprint:
        _drop_incomplete_checkpoints(checkpoints)
        return last_complete_checkpoint(checkpoints)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return None


def clear_previous_output(out: Path) -> None:
    """Remove done.json first (the folder is no longer complete), then the files it listed."""
    done = _read_dict(out / DONE_FILE)
    (out / DONE_FILE).unlink(missing_ok=True)
    for name in (done or {}).get("files", {}):
        if "/" not in name and name != FINGERPRINT_FILE:
            (out / name).unlink(missing_ok=True)


def save_final(
    trainer, recipe: Recipe, out: Path, extra: dict, summary: dict, fingerprint: str, main: bool
) -> None:
    """Write the final files into a temp folder, move them in, then done.json (every process calls it)."""
    tmp = out / _FINAL_TMP
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    trainer.accelerator.wait_for_everyone()
    # save_model gathers FSDP / DeepSpeed shards (a collective: every process joins) and writes from the main
    # process only: the adapter (or model) and the tokenizer.
    trainer.save_model(str(tmp))
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)  # a pickle of TrainingArguments: not ours to ship
        dump_recipe(recipe, tmp / "recipe.yaml", extra=extra)
        trainer.state.save_to_json(str(tmp / "trainer_state.json"))
        with atomic_writer(tmp / "train_log.jsonl") as handle:
            for entry in trainer.state.log_history:
                handle.write((json.dumps(entry, sort_keys=True) + "\n").encode())
        write_json_atomic(tmp / "summary.json", summary)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        for name in files:
            os.replace(tmp / name, out / name)
        write_json_atomic(out / DONE_FILE, {"fingerprint": fingerprint, "files": files, "summary": summary})
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(out / CHECKPOINTS, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
