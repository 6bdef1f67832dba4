"""recipe_files: packaged recipes found by name, paths winning, unknown names refused in one line."""

from pathlib import Path

import pytest
import yaml

from drift_lite.errors import UserError
from drift_lite.recipe_files import RECIPES, find_recipe, list_recipes

REPO = Path(__file__).resolve().parents[1]


def test_list_recipes_names_every_packaged_yaml():
    names = list_recipes()
    assert {"toy/drift", "paper/qwen2.5-3b-metamathqa", "cpu/smollm2-arith"} <= set(names)
    assert names == sorted(names) and len(names) == len(list(RECIPES.rglob("*.yaml")))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("toy", "toy/drift.yaml"),
        ("toy/drift", "toy/drift.yaml"),
        ("toy/drift.yaml", "toy/drift.yaml"),
        ("paper/qwen2.5-3b-metamathqa", "paper/qwen2.5-3b-metamathqa.yaml"),
        ("cpu/smollm2-arith.yaml", "cpu/smollm2-arith.yaml"),
    ],
)
def test_find_recipe_by_name(name, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no file of that name here: the packaged one is found
    found = find_recipe(name)
    assert found == RECIPES / expected and found.is_file()


def test_an_existing_path_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "toy").write_text("name: mine\n")
    assert find_recipe("toy") == Path("toy")
    own = tmp_path / "r.yaml"
    own.write_text("name: mine\n")
    assert find_recipe(str(own)) == own


def test_unknown_name_is_one_line_listing_the_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for bad in ("nope", "toy/nope", "paper", ""):
        with pytest.raises(UserError) as info:
            find_recipe(bad)
        message = str(info.value)
        assert "\n" not in message and "toy/drift" in message and "cpu/smollm2-arith" in message


def test_clone_links_point_into_the_package():
    # `recipes/toy/drift.yaml` and `data/fixtures/...` keep working from a clone
    assert (REPO / "recipes").resolve() == RECIPES
    assert (REPO / "recipes" / "toy" / "drift.yaml").is_file()
    assert (REPO / "data").resolve() == RECIPES.parent / "data"


def test_packaged_sources_exist():
    # a packaged recipe's local `source:` files ship with it (they are resolved beside the recipe)
    for name in list_recipes():
        path = find_recipe(name)
        data = yaml.safe_load(path.read_text()) or {}
        sets = [data.get("task") or {}, *((data.get("eval") or {}).get("sets") or [])]
        for entry in sets:
            source = entry.get("source")
            if source and Path(source).suffix in (".json", ".jsonl", ".csv", ".parquet"):  # a local file
                assert (path.parent / source).resolve().is_file(), f"{name}: {source} missing"
