"""`drift-lite check`: every shipped recipe passes it, estimates are sane, bad recipes are one-line errors."""

import json
import re
from pathlib import Path

import pytest
import yaml

from drift_lite import costs, plan
from drift_lite.cli import main
from drift_lite.recipe import load_recipe

ROOT = Path(__file__).resolve().parent.parent
# compare specs (a `methods:` mapping) sit beside the recipes; they are not recipes
RECIPES = sorted(
    p for p in ROOT.glob("recipes/**/*.yaml") if "methods" not in (yaml.safe_load(p.read_text()) or {})
)
PAPER_3B = ROOT / "recipes" / "paper" / "qwen2.5-3b-metamathqa.yaml"


@pytest.fixture
def offline(monkeypatch):
    """No hub: the plan uses the shipped fixtures; relative data paths resolve from the project root; no hub
    tokenizer is cached (whatever this machine's Hugging Face cache holds), so hub models use the budget."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(plan, "_cached_hub_tokenizer", lambda name: None)


def run_check(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_paper_recipes_exist():
    names = {p.name for p in RECIPES if p.parent.name == "paper"}
    assert {
        "qwen2.5-1.5b-metamathqa.yaml",
        "qwen2.5-3b-metamathqa.yaml",
        "qwen2.5-7b-metamathqa.yaml",
        "qwen2.5-3b-extra-evals.yaml",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_recipe_passes_check(offline, capsys, path):
    code, out, err = run_check(capsys, str(path))
    assert code == 0, err
    assert out.startswith(f"recipe '{load_recipe(path).name}': valid")
    assert "peak" in out and "training" in out and "rollout" in out and "evaluation" in out


def test_offline_check_says_the_fixtures_stand_in(offline, capsys):
    code, out, _ = run_check(capsys, str(PAPER_3B))
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("train prompts:"))
    assert "256 of metamathqa" in line  # planned at the recipe's size, not the fixture's
    assert "offline" in line and "data/fixtures/metamathqa.json stood in" in line
    evals = [x for x in out.splitlines() if x.startswith("eval set ")]
    names = [x.split()[2].rstrip(":") for x in evals]
    assert names == ["math500", "hendrycks_math", "theoremqa", "gpqa_diamond", "mmlu_redux", "mmlu_pro"]
    assert "4,096 trajectories" in out and "32 optimizer steps" in out


def _printed_gib(out: str, phase: str) -> float:
    match = re.search(rf"^  {phase} \(.*\): ([\d.]+) GiB", out, re.M)
    assert match, out
    return float(match.group(1))


def test_3b_memory_estimate_is_printed_and_sane(offline, capsys):
    code, out, _ = run_check(capsys, str(PAPER_3B))
    assert code == 0
    train = _printed_gib(out, "training")
    assert "micro-batch 4 x 3040 tokens, bf16 autocast (nf4 layers return fp32), checkpointed" in out
    assert 4 < train < 24
    for phase in ("rollout", "evaluation"):
        assert 4 < _printed_gib(out, phase) < 22.35  # what a 24 GB card offers
    recipe = load_recipe(PAPER_3B)
    assert train == pytest.approx(plan.make_plan(recipe).peak("training") / costs.GIB, abs=0.05)


@pytest.mark.parametrize("key", ["train.batch_size", "rollout.batch_size", "eval.batch_size"])
def test_memory_grows_with_batch_size(offline, key):
    phase = {"train": "training", "rollout": "rollout", "eval": "evaluation"}[key.split(".")[0]]
    peaks = [plan.make_plan(load_recipe(PAPER_3B, [f"{key}={b}"])).peak(phase) for b in (1, 2, 4, 8)]
    assert all(a < b for a, b in zip(peaks, peaks[1:])), peaks
    static = plan.make_plan(load_recipe(PAPER_3B)).memory[phase][
        "weights" if phase != "training" else "nf4 weights"
    ]
    assert peaks[0] > static  # the batch-dependent part is on top of the weights


@pytest.mark.parametrize(
    "path, phase, gb",
    [
        ("qwen2.5-1.5b-metamathqa.yaml", "training", 12),
        ("qwen2.5-1.5b-metamathqa.yaml", "rollout", 12),
        ("qwen2.5-1.5b-metamathqa.yaml", "evaluation", 12),
        ("qwen2.5-7b-metamathqa.yaml", "training", 24),
        ("qwen2.5-7b-metamathqa.yaml", "rollout", 24),
        ("qwen2.5-7b-metamathqa.yaml", "evaluation", 24),
    ],
)
def test_variants_fit_their_gpu_class_with_margin(offline, path, phase, gb):
    peak = plan.make_plan(load_recipe(ROOT / "recipes" / "paper" / path)).peak(phase)
    assert peak < 0.9 * gb * 1e9, f"{path} {phase}: {peak / costs.GIB:.1f} GiB"


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("drift-lite: error: ") and "Traceback" not in err
    return err


def test_a_typo_exits_2_with_one_line(offline, capsys, tmp_path):
    text = PAPER_3B.read_text().replace("  n_samples: 16", "  n_sample: 16")
    (tmp_path / "typo.yaml").write_text(text)
    err = _one_line_error(*run_check(capsys, str(tmp_path / "typo.yaml")))
    assert "rollout.n_sample" in err and "did you mean 'rollout.n_samples'" in err


def test_a_bad_override_exits_2_with_one_line(offline, capsys):
    err = _one_line_error(*run_check(capsys, str(PAPER_3B), "train.batch_size=four"))
    assert "train.batch_size" in err


def test_a_missing_local_data_file_exits_2_with_one_line(offline, capsys):
    err = _one_line_error(*run_check(capsys, str(PAPER_3B), "task.source=data/no-such-file.jsonl"))
    assert "data/no-such-file.jsonl" in err


def test_an_eval_set_without_a_source_exits_2_even_offline(offline, capsys):
    # MTU-Bench has no hub default: the fixture must not hide that a run would fail
    err = _one_line_error(*run_check(capsys, str(PAPER_3B), "eval.sets=[{task: mtu_bench}]"))
    assert "mtu_bench" in err


def test_an_unknown_model_exits_2_with_one_line(offline, capsys):
    err = _one_line_error(*run_check(capsys, str(PAPER_3B), "model.name=org/unknown-model"))
    assert "org/unknown-model" in err


# ---------------------------------------------------------------------------------------------------------
# Sizes beyond the source, sources a recipe ignores, measured prompt lengths (issue 20)

TOY = ROOT / "recipes" / "toy" / "drift.yaml"


def _gsm8k_file(path: Path, questions: list[str]) -> Path:
    rows = [{"question": q, "answer": f"so {i}\n#### {i}"} for i, q in enumerate(questions)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_size_beyond_a_local_source_is_planned_as_the_rollout_runs_it(offline, capsys, tmp_path):
    from drift_lite.tasks import load_problems

    data = _gsm8k_file(tmp_path / "gsm.jsonl", ["What is 1+1?", "What is 2+2?", "What is 3+3?"])
    args = [f"task.source={data}", "task.name=gsm8k", "task.size=5000", "task.checker=exact"]
    code, out, err = run_check(capsys, str(PAPER_3B), *args)
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("train prompts:"))
    assert line == f"train prompts: 3 of gsm8k from {data} (task.size 5,000 > 3 problems in {data}: using 3)"
    assert "3 prompts x N=16 = 48 trajectories" in out
    # the rollout reads the same function with the same arguments: it runs these 3 problems
    assert len(load_problems("gsm8k", "train", str(data), 5000, 0)) == 3


def test_an_eval_size_beyond_its_source_is_named_by_its_key(offline, capsys, tmp_path):
    data = _gsm8k_file(tmp_path / "gsm.jsonl", ["What is 1+1?", "What is 2+2?"])
    code, out, err = run_check(
        capsys, str(PAPER_3B), f"eval.sets=[{{task: gsm8k, source: {data}, size: 10}}]"
    )
    assert code == 0, err
    assert (
        f"eval set gsm8k: 2 problems from {data} (eval.sets[0].size 10 > 2 problems in {data}: using 2)"
        in out
    )


def test_offline_a_size_beyond_the_published_dataset_is_capped(offline, capsys):
    code, out, _ = run_check(capsys, str(PAPER_3B), "task.size=500000")
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("train prompts:"))
    assert line.startswith("train prompts: 155000 of metamathqa")
    assert line.endswith("(task.size 500,000 > 155,000 problems in hub meta-math/MetaMathQA: using 155,000)")


def test_a_generated_task_refuses_more_problems_than_its_split_has(offline, capsys):
    err = _one_line_error(*run_check(capsys, str(TOY), "task.size=100000"))
    assert "key 'task.size': 100,000 problems asked; toy task: train has only" in err
    err = _one_line_error(*run_check(capsys, str(TOY), "eval.sets=[{task: arith, size: 100000}]"))
    assert "key 'eval.sets[0].size'" in err


def test_no_plan_for_a_source_the_run_would_ignore(offline, capsys):
    err = _one_line_error(*run_check(capsys, str(TOY), "task.source=data/fixtures/gsm8k.jsonl"))
    assert "key 'task.source': must be null: the toy task is generated here and reads no source" in err


def test_prompt_lengths_are_measured_with_the_toy_tokenizer(offline, capsys):
    from drift_lite.chat import initial_messages, render_prompt
    from drift_lite.tasks import load_problems
    from drift_lite.toy_tokenizer import build_toy_tokenizer

    recipe = load_recipe(TOY)
    p = plan.make_plan(recipe)
    tokenizer = build_toy_tokenizer()
    problems = load_problems("toy", "train", None, recipe.task.size, recipe.task.seed)
    expected = [
        len(
            tokenizer(render_prompt(tokenizer, initial_messages(q, "simple", 5)), add_special_tokens=False)[
                "input_ids"
            ]
        )
        for q in problems
    ]
    assert p.measured.train == expected and p.rollout_lengths.first == max(expected)
    assert p.rollout_lengths.first_mean == round(sum(expected) / len(expected))
    assert p.rollout_lengths.first < costs.PROMPT_TOKENS  # the toy's phrase tokens: far below the budget
    code, out, _ = run_check(capsys, str(TOY))
    assert (
        code == 0
        and f"first prompts, measured with the toy tokenizer: train mean {p.measured.train_mean}" in out
    )


def test_a_long_prompt_is_planned_at_its_measured_length(offline, capsys, tmp_path):
    """A 3,400-token problem: the plan's rows and memory use its length, not the 400-token budget."""
    long_question = "How many? " + "x" * 3400
    short_data = _gsm8k_file(tmp_path / "short.jsonl", ["What is 1+1?"])
    long_data = _gsm8k_file(tmp_path / "long.jsonl", ["What is 1+1?", long_question])
    args = ["task.name=gsm8k", "task.checker=exact", "train.max_length=8192"]
    short = plan.make_plan(load_recipe(TOY, [*args, f"task.source={short_data}"]))
    p = plan.make_plan(load_recipe(TOY, [*args, f"task.source={long_data}"]))
    assert p.rollout_lengths.first > 3400 and p.train_seq > 3400 and short.rollout_lengths.first < 400
    assert p.peak("rollout") > short.peak("rollout") and p.peak("training") > short.peak("training")
    code, out, _ = run_check(capsys, str(TOY), *args, f"task.source={long_data}")
    assert code == 0 and f"longest {p.rollout_lengths.first:,} tokens" in out


def test_a_hub_tokenizer_in_the_local_cache_is_used(offline, monkeypatch):
    from drift_lite.toy_tokenizer import build_toy_tokenizer

    asked = []
    monkeypatch.setattr(
        plan, "_cached_hub_tokenizer", lambda name: asked.append(name) or build_toy_tokenizer()
    )
    p = plan.make_plan(load_recipe(PAPER_3B))
    assert asked == ["Qwen/Qwen2.5-3B-Instruct"]
    assert p.measured is not None and "Qwen/Qwen2.5-3B-Instruct (local Hugging Face cache)" in p.tokenizer
    assert p.rollout_lengths.first == max(p.measured.train)


def test_without_the_tokenizer_the_plan_says_it_assumes_the_budget(offline, capsys):
    code, out, _ = run_check(capsys, str(PAPER_3B))
    assert code == 0
    assert (
        "first prompts: assumed 400 tokens (the tokenizer of Qwen/Qwen2.5-3B-Instruct is not in the local "
        "Hugging Face cache)" in out
    )
    p = plan.make_plan(load_recipe(PAPER_3B))
    assert p.measured is None and p.rollout_lengths.first == costs.PROMPT_TOKENS


def _local_model(folder: Path, with_tokenizer: bool) -> Path:
    from transformers import Qwen2Config

    from drift_lite.toy_tokenizer import build_toy_tokenizer

    folder.mkdir()
    Qwen2Config(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=116,
    ).to_json_file(folder / "config.json")
    if with_tokenizer:
        build_toy_tokenizer().save_pretrained(folder)
    return folder


def test_a_local_model_folder_is_measured_with_its_own_tokenizer(offline, capsys, tmp_path):
    folder = _local_model(tmp_path / "model", with_tokenizer=True)
    code, out, err = run_check(capsys, str(TOY), f"model.name={folder}")
    assert code == 0, err
    assert f"first prompts, measured with the tokenizer of {folder}: train mean" in out


def test_a_local_model_folder_without_a_tokenizer_exits_2(offline, capsys, tmp_path):
    folder = _local_model(tmp_path / "model", with_tokenizer=False)
    err = _one_line_error(*run_check(capsys, str(TOY), f"model.name={folder}"))
    assert "tokenizer" in err and str(folder) in err  # what a run would stop on, before any GPU time


def test_worked_examples_are_built_for_the_plan(offline, capsys):
    code, out, err = run_check(capsys, str(TOY), "env.shots=3")
    assert code == 0, err
    shots = plan.make_plan(load_recipe(TOY, ["env.shots=3"])).measured
    none = plan.make_plan(load_recipe(TOY)).measured
    assert shots.train_mean > none.train_mean + 3 * 10  # three worked turns in every prompt


# The keys each paper method recipe may change from DRIFT-5turn (besides `name`), as the toy ones do.
PAPER_METHOD_KEYS = {
    "qwen2.5-3b-sft-1turn.yaml": {("env", "max_turns"), ("weights", "scheme"), ("eval", "max_turns")},
    "qwen2.5-3b-sft-5turn.yaml": {("weights", "scheme")},
    "qwen2.5-3b-rft.yaml": {("weights", "scheme")},
    "qwen2.5-3b-drift-1turn.yaml": {("env", "max_turns"), ("eval", "max_turns")},
    "qwen2.5-3b-drift-gamma0.3.yaml": {("weights", "gamma")},
    "qwen2.5-3b-drift-beta0.05.yaml": {("weights", "beta")},
    "qwen2.5-3b-drift-beta0.3.yaml": {("weights", "beta")},
    "qwen2.5-3b-drift-beta1.0.yaml": {("weights", "beta")},
    "qwen2.5-3b-drift-target-all.yaml": {
        ("train", "target"),
        ("train", "batch_size"),
        ("train", "grad_accum"),
    },
    "qwen2.5-3b-online-rl.yaml": {
        ("algorithm",),
        ("rollout", "batch_size"),
        ("eval", "batch_size"),
        ("online",),
    },
}


def _changed(base: dict, other: dict) -> set[tuple[str, ...]]:
    out: set[tuple[str, ...]] = set()
    for section, values in other.items():
        if section in ("name", "online") or not isinstance(values, dict):
            if section != "name" and values != base[section]:
                out.add((section,))
            continue
        out |= {(section, k) for k in values if values[k] != base[section][k]}
    return out


@pytest.mark.parametrize("name", sorted(PAPER_METHOD_KEYS))
def test_paper_method_recipes_differ_from_drift_only_in_their_method_keys(name):
    path = ROOT / "recipes" / "paper" / name
    assert _changed(load_recipe(PAPER_3B).to_dict(), load_recipe(path).to_dict()) == PAPER_METHOD_KEYS[name]
    assert load_recipe(path).name == name.removesuffix(".yaml")
    marked = [line for line in path.read_text().splitlines() if "# method" in line]
    assert len(marked) >= len(PAPER_METHOD_KEYS[name])  # every changed key's line says so


def test_paper_recipes_train_lora_at_a_lora_rate():
    for path in (p for p in RECIPES if p.parent.name == "paper"):
        recipe = load_recipe(path)
        assert recipe.train.finetune == "qlora" and recipe.train.lr == pytest.approx(1e-4), path.name
        assert "release: 5e-6, chosen for full fine-tuning" in path.read_text()


PAPER_ONLINE = ROOT / "recipes" / "paper" / "qwen2.5-3b-online-rl.yaml"


def test_online_recipe_has_ufos_settings_and_its_own_estimate(offline, capsys):
    o = load_recipe(PAPER_ONLINE).online
    assert (o.iterations, o.prompts, o.samples, o.keep_groups, o.kl_coef) == (200, 8, 16, 0.25, 0.001)
    code, out, err = run_check(capsys, str(PAPER_ONLINE))
    assert code == 0, err
    assert "online RL: 200 iterations; each plays 8 prompts x 16 samples = 128 episodes" in out
    assert "in all 25,600 episodes" in out and "plays 4,096 episodes once" in out
    assert "200 optimizer steps, one per iteration on the kept groups' 32 episodes" in out
    assert "11 curve evaluations of 100 problems" in out
    assert "rollouts:" not in out  # no weighted-SFT rollout is planned
    for phase in ("rollout", "training", "curve evaluation", "evaluation"):
        assert _printed_gib(out, phase) < 22.35  # every phase fits the 24 GB card it is written for
    times = re.search(r"^time, rough: online rollouts ([\d.]+)-([\d.]+) h, online updates", out, re.M)
    assert times and 0 < float(times.group(1)) < float(times.group(2))


def test_online_totals_follow_iterations_and_groups(offline):
    one = plan.make_plan(load_recipe(PAPER_ONLINE, ["online.iterations=100"]))
    two = plan.make_plan(load_recipe(PAPER_ONLINE))
    assert two.trajectories == 2 * one.trajectories == 25_600
    assert two.generated[2] == pytest.approx(2 * one.generated[2])
    for phase in ("online rollouts", "online updates"):
        assert two.hours[phase][0] == pytest.approx(2 * one.hours[phase][0])
    kept_all = plan.make_plan(load_recipe(PAPER_ONLINE, ["online.keep_groups=1.0"]))
    assert kept_all.hours["online updates"][0] == pytest.approx(4 * two.hours["online updates"][0])
    assert kept_all.hours["online rollouts"] == two.hours["online rollouts"]
    bigger = plan.make_plan(load_recipe(PAPER_ONLINE, ["online.micro_batch=2"]))
    assert bigger.peak("training") > two.peak("training")


def test_paper_compare_spec_names_every_paper_method():
    from drift_lite.compare import load_spec

    spec = load_spec(ROOT / "recipes" / "paper" / "compare.yaml")
    files = {Path(m.recipe).name for m in spec.methods}
    assert files == {"qwen2.5-3b-metamathqa.yaml", *PAPER_METHOD_KEYS}
    assert all(Path(m.recipe).is_file() for m in spec.methods) and len(spec.seeds) >= 3


@pytest.mark.parametrize(
    "overrides, gpu, bf16, said",
    [
        ([], True, True, "bf16 autocast (nf4 layers return fp32)"),  # as training.py trains on CUDA
        (["model.dtype=float16"], True, False, "float32 activations"),  # no autocast: the fp32 upcast
        (["model.device=cpu"], False, False, "float32 activations"),  # a CPU trains in fp32
        (["train.finetune=lora"], True, True, "bf16 autocast"),
    ],
)
def test_the_training_estimate_follows_the_precision_training_uses(
    offline, capsys, overrides, gpu, bf16, said
):
    from drift_lite.training import use_bf16

    recipe = load_recipe(PAPER_3B, overrides)
    p = plan.make_plan(recipe)
    assert p.gpu == gpu and p.bf16 == bf16 == use_bf16(recipe.model.dtype, "cuda" if gpu else "cpu")
    expected = costs.training_memory(p.arch, recipe, p.train_seq, checkpointing=gpu, bf16=bf16)
    assert p.memory["training"] == expected
    code, out, _ = run_check(capsys, str(PAPER_3B), *overrides)
    line = next(x for x in out.splitlines() if x.strip().startswith("training ("))
    assert code == 0 and f", {said}" in line and ("nf4" in line) == ("nf4" in said)
