"""`drift-lite check`: every shipped recipe passes it, estimates are sane, bad recipes are one-line errors."""

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
    """No hub: the plan uses the shipped fixtures; relative data paths resolve from the project root."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(ROOT)


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
    assert "micro-batch 4 x 3040 tokens, checkpointed" in out
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
