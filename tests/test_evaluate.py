"""Multi-turn evaluation: `eval.max_turns` sets the evaluation episodes' turns (null: `env.max_turns`), so a
method trained on 1-turn rollouts is evaluated over several; the files and the engine report."""

import json

from conftest import make_tiny_lm

from drift_lite.evaluate import evaluate
from drift_lite.recipe import load_recipe


def _evaluate(tmp_path, overrides: list[str]) -> tuple[list[dict], dict, dict]:
    """Rows, metrics and the returned result of the toy eval set (4 problems) with a tiny random model."""
    model, tokenizer = make_tiny_lm(seed=4)
    recipe = load_recipe(None, ["eval.max_new_tokens=6", "model.device=cpu", *overrides])
    recipe.eval.sets[0].size = 4
    out = tmp_path / "eval"
    result = evaluate(recipe, out, model=model, tokenizer=tokenizer, show_progress=False)["toy"]
    rows = [json.loads(line) for line in (out / "eval-toy.jsonl").read_text().splitlines()]
    return rows, json.loads((out / "eval-toy.json").read_text()), result


def test_eval_max_turns_overrides_the_rollouts_turns(tmp_path):
    rows, metrics, result = _evaluate(tmp_path / "a", ["env.max_turns=1", "eval.max_turns=3"])
    assert len(rows) == 4 and all(set(row["turn_rewards"]) == {"t1", "t2", "t3"} for row in rows)
    assert max(len(row["reward_details"]) for row in rows) == 3  # a random model rarely answers right at once
    assert "multi@3" in metrics and "multi@4" not in metrics and metrics["n"] == 4
    assert result["metrics"] == metrics and result["engine"]["engine"] == "turn"


def test_eval_max_turns_null_follows_env_max_turns(tmp_path):
    rows, metrics, _ = _evaluate(tmp_path / "b", ["env.max_turns=2"])
    assert all(set(row["turn_rewards"]) == {"t1", "t2"} for row in rows)
    assert "multi@2" in metrics and "multi@3" not in metrics
