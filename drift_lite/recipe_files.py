"""Find a recipe by path or by the name of one that ships inside the package (`toy`, `paper/...`, `cpu/...`).

The recipes live in `drift_lite/recipes/` so that a plain `pip install` carries them (a clone also has the
`recipes` link at its root, so `recipes/toy/drift.yaml` keeps working there).
"""

from __future__ import annotations

from pathlib import Path

from drift_lite.errors import UserError

# A wheel installs unzipped, so the package folder is a real directory: a plain Path is enough here
# (importlib.resources would only matter for zip imports, which pip never produces).
RECIPES = Path(__file__).resolve().parent / "recipes"
DEFAULT_FILE = "drift.yaml"  # a folder name alone (`toy`) means the folder's drift.yaml


def list_recipes() -> list[str]:
    """The packaged recipe names, e.g. ['cpu/smollm2-arith', ..., 'toy/drift'] (.yaml may be added)."""
    return sorted(p.relative_to(RECIPES).with_suffix("").as_posix() for p in RECIPES.rglob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    """An existing file, else the packaged recipe of that name: `find_recipe("toy")` -> …/toy/drift.yaml."""
    given = Path(name_or_path)
    if given.is_file():
        return given
    name = name_or_path.strip().strip("/").removesuffix(".yaml")
    for candidate in (RECIPES / f"{name}.yaml", RECIPES / name / DEFAULT_FILE):
        # only names inside the packaged folder count (`../x` is a path that did not exist, not a name)
        if name and candidate.is_file() and candidate.resolve().is_relative_to(RECIPES):
            return candidate
    names = list_recipes()
    shorthands = sorted(n.removesuffix(f"/{Path(DEFAULT_FILE).stem}") for n in names if n.endswith("/drift"))
    raise UserError(
        f"recipe '{name_or_path}': no such file, and no packaged recipe of that name "
        f"(packaged: {', '.join(names)}; short: {', '.join(shorthands)})"
    )
