"""The task registry: problem sources by name, answer checkers by name, default checkers and feedback.

`toy` is the embedded default and `arith` plain additions for real small chat models (both synthetic, no
download, with worked examples for `env.shots`); the others load real datasets from a hub id or a local
json/jsonl/csv/parquet file in the dataset's own schema.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from drift_lite.errors import UserError
from drift_lite.tasks.base import Checker, ExactChecker, Problem

# generated here (module drift_lite.tasks.<name>): train/eval splits, a default checker, worked examples
SYNTHETIC = ("toy", "arith", "arith_choice")
_FAMILY_MODULES = ["drift_lite.tasks.math", "drift_lite.tasks.choice", "drift_lite.tasks.tools"]


def _registry() -> tuple[dict, dict]:
    loaders, checkers = {}, {}
    for name in _FAMILY_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        loaders.update(module.LOADERS)
        checkers.update(module.DEFAULT_CHECKER)
    return loaders, checkers


def task_names() -> list[str]:
    """Every task a recipe can name."""
    return [*SYNTHETIC, *sorted(_registry()[0])]


def load_problems(task: str, split: str, source: str | None, size: int | None, seed: int) -> list[Problem]:
    """The problems of `task` (`split` is "train" or "eval"; real datasets have one split per name)."""
    if task in SYNTHETIC:
        module = importlib.import_module(f"drift_lite.tasks.{task}")
        problems = module.load(split, size, seed)
    else:
        loaders, _ = _registry()
        if task not in loaders:
            raise UserError(f"unknown task '{task}' (known: {', '.join(task_names())})")
        problems = loaders[task](source, size, seed)
    if not problems:
        raise UserError(f"task '{task}' ({source or 'default source'}): no problems")
    return problems


def checker_for(task: str, name: str | None) -> Checker:
    """The checker named in the recipe, else the task's default (`exact` for the synthetic tasks)."""
    if name is None and task in SYNTHETIC:
        return importlib.import_module(f"drift_lite.tasks.{task}").checker()
    if name is None:
        name = _registry()[1].get(task, "exact")
    if name == "exact":
        return ExactChecker()
    return get_checker(name)


# Each checker lives beside its task family; imported on first use (math-verify pulls in sympy).
CHECKERS: dict[str, tuple[str, str]] = {
    "exact": ("drift_lite.tasks.base", "ExactChecker"),
    "math-verify": ("drift_lite.tasks.math_check", "MathVerifyChecker"),
    "letter": ("drift_lite.tasks.choice", "LetterChecker"),
    "numeric": ("drift_lite.tasks.math_check", "NumericChecker"),
    "tools": ("drift_lite.tasks.tools", "ToolChecker"),
}


def get_checker(name: str) -> Checker:
    """A checker by name; an unknown name is a UserError listing the known ones."""
    if name not in CHECKERS:
        raise UserError(f"unknown checker '{name}' (known: {', '.join(CHECKERS)})")
    module, cls = CHECKERS[name]
    return getattr(importlib.import_module(module), cls)()


def feedback_for(task: str) -> Callable[[str | None, str], str] | None:
    """Task-specific feedback after a wrong answer (tool calls); None means the release's unary message."""
    if task == "mtu_bench":
        from drift_lite.tasks import tools

        return tools.feedback_for
    return None
