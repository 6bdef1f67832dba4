"""Recipes: YAML + overrides into dataclasses; unknown keys and wrong types are one-line errors."""

import pytest
import yaml

from drift_lite.errors import UserError
from drift_lite.recipe import dump_recipe, load_recipe


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: t\ntrain:\n  lr: 1e-4\n  target_modules: [q_proj]\n"
        "eval:\n  sets:\n    - {task: toy, size: 8}\n"
    )
    recipe = load_recipe(path, ["train.batch_size=4", "weights.beta=0.2", "eval.greedy=false"])
    assert recipe.train.lr == 1e-4 and isinstance(recipe.train.lr, float)
    assert recipe.train.batch_size == 4 and recipe.weights.beta == 0.2 and recipe.eval.greedy is False
    assert recipe.eval.sets[0].size == 8 and recipe.train.target_modules == ["q_proj"]


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown key 'train.lrr' (did you mean 'train.lr'?)"),
        ("trian.lr=1", "unknown key 'trian' (did you mean 'train'?)"),
        ("train.lr=fast", "key 'train.lr': expected float, got str 'fast'"),
        ("train.batch_size=true", "key 'train.batch_size': expected int, got bool True"),
        ("train=3", "key 'train': expected a mapping, got int"),
        ("weights.beta=0", "key 'weights.beta': must be > 0"),
        ("weights.gamma=1.5", "key 'weights.gamma': must be in (0, 1]"),
        ("model.quantization=nf8", "key 'model.quantization': expected one of"),
        ("novalue", "override 'novalue': expected key.sub=value"),
    ],
)
def test_bad_keys_and_types_are_one_line_errors(override, message):
    with pytest.raises(UserError) as info:
        load_recipe(None, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("rollout:\n  n_sample: 3\n")
    with pytest.raises(
        UserError, match=r"bad.yaml: unknown key 'rollout.n_sample' \(did you mean 'rollout.n_samples'"
    ):
        load_recipe(path)
    path.write_text("a: [\n")
    with pytest.raises(UserError, match="bad.yaml:.*not valid YAML"):
        load_recipe(path)
    with pytest.raises(UserError, match="missing.yaml: cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(None, ["train.lr=3e-4", "name=x"])
    dump_recipe(recipe, tmp_path / "recipe.yaml", extra={"torch": "2.13"})
    again = load_recipe(tmp_path / "recipe.yaml")
    assert again == recipe
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["train"]["lr"] == 3e-4
    assert recipe.fingerprint("train") != load_recipe(None, ["train.lr=1e-3"]).fingerprint("train")
