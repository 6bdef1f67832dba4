"""Reading run directories for the report: what each stage wrote, partial runs included.

A run directory may be partial (a killed or still-running job): `load_run` reads what exists and lists what
is missing. Files are read as they are written by the other stages:

- ``recipe.yaml`` (name, model, task, seed), ``rollouts.jsonl``, ``weighted.jsonl`` (only ``weight`` is read,
  streamed) and its diagnostics JSON, ``adapter/train_log.jsonl`` (``step``/``loss`` per logging step),
- ``eval-<label>/eval-<set>.json`` for every label folder (reference, trained, baselines...),
- ``timings.json`` (``{stage: {seconds, generated_tokens?}}``).
"""

from __future__ import annotations

import json
import math
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drift_lite import records
from drift_lite.errors import UserError
from drift_lite.files import read_json

WEIGHT_SAMPLE = 200_000  # weights kept for the histogram; larger files are reservoir-sampled
DIAGNOSTICS_NAMES = ("weighted.diagnostics.json", "weighted.jsonl.diagnostics.json")
EXPECTED = (
    "recipe.yaml",
    "rollouts.jsonl",
    "weighted.jsonl",
    "weighted.diagnostics.json",
    "adapter/train_log.jsonl",
    "eval-reference/",
    "eval-trained/",
    "timings.json",
)
LABEL_ORDER = ("reference", "trained")
_WEIGHT_TAIL = re.compile(rb'"weight":\s*(-?[0-9][0-9.eE+-]*)\s*}\s*$')


@dataclass
class RunSummary:
    """What one run directory holds, read into memory (except the weighted rows, which stay on disk)."""

    path: Path
    name: str
    model: str | None = None
    task: str | None = None
    seed: object = None
    evals: dict[str, dict[str, dict]] = field(default_factory=dict)  # label -> set -> metrics
    diagnostics: dict | None = None
    losses: list[tuple[float, float]] = field(default_factory=list)  # (step, loss)
    bad_log_lines: int = 0
    timings: dict | None = None
    weighted_path: Path | None = None
    missing: list[str] = field(default_factory=list)

    def labels(self) -> list[str]:
        """Eval labels: reference, trained, then the others alphabetically."""
        return sorted(self.evals, key=label_key)

    def eval_sets(self) -> list[str]:
        """Every eval set name seen under any label, sorted."""
        return sorted({s for sets in self.evals.values() for s in sets})


def label_key(label: str) -> tuple[int, str]:
    """Sort key of an eval label: reference, trained, then the others alphabetically."""
    return (LABEL_ORDER.index(label) if label in LABEL_ORDER else len(LABEL_ORDER), label)


# ---------------------------------------------------------------------------------------------------------
# Reading a run directory


def _read_json(path: Path) -> object:
    data = read_json(path)
    if data is None:  # read_json gives None for an unreadable file or invalid JSON
        raise UserError(f"{path}: cannot read JSON (unreadable or not valid JSON)")
    return data


def _one_line(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).splitlines()[0][:120]


def _read_recipe(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{path}: cannot read recipe ({_one_line(exc)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping at the top level")
    return data


def _section_name(value: object) -> str | None:
    """`model: {name: x}` or `model: x` → x."""
    if isinstance(value, dict):
        value = value.get("name")
    return None if value is None else str(value)


def _read_train_log(path: Path) -> tuple[list[tuple[float, float]], int]:
    """(step, loss) pairs; lines that do not parse are counted, not fatal (a killed run cuts the last one)."""
    losses: list[tuple[float, float]] = []
    bad = 0
    with path.open("rb") as handle:
        for index, raw in enumerate(handle):
            if raw.isspace():
                continue
            try:
                entry = json.loads(raw)
            except ValueError:
                bad += 1
                continue
            loss = entry.get("loss") if isinstance(entry, dict) else None
            if not is_number(loss) or not math.isfinite(loss):
                continue  # e.g. an end-of-training summary line without a per-step loss
            step = entry.get("step", index)
            losses.append((float(step) if is_number(step) else float(index), float(loss)))
    return losses, bad


def is_number(value: object) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read_evals(run_dir: Path) -> dict[str, dict[str, dict]]:
    evals: dict[str, dict[str, dict]] = {}
    for folder in sorted(p for p in run_dir.glob("eval-*") if p.is_dir()):
        sets = {}
        for path in sorted(folder.glob("eval-*.json")):
            data = _read_json(path)
            if isinstance(data, dict):
                sets[path.stem[len("eval-") :]] = data
        if sets:
            evals[folder.name[len("eval-") :]] = sets
    return evals


def load_run(run_dir: str | Path) -> RunSummary:
    """Read a run directory (partial is fine); UserError if it is missing or holds none of a run's files."""
    path = Path(run_dir)
    if not path.is_dir():
        what = "not a directory" if path.exists() else "no such run directory"
        raise UserError(f"{path}: {what}")
    recipe_path = path / "recipe.yaml"
    recipe = _read_recipe(recipe_path) if recipe_path.is_file() else {}
    run = RunSummary(
        path=path,
        name=str(recipe.get("name") or path.name),
        model=_section_name(recipe.get("model")),
        task=_section_name(recipe.get("task")),
        seed=recipe.get("seed"),
        evals=_read_evals(path),
    )
    diagnostics = next((path / n for n in DIAGNOSTICS_NAMES if (path / n).is_file()), None)
    if diagnostics is not None:
        data = _read_json(diagnostics)
        run.diagnostics = data if isinstance(data, dict) else {"value": data}
    log = path / "adapter" / "train_log.jsonl"
    if log.is_file():
        run.losses, run.bad_log_lines = _read_train_log(log)
    if (path / "timings.json").is_file():
        data = _read_json(path / "timings.json")
        run.timings = data if isinstance(data, dict) else None
    if (path / "weighted.jsonl").is_file():
        run.weighted_path = path / "weighted.jsonl"
    present = {
        "recipe.yaml": recipe_path.is_file(),
        "rollouts.jsonl": (path / "rollouts.jsonl").is_file(),
        "weighted.jsonl": run.weighted_path is not None,
        "weighted.diagnostics.json": diagnostics is not None,
        "adapter/train_log.jsonl": log.is_file(),
        "eval-reference/": "reference" in run.evals,
        "eval-trained/": "trained" in run.evals,
        "timings.json": run.timings is not None,
    }
    if (path / "online" / "curve.jsonl").is_file():  # an online RL run: no rollout, weights or SFT log
        for name in EXPECTED[1:5]:  # rollouts, weighted rows, their diagnostics, the SFT log
            present.pop(name)
    run.missing = [name for name in EXPECTED if not present.get(name, True)]
    if not any(present.values()) and not run.evals:
        raise UserError(f"{path}: not a run directory (none of {', '.join(EXPECTED)} found)")
    return run


def iter_weights(path: Path) -> Iterator[float]:
    """Stream the `weight` of each row of a weighted JSONL, parsing only the line's tail when possible."""
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, 1):
            if raw.isspace():
                continue
            # weights.py appends `"return": R, "weight": w}` to each line: read that without parsing messages.
            match = _WEIGHT_TAIL.search(raw[-80:])
            if match is not None:
                try:
                    yield float(match.group(1))
                    continue
                except ValueError:
                    pass
            row = records.parse_json_line(raw, f"{path}:{lineno}")
            weight = row.get("weight") if isinstance(row, dict) else None
            if not is_number(weight):
                raise UserError(f"{path}:{lineno}: field 'weight': missing or not a number")
            yield float(weight)


def sample_weights(path: Path, cap: int = WEIGHT_SAMPLE, seed: int = 0) -> tuple[list[float], int]:
    """(at most `cap` weights, reservoir-sampled with a fixed seed, total rows) of a weighted JSONL."""
    rng = random.Random(seed)
    sample: list[float] = []
    count = 0
    for weight in iter_weights(path):
        count += 1
        if len(sample) < cap:
            sample.append(weight)
        else:
            j = rng.randrange(count)
            if j < cap:
                sample[j] = weight
    return sample, count
