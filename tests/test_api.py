"""The public Python API: `import drift_lite as dl` runs the whole method on the toy through dl.* alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import drift_lite as dl
from drift_lite.records import iter_rows

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toy" / "drift.yaml"
SMALL = [
    "toy.steps=10",  # a toy reference built in seconds (cached under the test's DRIFT_LITE_CACHE)
    "toy.hidden_size=32",
    "toy.threads=1",
    "task.size=6",
    "rollout.n_samples=2",
    "eval.sets=[{task: toy, size: 6}]",
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.epochs=1",
]


@pytest.fixture()
def recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFT_LITE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield dl.load_recipe(RECIPE, SMALL)
    torch.set_num_threads(threads)


def test_the_api_mirrors_the_commands_and_each_function_shows_a_call():
    for name in ("load_recipe", "rollout", "weight", "train", "evaluate", "report", "run", "check"):
        fn = getattr(dl, name)
        assert callable(fn) and ">>> " in fn.__doc__ and f"dl.{name}(" in fn.__doc__, name
    import drift_lite.pipeline  # noqa: F401  importing a step module must not rebind the API function
    import drift_lite.rollouts  # noqa: F401
    import drift_lite.training  # noqa: F401

    assert callable(dl.run) and callable(dl.rollout) and callable(dl.train)


def test_rollout_weight_train_evaluate_report_through_dl_only(recipe, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stats = dl.rollout(recipe, out / "rollouts.jsonl", show_progress=False)
    rows = list(iter_rows(out / "rollouts.jsonl"))
    assert stats["prompts"] == 6 and len(rows) == 12 and stats["engine"]["engine"] == "token"
    diagnostics = dl.weight(
        out / "rollouts.jsonl", out / "weighted.jsonl", recipe.weights, show_progress=False
    )
    weighted = list(iter_rows(out / "weighted.jsonl"))
    assert diagnostics["rows_written"] == len(weighted) == 12
    assert all(math_close(sum(r["weight"] for r in weighted if r["prompt_id"] == p), 2.0) for p in _ids(rows))
    summary = dl.train(recipe, out / "weighted.jsonl", out / "adapter", show_progress=False)
    assert summary["steps"] == 6 and (out / "adapter" / "adapter_config.json").is_file()
    reference = dl.evaluate(recipe, out / "eval-reference", show_progress=False)
    trained = dl.evaluate(recipe, out / "eval-trained", adapter=out / "adapter", show_progress=False)
    for result, folder in ((reference, "eval-reference"), (trained, "eval-trained")):
        assert json.loads((out / folder / "eval-toy.json").read_text()) == result["toy"]["metrics"]
    report = dl.report(out, out)
    text = report.read_text()
    assert report == out / "report.md" and "multi@1" in text and "trained" in text


def test_run_by_recipe_path_then_a_rerun_skips_every_step(recipe, tmp_path):
    out = tmp_path / "run"
    report = dl.run(recipe, out, show_progress=False)
    assert report.is_file() and (out / "adapter").is_dir()
    log = (out / "log.txt").read_text()
    dl.run(recipe, out, show_progress=False)
    added = (out / "log.txt").read_text()[len(log) :]
    assert added.count("up to date, skipped") == 5, added


def test_check_and_load_recipe_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(dl.UserError, match="weights.beta"):
        dl.load_recipe(RECIPE, ["weights.beta=-1"])
    assert "rollouts:" in dl.check(dl.load_recipe(RECIPE, SMALL))


def _ids(rows: list[dict]) -> set[str]:
    return {r["prompt_id"] for r in rows}


def math_close(a: float, b: float) -> bool:
    return abs(a - b) < 1e-9
