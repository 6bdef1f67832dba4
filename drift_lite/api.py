"""The public Python API: one function per CLI command, in the method's order.

    import drift_lite as dl

    recipe = dl.load_recipe("toy", ["task.size=32"])          # a packaged recipe by name, or a YAML path
    dl.rollout(recipe, "runs/x/rollouts.jsonl")                 # 1. decoupled rollouts of the reference
    dl.weight("runs/x/rollouts.jsonl", "runs/x/weighted.jsonl", recipe.weights)  # 2-3. returns, weights
    dl.train(recipe, "runs/x/weighted.jsonl", "runs/x/adapter")  # 4. weighted SFT of QLoRA adapters
    dl.evaluate(recipe, "runs/x/eval-trained", adapter="runs/x/adapter")  # 5. multi-turn evaluation
    dl.report(["runs/x"], "runs/x")                             # report.md + plots/
    dl.run(recipe, "runs/y")                                    # all of it, resumable, in one run folder

Every function takes a `Recipe` or a recipe path/name where a recipe is needed, and raises
`drift_lite.UserError` (one line) for a user mistake. Heavy libraries load on first call, not on import.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from drift_lite.recipe import Recipe, WeightsConfig
from drift_lite.recipe import load_recipe as _load_recipe

PathLike = str | os.PathLike[str]
RecipeLike = Recipe | PathLike


def load_recipe(recipe: PathLike | None = None, overrides: Sequence[str] = ()) -> Recipe:
    """A recipe from a YAML path or a packaged name, with `key.sub=value` overrides; None: the defaults.

    >>> recipe = dl.load_recipe("toy", ["weights.beta=0.3", "seed=1"])
    """
    return _load_recipe(recipe, list(overrides))


def _recipe(recipe: RecipeLike) -> Recipe:
    return recipe if isinstance(recipe, Recipe) else load_recipe(recipe)


def rollout(
    recipe: RecipeLike, out: PathLike, *, shard: tuple[int, int] | None = None, show_progress: bool = True
) -> dict:
    """Sample N multi-turn trajectories per prompt from the reference into a JSONL file (resumable);
    `shard=(i, n)`: only the prompts at positions i, i+n, ... (join the parts with `merge`).

    >>> dl.rollout("toy", "rollouts.jsonl")  # {'prompts': 256, 'generated_tokens': ..., 'engine': {...}}
    """
    from drift_lite.rollouts import rollout as _rollout

    return _rollout(_recipe(recipe), out, shard=shard, show_progress=show_progress)


def merge(parts: Sequence[PathLike], out: PathLike) -> dict:
    """Join shards into what one process writes: rollout files into one file in the kit's prompt order, or
    evaluation part folders (`evaluate(..., shard=...)`) into one eval folder; refuses a duplicated or missing
    prompt, an incomplete group, an unfinished part and parts of other settings.

    >>> dl.merge(["part0.jsonl", "part1.jsonl"], "rollouts.jsonl")  # {'prompts': 256, ...}
    >>> dl.merge(["eval-0", "eval-1"], "eval-trained")["sets"]["toy"]["metrics"]  # folders: an evaluation
    """
    from drift_lite.errors import UserError

    missing = [os.fspath(p) for p in parts if not os.path.exists(p)]
    if missing:
        raise UserError(f"merge: no such part: {', '.join(missing)}")
    folders = [os.path.isdir(p) for p in parts]
    if parts and all(folders):
        from drift_lite.evaluation import merge_evals

        return merge_evals(list(parts), out)
    if any(folders):
        raise UserError("merge: give rollout part files or evaluation part folders, not both")
    from drift_lite.shards import merge as _merge

    return _merge(list(parts), out)


def weight(
    rollouts: PathLike,
    out: PathLike,
    settings: WeightsConfig | None = None,
    *,
    show_progress: bool = True,
    **overrides: object,
) -> dict:
    """Returns and per-prompt self-normalized weights: `rollouts` rows plus `return` and `weight`.

    >>> dl.weight("rollouts.jsonl", "weighted.jsonl", beta=0.1, gamma=0.9)  # -> diagnostics dict
    """
    from drift_lite.weights import weight_file

    return weight_file(rollouts, out, settings, show_progress=show_progress, **overrides)


def train(
    recipe: RecipeLike, data: PathLike, out: PathLike, *, show_progress: bool = True, force: bool = False
) -> dict:
    """Weighted SFT of (QLoRA) adapters on the last assistant message of each weighted row (resumable).

    >>> dl.train("toy", "weighted.jsonl", "adapter")  # adapter/ loads with PeftModel.from_pretrained
    """
    from drift_lite.training import train as _train

    return _train(_recipe(recipe), data, out, show_progress=show_progress, force=force)


def evaluate(
    recipe: RecipeLike,
    out: PathLike,
    *,
    adapter: PathLike | None = None,
    show_progress: bool = True,
    shard: tuple[int, int] | None = None,
) -> dict:
    """Multi-turn evaluation of the reference (or reference + `adapter`): eval-<set>.json(l) in `out`;
    `shard=(i, n)`: only the problems at positions i, i+n, ... into the part folder `out` (join with `merge`).

    >>> dl.evaluate("toy", "eval-trained", adapter="adapter")["toy"]["metrics"]["multi@5"]
    """
    from drift_lite.evaluation import evaluate as _evaluate

    return _evaluate(
        _recipe(recipe),
        out,
        adapter=os.fspath(adapter) if adapter is not None else None,
        show_progress=show_progress,
        shard=shard,
    )


def report(run_dirs: Sequence[PathLike] | PathLike, out: PathLike, *, plots: bool = True) -> Path:
    """`report.md` and `plots/*.png` across run directories; returns the report's path.

    >>> dl.report(["runs/toy-drift", "runs/toy-sft"], "reports/compare")
    """
    from drift_lite.reporting import write_report

    dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    return write_report([Path(d) for d in dirs], Path(out), plots=plots)


def run(
    recipe: RecipeLike,
    out: PathLike,
    *,
    force: bool = False,
    show_progress: bool = True,
    recipe_path: str | None = None,
    processes: int = 1,
) -> Path:
    """The whole method in one run folder, skipping finished steps; returns the report's path.
    `processes=N`: rollout, training (DDP) and evaluation in N local processes (`drift_lite.processes`).

    >>> dl.run("toy", "runs/toy-drift")  # rollout → weight → train → eval-reference/-trained → report
    """
    from drift_lite.pipeline import run as _run

    path = recipe_path or (None if isinstance(recipe, Recipe) else os.fspath(recipe))
    return _run(
        _recipe(recipe), out, recipe_path=path, force=force, show_progress=show_progress, processes=processes
    )


def check(recipe: RecipeLike) -> str:
    """Validate a recipe, resolve its data, and return the plan (sizes, tokens, memory and time estimates).

    >>> print(dl.check("paper/qwen2.5-3b-metamathqa"))
    """
    from drift_lite.models import announce_remote_code
    from drift_lite.plan_format import check as _check

    recipe = _recipe(recipe)
    announce_remote_code(recipe.model)  # `model.trust_remote_code: true` is said on stderr before anything
    return _check(recipe)
