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
        ("weights.beta=0", "key 'weights.beta': must be a finite number > 0"),
        ("weights.gamma=1.5", "key 'weights.gamma': must be a number in (0, 1]"),
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
    with pytest.raises(UserError, match="missing.yaml.: no such file"):
        load_recipe(tmp_path / "missing.yaml")


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(None, ["train.lr=3e-4", "name=x"])
    dump_recipe(recipe, tmp_path / "recipe.yaml", extra={"torch": "2.13"})
    again = load_recipe(tmp_path / "recipe.yaml")
    assert again == recipe
    assert yaml.safe_load((tmp_path / "recipe.yaml").read_text())["train"]["lr"] == 3e-4
    assert recipe.fingerprint("train") != load_recipe(None, ["train.lr=1e-3"]).fingerprint("train")


@pytest.mark.parametrize(
    "override, key",
    [
        ("rollout.batch_size=0", "rollout.batch_size"),
        ("rollout.max_new_tokens=0", "rollout.max_new_tokens"),
        ("rollout.top_p=0", "rollout.top_p"),
        ("rollout.top_p=1.01", "rollout.top_p"),
        ("eval.batch_size=0", "eval.batch_size"),
        ("eval.max_new_tokens=-1", "eval.max_new_tokens"),
        ("eval.top_p=0", "eval.top_p"),
        ("eval.top_p=2", "eval.top_p"),
        ("eval.temperature=0", "eval.temperature"),
        ("eval.repeats=0", "eval.repeats"),
        ("eval.sets=[{task: toy, size: 0}]", "eval.sets[0].size"),
        ("train.lr=0", "train.lr"),
        ("train.lr=-1e-5", "train.lr"),
        ("train.epochs=0", "train.epochs"),
        ("train.lora_r=0", "train.lora_r"),
        ("train.max_length=15", "train.max_length"),
        ("task.size=0", "task.size"),
        ("env.shots=-1", "env.shots"),
    ],
)
def test_out_of_range_values_are_one_line_errors_naming_the_key(override, key):
    with pytest.raises(UserError) as info:
        load_recipe(None, [override])
    message = str(info.value)
    assert f"key '{key}': must be" in message and "\n" not in message


@pytest.mark.parametrize(
    "overrides",
    [
        ["rollout.batch_size=1", "rollout.max_new_tokens=1", "rollout.top_p=1", "rollout.top_p=0.01"],
        ["eval.batch_size=1", "eval.max_new_tokens=1", "eval.top_p=1", "eval.temperature=0.01"],
        ["eval.repeats=1", "eval.sets=[{task: toy, size: null}]", "eval.sets=[{task: toy, size: 1}]"],
        ["train.lr=1e-9", "train.lora_r=1", "train.max_length=16", "task.size=null", "task.size=1"],
        ["env.shots=0", "train.epochs=0", "train.max_steps=10"],
    ],
)
def test_boundary_values_are_accepted(overrides):
    load_recipe(None, overrides)


def _recipe_with_sources(folder, task_source: str, eval_source: str):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "task": {"name": "gsm8k", "source": task_source},
                "eval": {"sets": [{"task": "mtu_bench", "source": eval_source}]},
            }
        )
    )
    return path


def test_relative_sources_resolve_against_the_recipe_folder(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes" / "x"
    (recipes / "data").mkdir(parents=True)
    (recipes / "data" / "train.jsonl").write_text("{}\n")
    (recipes / "data" / "tools.jsonl").write_text("{}\n")
    path = _recipe_with_sources(recipes, "data/train.jsonl", "data/tools.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    recipe = load_recipe(path)
    assert recipe.task.source == str(recipes / "data" / "train.jsonl")
    assert recipe.eval.sets[0].source == str(recipes / "data" / "tools.jsonl")
    # the same through a relative recipe path: stored absolute, so it works from any folder later
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe("recipes/x/r.yaml")
    assert recipe.task.source == str(recipes / "data" / "train.jsonl")


def test_a_source_in_the_current_directory_is_kept_as_given(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    (recipes / "data").mkdir(parents=True)
    (recipes / "data" / "train.jsonl").write_text("{}\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("{}\n")
    path = _recipe_with_sources(recipes, "data/train.jsonl", "data/train.jsonl")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path)
    assert recipe.task.source == "data/train.jsonl" and recipe.eval.sets[0].source == "data/train.jsonl"


def test_hub_ids_and_missing_files_are_left_as_given(tmp_path, monkeypatch):
    path = _recipe_with_sources(tmp_path / "recipes", "openai/gsm8k", "data/missing.jsonl")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(path)
    assert recipe.task.source == "openai/gsm8k" and recipe.eval.sets[0].source == "data/missing.jsonl"


def test_the_paper_extra_evals_recipe_finds_its_fixture_from_the_repo_root(monkeypatch):
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)
    recipe = load_recipe("recipes/paper/qwen2.5-3b-extra-evals.yaml")
    sources = [s.source for s in recipe.eval.sets if s.task == "mtu_bench"]
    assert sources and all((root / s).is_file() for s in sources)


@pytest.mark.parametrize(
    "section, field, value",
    [("rollout", "batch_size", 0), ("rollout", "max_new_tokens", 0), ("rollout", "top_p", 1.5)],
)
def test_rollout_checks_a_recipe_built_in_code_and_writes_nothing(tmp_path, section, field, value):
    import dataclasses

    from drift_lite.recipe import Recipe
    from drift_lite.rollouts import rollout

    recipe = Recipe()
    setattr(recipe, section, dataclasses.replace(getattr(recipe, section), **{field: value}))
    with pytest.raises(UserError) as info:
        rollout(recipe, tmp_path / "rollouts.jsonl", show_progress=False)
    assert f"key '{section}.{field}': must be" in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []
