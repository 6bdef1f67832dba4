"""drift-lite: DRIFT (decoupled rollouts + importance-weighted fine-tuning) on one GPU or a CPU."""

__version__ = "0.1.0"
