"""evaluate(): files written, metrics equal their recomputation, greedy determinism, the adapter applied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_lm

from drift_lite.errors import UserError
from drift_lite.evaluation import evaluate
from drift_lite.metrics import compute_metrics, recompute_matches
from drift_lite.recipe import load_recipe

EVAL_SET = {"task": "toy", "size": 6, "name": "toy6"}


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny random Qwen2 with the toy tokenizer, saved as a local model folder."""
    folder = tmp_path_factory.mktemp("evaluate") / "model"
    model, tokenizer = make_tiny_lm(seed=3)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dir(base_dir: Path) -> Path:
    """A LoRA adapter with random (not zero) B matrices, so that it changes the model's outputs."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    model = get_peft_model(base, config)
    folder = base_dir.parent / "adapter"
    model.save_pretrained(folder)
    return folder


def recipe_for(base_dir: Path, *extra: str):
    """Greedy evaluation of 6 toy problems, 3 turns of at most 8 new tokens."""
    return load_recipe(
        None,
        [
            f"model.name={base_dir}",
            "model.quantization=none",
            "model.dtype=float32",
            "model.device=cpu",
            "env.max_turns=3",
            f"eval.sets=[{json.dumps(EVAL_SET)}]",
            "eval.greedy=true",
            "eval.max_new_tokens=8",
            "eval.batch_size=4",
            *extra,
        ],
    )


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_writes_metrics_equal_to_their_recomputation(base_dir, tmp_path):
    recipe = recipe_for(base_dir)
    results = evaluate(recipe, tmp_path / "out", show_progress=False)
    json_path, jsonl_path = tmp_path / "out" / "eval-toy6.json", tmp_path / "out" / "eval-toy6.jsonl"
    assert json_path.is_file() and jsonl_path.is_file()
    rows = read_rows(jsonl_path)
    assert len(rows) == 6  # greedy: one trajectory per problem
    assert all(1 <= len(row["turn_rewards"]) <= 3 for row in rows)
    written = json.loads(json_path.read_text())
    assert written == compute_metrics(rows, recipe.env.max_turns)
    assert recompute_matches(json_path, jsonl_path) == []
    assert set(results) == {"toy6"}
    assert results["toy6"]["metrics"] == written
    assert results["toy6"]["generated_tokens"] > 0


def test_greedy_evaluation_is_deterministic(base_dir, tmp_path):
    recipe = recipe_for(base_dir)
    evaluate(recipe, tmp_path / "a", show_progress=False)
    evaluate(recipe, tmp_path / "b", show_progress=False)
    assert read_rows(tmp_path / "a" / "eval-toy6.jsonl") == read_rows(tmp_path / "b" / "eval-toy6.jsonl")
    assert (tmp_path / "a" / "eval-toy6.json").read_text() == (tmp_path / "b" / "eval-toy6.json").read_text()


def test_an_adapter_is_applied_when_given(base_dir, adapter_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = recipe_for(base_dir)
    evaluate(recipe, tmp_path / "base", show_progress=False)
    evaluate(recipe, tmp_path / "adapted", adapter=str(adapter_dir), show_progress=False)
    # The same adapter applied by hand through PEFT: evaluate(adapter=...) must give exactly its rows.
    by_hand = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    evaluate(recipe, tmp_path / "by_hand", model=by_hand, tokenizer=tokenizer, show_progress=False)

    def responses(folder: str) -> list[list[str]]:
        rows = read_rows(tmp_path / folder / "eval-toy6.jsonl")
        return [[m["content"] for m in row["messages"] if m["role"] == "assistant"] for row in rows]

    assert responses("adapted") == responses("by_hand")
    assert responses("adapted") != responses("base")


def test_a_missing_adapter_is_a_one_line_error_before_any_output(base_dir, tmp_path):
    with pytest.raises(UserError, match="adapter not found") as info:
        evaluate(recipe_for(base_dir), tmp_path / "out", adapter=str(tmp_path / "nope"), show_progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


# eval.max_turns: a method trained on 1-turn rollouts is evaluated over several turns


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


# Guards before any output: names that escape --out, adapters of another base


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ([{"task": "toy", "size": 2, "name": "reference/../../../../ESCAPE"}], "would write outside"),
        ([{"task": "toy", "size": 2, "name": "../ESCAPE"}], "would write outside"),
        ([{"task": "toy", "size": 2, "name": "a"}, {"task": "toy", "size": 2, "name": "a"}], "appears twice"),
    ],
)
def test_a_set_name_escaping_out_or_repeated_is_refused_before_any_output(base_dir, tmp_path, sets, message):
    recipe = recipe_for(base_dir)
    recipe.eval.sets = [type(recipe.eval.sets[0])(**s) for s in sets]  # past the recipe's own name check
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    with pytest.raises(UserError, match=message) as info:
        evaluate(recipe, work / "out", show_progress=False)
    assert "\n" not in str(info.value)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == [] and not (work / "out").exists()


def _adapter_with_base(adapter_dir: Path, folder: Path, base: str | None) -> Path:
    """A copy of `adapter_dir` whose adapter_config.json names `base` (None: no base recorded)."""
    import shutil

    shutil.copytree(adapter_dir, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


def test_an_adapter_of_another_base_with_the_same_shapes_is_refused(base_dir, adapter_dir, tmp_path):
    other = tmp_path / "other-model"  # the same shapes: a copy of the base under another name
    import shutil

    shutil.copytree(base_dir, other)
    adapter = _adapter_with_base(adapter_dir, tmp_path / "adapter", str(other))
    with pytest.raises(UserError, match=r"holds an adapter for base model .*other-model, not ") as info:
        evaluate(recipe_for(base_dir), tmp_path / "out", adapter=str(adapter), show_progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_an_adapter_of_another_shape_without_a_recorded_base_is_one_line(adapter_dir, tmp_path):
    wider = tmp_path / "wider"
    model, tokenizer = make_tiny_lm(seed=3, hidden=64)
    model.save_pretrained(wider)
    tokenizer.save_pretrained(wider)
    adapter = _adapter_with_base(adapter_dir, tmp_path / "adapter", None)
    with pytest.raises(UserError, match=r"adapter does not fit this base model \(other shapes\)") as info:
        evaluate(recipe_for(wider), tmp_path / "out", adapter=str(adapter), show_progress=False)
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()


def test_the_adapter_of_this_base_still_loads(base_dir, adapter_dir, tmp_path):
    adapter = _adapter_with_base(adapter_dir, tmp_path / "adapter", str(base_dir))
    evaluate(recipe_for(base_dir), tmp_path / "out", adapter=str(adapter), show_progress=False)
    assert (tmp_path / "out" / "eval-toy6.json").is_file()


def test_a_failed_write_leaves_no_output_folder(base_dir, tmp_path, monkeypatch):
    import errno
    import os

    from drift_lite import records

    def full(path, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(records, "write_rows_atomic", full)
    with pytest.raises(OSError, match="No space left"):
        evaluate(recipe_for(base_dir), tmp_path / "out", show_progress=False)
    assert not (tmp_path / "out").exists()


# Sharded evaluation (`shard=(i, n)`, `merge_evals`): merged parts equal a one-process evaluation

SHARDED = {"task": "toy", "size": 7, "name": "toy7"}  # 7 problems: shards of 4 and 3


def sharded_recipe(base_dir: Path, *extra: str):
    """Two eval sets (one with 7 problems, split unevenly), greedy, as `recipe_for`."""
    return recipe_for(base_dir, f"eval.sets=[{json.dumps(EVAL_SET)}, {json.dumps(SHARDED)}]", *extra)


@pytest.fixture(scope="module")
def eval_parts(base_dir, tmp_path_factory) -> tuple[Path, list[Path]]:
    """A one-process evaluation and its two shards (each with another batch size)."""
    root = tmp_path_factory.mktemp("eval-shards")
    evaluate(sharded_recipe(base_dir), root / "one", show_progress=False)
    parts = [root / "part-0", root / "part-1"]
    evaluate(sharded_recipe(base_dir, "eval.batch_size=3"), parts[0], show_progress=False, shard=(0, 2))
    evaluate(sharded_recipe(base_dir, "eval.batch_size=2"), parts[1], show_progress=False, shard=(1, 2))
    return root / "one", parts


def test_two_merged_eval_shards_equal_a_one_process_evaluation(eval_parts, tmp_path):
    from drift_lite.evaluation import merge_evals

    one, parts = eval_parts
    for i, part in enumerate(parts):
        record = json.loads((part / "shard.json").read_text())
        assert record["shard"] == {"index": i, "count": 2} and record["complete"]
        assert not (part / "eval-toy7.json").exists()  # a part's metrics are not the set's
    assert (
        len(read_rows(parts[0] / "eval-toy7.jsonl")) == 4
        and len(read_rows(parts[1] / "eval-toy7.jsonl")) == 3
    )
    stats = merge_evals(list(reversed(parts)), tmp_path / "merged")  # the order given does not matter
    assert stats["parts"] == 2 and stats["generated_tokens"] > 0
    assert sorted(p.name for p in (tmp_path / "merged").iterdir()) == sorted(p.name for p in one.iterdir())
    for name in ("toy6", "toy7"):
        merged = (tmp_path / "merged" / f"eval-{name}.jsonl").read_bytes()
        whole = (one / f"eval-{name}.jsonl").read_bytes()
        assert set(merged.splitlines()) == set(whole.splitlines()) and merged == whole
        metrics = json.loads((one / f"eval-{name}.json").read_text())
        assert stats["sets"][name]["metrics"] == metrics
        assert (tmp_path / "merged" / f"eval-{name}.json").read_text() == (
            one / f"eval-{name}.json"
        ).read_text()


def test_merge_evals_refuses_a_missing_duplicated_unfinished_or_mixed_part(base_dir, eval_parts, tmp_path):
    import shutil

    from drift_lite.evaluation import merge_evals

    _, parts = eval_parts
    refusals = {
        "missing prompts: shard 1/2": [parts[0]],
        "duplicated prompts: it is shard 0/2 again": [parts[0], shutil.copytree(parts[0], tmp_path / "copy")],
    }
    unfinished = shutil.copytree(parts[1], tmp_path / "unfinished")
    record = json.loads((unfinished / "shard.json").read_text())
    (unfinished / "shard.json").write_text(json.dumps({**record, "complete": False}))
    refusals["unfinished"] = [parts[0], unfinished]
    other = tmp_path / "other"
    evaluate(sharded_recipe(base_dir, "eval.max_new_tokens=6"), other, show_progress=False, shard=(1, 2))
    refusals[r"other evaluation settings than .* \(eval.max_new_tokens\)"] = [parts[0], other]
    refusals["not a part"] = [parts[0], tmp_path]
    for message, given in refusals.items():
        with pytest.raises(UserError, match=message) as info:
            merge_evals(given, tmp_path / "out")
        assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


def test_an_adapters_parts_are_not_merged_with_the_references(base_dir, adapter_dir, eval_parts, tmp_path):
    from drift_lite.evaluation import merge_evals

    _, parts = eval_parts
    adapted = tmp_path / "adapted"
    evaluate(sharded_recipe(base_dir), adapted, adapter=str(adapter_dir), show_progress=False, shard=(1, 2))
    with pytest.raises(UserError, match=r"other evaluation settings .*\(adapter\)"):
        merge_evals([parts[0], adapted], tmp_path / "out")


def test_under_a_launcher_each_rank_evaluates_its_part_and_rank_0_merges(
    base_dir, eval_parts, monkeypatch, tmp_path
):
    one, _ = eval_parts
    out = tmp_path / "eval"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    evaluate(sharded_recipe(base_dir), out, show_progress=False)  # rank 1: its part only
    assert (tmp_path / "eval.shard-1-of-2" / "shard.json").is_file() and not out.exists()
    monkeypatch.setenv("RANK", "0")
    results = evaluate(sharded_recipe(base_dir), out, show_progress=False)
    for name in ("toy6", "toy7"):
        assert (out / f"eval-{name}.jsonl").read_bytes() == (one / f"eval-{name}.jsonl").read_bytes()
        assert results[name]["metrics"] == json.loads((one / f"eval-{name}.json").read_text())


def test_the_cli_evaluates_a_shard_and_merges_folders(base_dir, eval_parts, tmp_path, capsys):
    import yaml

    from drift_lite import cli

    one, parts = eval_parts
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(sharded_recipe(base_dir).to_dict()))
    assert cli.main(["eval", str(recipe), "--out", str(tmp_path / "p1"), "--shard", "1/2"]) == 0
    assert (tmp_path / "p1" / "eval-toy7.jsonl").read_bytes() == (parts[1] / "eval-toy7.jsonl").read_bytes()
    capsys.readouterr()
    assert cli.main(["merge", str(parts[0]), str(tmp_path / "p1"), "--out", str(tmp_path / "m")]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["toy6", "toy7"]
    assert (tmp_path / "m" / "eval-toy7.jsonl").read_bytes() == (one / "eval-toy7.jsonl").read_bytes()
    assert cli.main(["merge", str(parts[0]), str(tmp_path / "m" / "eval-toy7.jsonl"), "--out", "x"]) == 2
    assert "not both" in capsys.readouterr().err


def test_under_a_launcher_rank_0_refuses_a_finished_part_of_other_settings(base_dir, monkeypatch, tmp_path):
    """A finished part of another recipe is refused in one line, not waited for forever."""
    out = tmp_path / "eval"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    evaluate(sharded_recipe(base_dir, "seed=7"), out, show_progress=False)  # rank 1 with another seed
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match="shard-1-of-2: a finished evaluation part of other settings"):
        evaluate(sharded_recipe(base_dir), out, show_progress=False)


def test_merge_names_a_part_that_does_not_exist(eval_parts, tmp_path):
    import drift_lite as dl

    _, parts = eval_parts
    with pytest.raises(UserError, match="no such part: .*typo"):
        dl.merge([parts[0], tmp_path / "typo"], tmp_path / "m")


def test_eval_settings_hold_the_engine_and_batch_size_in_reduced_precision_only():
    from drift_lite.evaluation import eval_settings
    from drift_lite.recipe import load_recipe

    def settings(*overrides):
        return eval_settings(load_recipe(None, list(overrides)))

    assert settings("eval.batch_size=3") == settings("eval.batch_size=5")  # float32: rows do not depend on it
    bf16 = ("model.dtype=bfloat16",)
    assert settings(*bf16, "eval.batch_size=3") != settings(*bf16, "eval.batch_size=5")
    assert settings(*bf16) != settings(*bf16, "rollout.engine=token")


def test_a_part_written_over_a_whole_evaluation_leaves_no_whole_set_metrics(base_dir, eval_parts, tmp_path):
    import shutil

    one, _ = eval_parts
    folder = tmp_path / "was-whole"
    shutil.copytree(one, folder)
    assert (folder / "eval-toy7.json").is_file()
    evaluate(sharded_recipe(base_dir), folder, show_progress=False, shard=(1, 2))
    assert not (folder / "eval-toy7.json").exists() and (folder / "shard.json").is_file()
