"""drift-lite: DRIFT (decoupled rollouts + importance-weighted fine-tuning) on one GPU or a CPU.

The public functions (`load_recipe`, `rollout`, `weight`, `train`, `evaluate`, `report`, `run`, `check`)
mirror the `drift-lite` commands one for one: `drift_lite/api.py`.
"""

__version__ = "0.1.0"
