"""drift-lite: DRIFT (decoupled rollouts + importance-weighted fine-tuning) on one GPU or a CPU.

    import drift_lite as dl
    recipe = dl.load_recipe("toy")
    dl.run(recipe, "runs/toy-drift")

The functions mirror the `drift-lite` commands one for one (drift_lite/api.py). The method's steps live in
modules named for them: rollouts, weights, training, evaluation, reporting (pipeline chains them).
"""

from drift_lite.api import check, evaluate, load_recipe, merge, report, rollout, run, train, weight
from drift_lite.errors import UserError
from drift_lite.quiet import quiet_known_noise
from drift_lite.recipe import Recipe, WeightsConfig

# Two known, harmless messages silenced at their source before bitsandbytes or peft load: see quiet.py.
quiet_known_noise()

__version__ = "0.1.0"

__all__ = [
    "Recipe",
    "UserError",
    "WeightsConfig",
    "__version__",
    "check",
    "evaluate",
    "load_recipe",
    "merge",
    "report",
    "rollout",
    "run",
    "train",
    "weight",
]
