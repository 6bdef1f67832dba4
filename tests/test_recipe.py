"""Recipes: YAML + overrides into dataclasses; unknown keys and wrong types are one-line errors."""

from pathlib import Path

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


# ---------------------------------------------------------------------------------------------------------
# Every value checked before any work (issue 20): one line naming the key, exit 2, nothing written

TOY_RECIPE = str(Path(__file__).resolve().parent.parent / "recipes" / "toy" / "drift.yaml")

# (overrides, the key the error names, a fragment of its rule)
REFUSED = [
    (["train.lr_scheduler=bogus"], "train.lr_scheduler", "expected one of"),
    (["train.lr_scheduler=reduce_lr_on_plateau"], "train.lr_scheduler", "expected one of"),
    (["train.seed=-1"], "train.seed", ">= 0"),
    (["train.seed=4294967296"], "train.seed", "<= 4294967295 (numpy's seed range"),
    (["seed=-1"], "seed", ">= 0"),
    (["task.seed=-3"], "task.seed", ">= 0"),
    (["env.format_penalty=0.5"], "env.format_penalty", "<= 0"),
    (["env.format_penalty=-.inf"], "env.format_penalty", "finite"),
    (["weights.repeat_coef=-1"], "weights.repeat_coef", ">= 0"),
    (["train.target_modules=[]"], "train.target_modules", "non-empty list"),
    (["train.target_modules=[q_proj, q_proj]"], "train.target_modules[1]", "repeats"),
    (["train.target_modules=['q proj']"], "train.target_modules[0]", "module name"),
    (["train.lora_dropout=1.5"], "train.lora_dropout", "in [0, 1)"),
    (["train.lora_dropout=1"], "train.lora_dropout", "in [0, 1)"),
    (["train.lora_alpha=-16"], "train.lora_alpha", ">= 1"),
    (["train.max_grad_norm=-1"], "train.max_grad_norm", ">= 0"),
    (["train.weight_decay=-0.1"], "train.weight_decay", ">= 0"),
    (["train.warmup_ratio=1.5"], "train.warmup_ratio", "in [0, 1]"),
    (["train.warmup_ratio=-0.1"], "train.warmup_ratio", "in [0, 1]"),
    (["train.lr=.inf"], "train.lr", "in (0, 1]"),
    (["train.lr=.nan"], "train.lr", "in (0, 1]"),
    (["train.lr=10"], "train.lr", "<= 1 (an optimizer step moves each weight by about lr)"),
    (["train.epochs=.inf"], "train.epochs", "in [0, 1000]"),
    (["train.max_steps=-2"], "train.max_steps", ">= -1 (-1 or 0: train.epochs decides)"),
    (["train.save_steps=-1"], "train.save_steps", ">= 0"),
    (["train.max_length=1000000"], "train.max_length", "<= 131072 ("),
    (["toy.hidden_size=0"], "toy.hidden_size", ">= 2"),
    (["toy.heads=3"], "toy.heads", "must divide toy.hidden_size (128)"),
    (["toy.heads=128"], "toy.heads", "even head width"),
    (["toy.heads=0"], "toy.heads", "in [1, 256]"),
    (["toy.kv_heads=3"], "toy.kv_heads", "must divide toy.heads (4)"),
    (["toy.threads=0"], "toy.threads", ">= 1"),
    (["toy.steps=-5"], "toy.steps", ">= 1"),
    (["toy.per_problem=0"], "toy.per_problem", "in [1, 1024]"),
    (["toy.lr=.nan"], "toy.lr", "in (0, 1] (an optimizer step"),
    (["rollout.batch_size=100000"], "rollout.batch_size", "<= 65536 (no GPU holds a larger batch)"),
    (["toy.layers=0"], "toy.layers", ">= 1"),
    (["toy.lr=0"], "toy.lr", "a finite number > 0"),
    (["toy.seed=-1"], "toy.seed", ">= 0"),
    (["rollout.n_samples=1000000000"], "rollout.n_samples", "<= 1024 (episodes per prompt"),
    (["rollout.n_samples=1e9"], "rollout.n_samples", "<= 1024"),
    (["rollout.temperature=.inf"], "rollout.temperature", "finite"),
    (["rollout.max_new_tokens=10000000"], "rollout.max_new_tokens", "<= 131072"),
    (["env.shots=1000000"], "env.shots", "<= 64 (each worked example"),
    (["env.max_turns=1000"], "env.max_turns", "<= 50 ("),
    (["eval.max_turns=0"], "eval.max_turns", ">= 1 (or null for env.max_turns)"),
    (["eval.repeats=100000"], "eval.repeats", "<= 1024"),
    (["online.iterations=0"], "online.iterations", "in [1, 100000]"),
    (["online.samples=1"], "online.samples", "the group baseline needs two episodes"),
    (["online.keep_groups=0"], "online.keep_groups", "in (0, 1]"),
    (["online.lr=.inf"], "online.lr", "in (0, 1]"),
    (["online.kl_coef=-1"], "online.kl_coef", ">= 0"),
    (["online.micro_batch=0"], "online.micro_batch", ">= 1"),
    (["online.eval_every=-1"], "online.eval_every", ">= 0"),
    (["online.eval_size=0"], "online.eval_size", ">= 1"),
    (["online.reward=best"], "online.reward", "expected one of"),
    (["algorithm=online_rl", "train.finetune=full"], "train.finetune", "qlora or lora"),
    (["eval.sets=[]"], "eval.sets", "at least one"),
    (["eval.sets=[{task: toy}, {task: toy}]"], "eval.sets[1].name", "must differ from eval.sets[0]'s 'toy'"),
    (["eval.sets=[{task: toy, name: a}, {task: arith, name: a}]"], "eval.sets[1].name", "must differ"),
    (["eval.sets=[{task: toy, name: 'reference/../../../../ESCAPE'}]"], "eval.sets[0].name", "letters"),
    (["eval.sets=[{task: toy, name: '..'}]"], "eval.sets[0].name", "not only dots"),
    (["name=reference/../../../../ESCAPE"], "name", "letters, digits"),
    (["name=.."], "name", "not only dots"),
    (["name=" + "x" * 101], "name", "1-100"),
    (["task.name=nosuchtask"], "task.name", "expected a task of"),
    (["eval.sets=[{task: nosuchtask}]"], "eval.sets[0].task", "expected a task of"),
    (["task.checker=fuzzy"], "task.checker", "expected null"),
    (["eval.sets=[{task: toy, checker: fuzzy}]"], "eval.sets[0].checker", "expected null"),
    (["task.source=data/train.jsonl"], "task.source", "the toy task is generated here"),
    (["eval.sets=[{task: arith, source: x.jsonl}]"], "eval.sets[0].source", "the arith task is generated"),
    (["env.shots=2", "task.name=gsm8k", "task.source=x.jsonl"], "env.shots", "task 'gsm8k'"),
    (["env.shots=2", "eval.sets=[{task: math500}]"], "env.shots", "eval.sets[0] task 'math500'"),
]


@pytest.mark.parametrize("overrides, key, rule", REFUSED, ids=[" ".join(c[0])[:60] for c in REFUSED])
def test_bad_values_are_one_line_errors_naming_the_key(overrides, key, rule):
    with pytest.raises(UserError) as info:
        load_recipe(None, overrides)
    message = str(info.value)
    assert f"key '{key}': " in message and rule in message and "\n" not in message, message


@pytest.mark.parametrize("overrides, key, rule", REFUSED, ids=[" ".join(c[0])[:60] for c in REFUSED])
def test_the_cli_refuses_bad_values_before_any_work(tmp_path, capsys, overrides, key, rule):
    from drift_lite.cli import main

    out = tmp_path / "out"
    assert main(["run", TOY_RECIPE, "--out", str(out), *overrides]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and f"key '{key}'" in captured.err
    assert list(tmp_path.iterdir()) == []  # no run folder, no lock, no temp file


@pytest.mark.parametrize(
    "command",
    [
        ["run", TOY_RECIPE, "--out", "OUT"],
        ["rollout", TOY_RECIPE, "--out", "OUT"],
        ["train", TOY_RECIPE, "--data", "weighted.jsonl", "--out", "OUT"],
        ["eval", TOY_RECIPE, "--out", "OUT"],
        ["check", TOY_RECIPE],
    ],
    ids=lambda c: c[0],
)
@pytest.mark.parametrize("override", ["train.lr=.inf", "eval.sets=[{task: toy, name: ../../ESCAPE}]"])
def test_every_command_refuses_before_any_work(tmp_path, capsys, monkeypatch, command, override):
    from drift_lite.cli import main

    monkeypatch.chdir(tmp_path)
    assert main([*command, override]) == 2
    err = capsys.readouterr().err
    assert err.startswith("drift-lite: error: ") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "overrides",
    [
        ["env.format_penalty=0", "env.format_penalty=-1"],
        ["train.lora_dropout=0", "train.lora_dropout=0.99", "train.max_grad_norm=0", "train.weight_decay=0"],
        ["train.warmup_ratio=0", "train.warmup_ratio=1", "train.lr=1", "train.lora_alpha=1"],
        ["seed=0", "train.seed=4294967295", "task.seed=4294967295", "toy.seed=4294967295"],
        ["rollout.n_samples=1024", "env.shots=64", "env.max_turns=50", "eval.max_turns=50"],
        ["rollout.n_samples=16.0", "train.max_length=131072", "rollout.max_new_tokens=131072"],
        ["toy.heads=64", "toy.kv_heads=64", "toy.hidden_size=2", "toy.heads=1", "toy.kv_heads=1"],
        ["toy.threads=1", "toy.steps=1", "toy.per_problem=1", "train.max_steps=0", "train.save_steps=0"],
        ["online.samples=2", "online.keep_groups=1", "online.kl_coef=0", "online.eval_every=0"],
        ["algorithm=online_rl", "train.finetune=lora", "train.lr_scheduler=cosine"],
        ["name=a.b-c_1", "eval.sets=[{task: toy, name: a}, {task: toy, name: b}]"],
        ["eval.sets=[{task: toy}, {task: arith}]", "env.shots=3"],
        ["task.name=gsm8k", "task.source=x.jsonl", "task.checker=math-verify"],
        ["train.target_modules=[q_proj, gate_proj, all-linear, model.layers.0.mlp]"],
    ],
)
def test_values_at_their_bounds_are_accepted(overrides):
    load_recipe(None, overrides)


def test_an_integer_key_takes_a_whole_number_in_any_spelling():
    recipe = load_recipe(None, ["rollout.n_samples=16.0", "task.size=1e3"])
    assert recipe.rollout.n_samples == 16 and isinstance(recipe.rollout.n_samples, int)
    assert recipe.task.size == 1000 and isinstance(recipe.task.size, int)
    for value in ("4.5", ".inf", ".nan", "1e400"):
        with pytest.raises(UserError, match="key 'rollout.n_samples': expected int"):
            load_recipe(None, [f"rollout.n_samples={value}"])


def test_every_accepted_scheduler_runs_in_transformers():
    """The list matches the installed transformers: each name is one of its schedulers and builds and steps
    without extra arguments (what the kit's TrainingArguments give it)."""
    import torch
    from transformers import get_scheduler
    from transformers.trainer_utils import SchedulerType

    from drift_lite.recipe import LR_SCHEDULERS

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}
    for name in LR_SCHEDULERS:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=4)
        for _ in range(4):
            optimizer.step()
            scheduler.step()
        load_recipe(None, [f"train.lr_scheduler={name}"])
    for name in {s.value for s in SchedulerType} - set(LR_SCHEDULERS):  # each needs more than the kit gives
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        with pytest.raises((ValueError, TypeError)):
            scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=4)
            if name in ("reduce_lr_on_plateau", "greedy"):  # step() needs an evaluation metric
                scheduler.step()


@pytest.mark.parametrize(
    "hidden, heads, kv_heads",
    [(16, 4, 2), (16, 8, 8), (16, 2, 1), (12, 4, 2), (16, 3, 1), (16, 4, 3), (18, 2, 2), (16, 8, 1)],
)
def test_the_toy_shape_rules_match_what_qwen2_runs(hidden, heads, kv_heads):
    """A toy shape the recipe accepts builds and runs; one it refuses fails in transformers."""
    import torch
    from transformers import Qwen2ForCausalLM

    from drift_lite.recipe import ToyConfig
    from drift_lite.toy_model import model_config
    from drift_lite.toy_tokenizer import build_toy_tokenizer

    overrides = [f"toy.hidden_size={hidden}", f"toy.heads={heads}", f"toy.kv_heads={kv_heads}"]
    try:
        load_recipe(None, overrides)
        accepted = True
    except UserError:
        accepted = False
    cfg = ToyConfig(hidden_size=hidden, heads=heads, kv_heads=kv_heads, intermediate_size=8, layers=1)
    try:
        model = Qwen2ForCausalLM(model_config(cfg, build_toy_tokenizer()))
        model(input_ids=torch.tensor([[1, 2, 3]]))
        runs = True
    except (RuntimeError, ValueError):
        runs = False
    assert accepted == runs


def test_a_recipe_built_in_code_is_type_checked():
    import dataclasses

    from drift_lite.recipe import Recipe, check_recipe

    recipe = Recipe()
    recipe.train = dataclasses.replace(recipe.train, lr="fast")
    with pytest.raises(UserError, match="key 'train.lr': expected float, got str 'fast'"):
        check_recipe(recipe)
    recipe = Recipe()
    recipe.train = dataclasses.replace(recipe.train, seed=True)
    with pytest.raises(UserError, match="key 'train.seed': expected int, got bool"):
        check_recipe(recipe)


def test_every_shipped_recipe_passes_check_recipe():
    root = Path(__file__).resolve().parent.parent
    paths = [
        path
        for path in sorted(root.glob("recipes/**/*.yaml"))
        if "methods" not in (yaml.safe_load(path.read_text()) or {})  # compare specs are not recipes
    ]
    assert len(paths) >= 10
    for path in paths:
        load_recipe(path)
