"""`drift-lite compare SPEC --out DIR`: methods × seeds through `drift-lite run`, then one results table.

A spec (YAML) names the methods (a recipe and overrides each), the seeds, overrides for all, and the method
the paired differences are taken against:

    methods:
      drift: {recipe: drift.yaml, label: DRIFT}
      rft: {recipe: rft.yaml, overrides: ["train.epochs=3"]}
    seeds: [0, 1, 2]
    overrides: []
    reference_method: drift

Each method × seed runs into `DIR/runs/<method>-s<seed>` (`seed=S train.seed=S` appended to its overrides).
A run that finished with the same resolved recipe is skipped without loading anything (the ledger
`DIR/compare-runs.json`); any other goes to `pipeline.run`, which itself skips complete steps, so a killed
compare resumes where it stopped. Methods whose rollout settings are equal (they differ only in weights or
training) share one rollout per seed: the finished rollout is copied into the new run folder before it starts.

Results (`results.json`, `results.md`, `plots/`) are computed from the run folders alone by
`write_results`, which stores every per-seed value it averages (see drift_lite/compare_stats.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from drift_lite.compare_stats import run_name
from drift_lite.errors import UserError
from drift_lite.files import atomic_writer, read_json, settings_hash, write_json_atomic
from drift_lite.recipe import Recipe, load_recipe, resolve_source

LEDGER = "compare-runs.json"
LOG = "compare-log.txt"
SPEC_KEYS = {"methods", "seeds", "overrides", "reference_method", "eval_set", "share_rollouts"}
METHOD_KEYS = {"recipe", "overrides", "label"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# pipeline.run's signature: (recipe, out_dir, *, recipe_path, force, show_progress)
Runner = Callable[..., Path]


@dataclass
class Method:
    """One method of a comparison: a recipe file and the overrides that make it this method."""

    name: str
    recipe: str
    overrides: list[str] = field(default_factory=list)
    label: str = ""


@dataclass
class Spec:
    """A comparison: methods × seeds, overrides for all, the method paired differences are taken against."""

    path: Path
    methods: list[Method]
    seeds: list[int]
    overrides: list[str]
    reference_method: str
    eval_set: str | None = None  # the `<set>` of eval-<set>.json; None: each run's first eval set
    share_rollouts: bool = True

    def method(self, name: str) -> Method:
        """The method called `name`."""
        return next(m for m in self.methods if m.name == name)


def _strings(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}: expected a list of key=value strings")
    return list(value)


def load_spec(path: str | Path) -> Spec:
    """Read and check a compare spec; recipe paths are resolved against the cwd, then the spec's folder."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read compare spec ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a mapping (methods, seeds, ...)")
    unknown = sorted(set(data) - SPEC_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key '{unknown[0]}' (expected {', '.join(sorted(SPEC_KEYS))})")
    raw = data.get("methods")
    if not isinstance(raw, dict) or not raw:
        raise UserError(f"{path}: key 'methods': expected a mapping name -> {{recipe, overrides, label}}")
    methods = []
    for name, body in raw.items():
        where = f"{path}: methods.{name}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise UserError(f"{path}: method name {name!r}: use letters, digits, '-', '_' or '.'")
        if not isinstance(body, dict) or not isinstance(body.get("recipe"), str):
            raise UserError(f"{where}: expected a mapping with a 'recipe' path")
        bad = sorted(set(body) - METHOD_KEYS)
        if bad:
            raise UserError(f"{where}: unknown key '{bad[0]}' (expected recipe, overrides, label)")
        recipe = resolve_source(body["recipe"], path.parent)
        label = body.get("label", name)
        if not isinstance(label, str):
            raise UserError(f"{where}.label: expected a string")
        methods.append(Method(name, recipe, _strings(body.get("overrides"), f"{where}.overrides"), label))
    seeds = data.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise UserError(f"{path}: key 'seeds': expected a list of distinct integers")
    reference = data.get("reference_method", methods[0].name)
    if reference not in {m.name for m in methods}:
        raise UserError(f"{path}: key 'reference_method': {reference!r} is not one of the methods")
    eval_set = data.get("eval_set")
    if eval_set is not None and not isinstance(eval_set, str):
        raise UserError(f"{path}: key 'eval_set': expected a set name")
    share = data.get("share_rollouts", True)
    if not isinstance(share, bool):
        raise UserError(f"{path}: key 'share_rollouts': expected true or false")
    overrides = _strings(data.get("overrides"), f"{path}: overrides")
    return Spec(path, methods, seeds, overrides, reference, eval_set, share)


def method_recipe(spec: Spec, method: Method, seed: int) -> Recipe:
    """The recipe of one method at one seed: its file, the spec's overrides, its own, then the seed."""
    seeded = [f"seed={seed}", f"train.seed={seed}"]
    return load_recipe(method.recipe, [*spec.overrides, *method.overrides, *seeded])


def _recipe_key(recipe: Recipe) -> str:
    return settings_hash(recipe.to_dict())


def is_finished(run_dir: Path, recipe: Recipe, ledger: dict) -> bool:
    """Whether `run_dir` holds a run of exactly this recipe that went to its end (report written)."""
    entry = ledger.get(run_dir.name) or {}
    if entry.get("recipe") != _recipe_key(recipe) or not entry.get("done"):
        return False
    if not (run_dir / "report.md").is_file():
        return False
    try:
        stored = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return False
    return stored == json.loads(json.dumps(recipe.to_dict()))


def _rollout_key(recipe: Recipe) -> str | None:
    """What a run's rollout file depends on (None: this algorithm has no shareable rollout)."""
    if recipe.algorithm != "weighted_sft":
        return None
    from drift_lite.rollouts import rollout_settings

    return settings_hash(rollout_settings(recipe))


# The rollout of a finished run, as the pipeline leaves it: the file, its side files (settings), the step's
# stamp. Copying these is all pipeline.run needs to skip the step: its stamp is a hash of rollout_settings,
# which the caller has checked are equal. (A `pipeline.run(..., rollout_from=DIR)` parameter would keep this
# in pipeline.py; until it exists, compare copies the files.)
def _share_rollout(donor: Path, target: Path) -> bool:
    """Start `target` (a new run folder) with the finished rollout (and reference evaluation) of `donor`;
    False, with nothing written, when the donor has no stamped rollout to give."""
    stamps = donor / ".stamps"
    if not (donor / "rollouts.jsonl").is_file() or not (stamps / "rollout.json").is_file():
        return False
    tmp = target.with_name(f".{target.name}.seeding")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / ".stamps").mkdir(parents=True)
    for name in ["rollouts.jsonl", *(p.name for p in donor.glob("rollouts.jsonl.*.json"))]:
        shutil.copy2(donor / name, tmp / name)
    shared = ["rollout"]
    # the reference evaluation too: pipeline.run still redoes it if its own settings (eval, env) differ
    if (donor / "eval-reference").is_dir() and (stamps / "eval-reference.json").is_file():
        shutil.copytree(donor / "eval-reference", tmp / "eval-reference")
        shared.append("eval-reference")
    for step in shared:
        shutil.copy2(stamps / f"{step}.json", tmp / ".stamps" / f"{step}.json")
    # The cost of a shared step is charged to every run that uses it, measured once.
    timings = read_json(donor / "timings.json") or {}
    copied = {
        s: {**timings[s], "shared_from": donor.name} for s in shared if isinstance(timings.get(s), dict)
    }
    write_json_atomic(tmp / "timings.json", copied)
    os.replace(tmp, target)
    return True


def compare(
    spec_path: str | Path,
    out_dir: str | Path,
    *,
    show_progress: bool = True,
    runner: Runner | None = None,
) -> Path:
    """Run every method × seed of the spec into `out_dir/runs/` (resumable), then write the results;
    returns the path of results.md. `runner` replaces `drift_lite.pipeline.run` (tests)."""
    spec = load_spec(spec_path)
    out = Path(out_dir)
    recipes = {(m.name, s): method_recipe(spec, m, s) for s in spec.seeds for m in spec.methods}
    if runner is None:
        from drift_lite.pipeline import run as runner
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out}: cannot create the compare folder ({e.strerror or e})") from None
    ledger_path = out / LEDGER
    ledger = read_json(ledger_path) or {}
    donors: dict[str, Path] = {}  # rollout key -> a finished run folder with that rollout
    for seed in spec.seeds:
        for method in spec.methods:
            recipe = recipes[(method.name, seed)]
            name = run_name(method.name, seed)
            run_dir = out / "runs" / name
            key = _rollout_key(recipe) if spec.share_rollouts else None
            if is_finished(run_dir, recipe, ledger):
                _say(out, show_progress, f"[compare] {name}: finished, skipped")
            else:
                # compare owns the folders it made (ledger) or seeded: pipeline.run may reuse them even when a
                # method's recipe name changed; its stamps redo whatever the new settings touch
                ours = name in ledger
                ledger[name] = {"recipe": _recipe_key(recipe), "done": False}  # before the folder is made
                write_json_atomic(ledger_path, ledger)
                if not run_dir.exists() and key in donors and _share_rollout(donors[key], run_dir):
                    ours = True
                    _say(out, show_progress, f"[compare] {name}: rollout shared with {donors[key].name}")
                _say(out, show_progress, f"[compare] {name}: running")
                runner(
                    recipe,
                    run_dir,
                    recipe_path=method.recipe,
                    force=ours,
                    show_progress=show_progress,
                )
                ledger[name]["done"] = True
                write_json_atomic(ledger_path, ledger)
            if key is not None:
                donors.setdefault(key, run_dir)
    return write_results(spec, out, recipes)


def write_results(spec: Spec | str | Path, out_dir: str | Path, recipes: dict | None = None) -> Path:
    """results.json, results.md and plots/ of a comparison, from its run folders; returns results.md."""
    from drift_lite.compare_markdown import markdown
    from drift_lite.compare_plots import write_plots
    from drift_lite.compare_stats import collect

    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    out = Path(out_dir)
    if recipes is None:
        recipes = {(m.name, s): method_recipe(spec, m, s) for s in spec.seeds for m in spec.methods}
    results = collect(spec, out, recipes)
    plots = write_plots(results, out / "plots")
    results["plots"] = plots
    write_json_atomic(out / "results.json", results)
    path = out / "results.md"
    with atomic_writer(path) as handle:
        handle.write(markdown(results).encode("utf-8"))
    return path


def _say(out: Path, show: bool, line: str) -> None:
    """Append a timestamped line to DIR/compare-log.txt; print it too when showing progress."""
    line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}"
    with open(out / LOG, "a") as handle:
        handle.write(line + "\n")
    if show:
        print(line, flush=True)
