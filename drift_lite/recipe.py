"""Recipes: one YAML file per run (or a packaged recipe by name), read into dataclasses, with `key.sub=value`
overrides. The sections and their defaults are in recipe_schema.py.

Unknown keys, wrong types and every value a run would fail on or misuse (recipe_checks.py: choices, ranges,
finiteness, absurd sizes, names that become files, keys that contradict each other) are one-line errors that
name the file and the key, raised when the recipe is loaded, before any data or model is read.

A relative data `source` (task.source, eval.sets[i].source) is read relative to the current directory when
it exists there, else relative to the recipe file's folder when the file exists there (it is then stored
as an absolute path); otherwise it is kept as given: a hub id such as `openai/gsm8k` looks like a relative
path too, so it is only rewritten when the file actually exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from drift_lite.errors import UserError
from drift_lite.files import atomic_writer
from drift_lite.recipe_checks import (  # noqa: F401 (re-exported: the kit imports them from here)
    CHOICES,
    LR_SCHEDULERS,
    RANGES,
    SAFE_NAME,
    WEIGHT_SCHEMES,
    Range,
    build_typed,
    check_recipe,
    check_weights,
)
from drift_lite.recipe_files import find_recipe
from drift_lite.recipe_schema import (  # noqa: F401 (re-exported)
    EnvConfig,
    EvalConfig,
    EvalSetConfig,
    ModelConfig,
    OnlineConfig,
    Recipe,
    ReportConfig,
    RolloutConfig,
    TaskConfig,
    ToyConfig,
    TrainConfig,
    WeightsConfig,
)


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
    recipe = build_typed(Recipe, data, where, "")
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
