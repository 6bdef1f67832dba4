"""The run orchestrator: skip complete steps, resume killed ones, redo what a changed setting touches."""

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_lm
from transformers import Qwen2ForCausalLM

from drift_lite import cli
from drift_lite.errors import UserError
from drift_lite.metrics import compute_metrics, recompute_matches
from drift_lite.pipeline import RunDir, Step, _claim, execute, run
from drift_lite.recipe import load_recipe
from drift_lite.records import iter_rows
from drift_lite.weights import group_weights, trajectory_return, weight_rows

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "toy" / "drift.yaml"


def _steps(tmp_path, calls, keys):
    def make(name):
        def fn(resume):
            calls.append((name, resume))
            (tmp_path / name).write_text("x")
            return {}

        return fn

    return [
        Step("a", {"k": keys["a"]}, [tmp_path / "a"], make("a")),
        Step("b", {"k": keys["b"]}, [tmp_path / "b"], make("b"), ("a",)),
        Step("c", {"k": keys["c"]}, [tmp_path / "c"], make("c")),
        Step("d", {"k": keys["d"]}, [tmp_path / "d"], make("d"), ("b",)),
    ]


def test_rerun_skips_and_changes_rerun_only_dependents(tmp_path, capsys):
    run_dir = RunDir(tmp_path)
    keys = {"a": 1, "b": 1, "c": 1, "d": 1}
    calls = []
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert [c[0] for c in calls] == ["a", "b", "c", "d"]
    calls.clear()
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == []
    keys["b"] = 2
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == [("b", False), ("d", False)]
    calls.clear()
    keys["c"] = 2
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == [("c", False)]


def test_a_killed_step_resumes_and_a_missing_output_reruns(tmp_path):
    run_dir = RunDir(tmp_path)
    keys = {"a": 1, "b": 1, "c": 1, "d": 1}
    calls = []
    steps = _steps(tmp_path, calls, keys)

    def dies(resume):
        raise KeyboardInterrupt

    killed = [steps[0], Step("b", steps[1].key, steps[1].outputs, dies, ("a",))]
    with pytest.raises(KeyboardInterrupt):
        execute(run_dir, killed)
    calls.clear()
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == [("b", True), ("c", False), ("d", False)]
    calls.clear()
    (tmp_path / "c").unlink()
    execute(run_dir, _steps(tmp_path, calls, keys))
    assert calls == [("c", True)]


def test_an_output_that_exists_but_is_not_whole_is_resumed(tmp_path):
    run_dir = RunDir(tmp_path)
    calls, whole = [], {"a": True}
    keys = {"a": 1, "b": 1, "c": 1, "d": 1}

    def steps():
        first, *rest = _steps(tmp_path, calls, keys)
        first.complete = lambda: whole["a"]
        return [first, *rest]

    execute(run_dir, steps())
    calls.clear()
    whole["a"] = False  # e.g. a rollout file whose settings file says it is not finished
    execute(run_dir, steps())
    assert calls == [("a", True)]
    assert json.loads((tmp_path / "timings.json").read_text())["a"]["resumed"] is True


def test_a_run_dir_of_another_recipe_is_refused(tmp_path):
    root = tmp_path / "run"
    _claim(root, load_recipe(None, ["name=first"]), force=False)
    with pytest.raises(UserError, match="holds a run of recipe 'first'"):
        _claim(root, load_recipe(None, ["name=second"]), force=False)
    _claim(root, load_recipe(None, ["name=second"]), force=True)
    other = tmp_path / "other"
    other.mkdir()
    (other / "file").write_text("x")
    with pytest.raises(UserError, match="not a drift-lite run"):
        _claim(other, load_recipe(None), force=False)


# ---------------------------------------------------------------------------------------------------------
# A whole run on a tiny scripted model (no toy build): every figure recomputes from the files beside it


def make_bigram_lm(folder: Path) -> Path:
    """Save a 1-layer Qwen2 that is exactly a bigram model over the toy tokenizer into `folder`.

    Attention and MLP outputs are zeroed and the embeddings are one-hot, so the next-token logits depend on
    the last token only. After the `<think>` prefill it writes `</think><answer>1</answer>` or `...2...`
    (the gold of every problem below is 1 or 2), sometimes an empty answer or an unclosed `<think>x`: sampled
    episodes then differ in turns, format errors and repeats, and the weights are far from uniform.
    """
    tiny, tokenizer = make_tiny_lm(hidden=128)
    config = tiny.config
    config.tie_word_embeddings = False
    model = Qwen2ForCausalLM(config).eval()
    vocab, hidden = config.vocab_size, config.hidden_size
    ids = tokenizer.convert_tokens_to_ids
    table = {
        "<think>": {"</think>": 0.85, "x": 0.15},
        "</think>": {"<answer>": 1.0},
        "<answer>": {"1": 0.46, "2": 0.44, "</answer>": 0.10},
        "1": {"</answer>": 1.0},
        "2": {"</answer>": 1.0},
    }
    logits = torch.full((vocab, vocab), -30.0)
    logits[:, tokenizer.eos_token_id] = 0.0  # any other token ends the turn
    for prev, following in table.items():
        logits[ids(prev)] = -30.0
        for token, p in following.items():
            logits[ids(prev), ids(token)] = math.log(p)
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        # the final RMSNorm scales a one-hot vector by sqrt(hidden)
        model.lm_head.weight[:, :vocab] = logits.T / math.sqrt(hidden)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def tiny_recipe(folder: Path, *extra: str):
    """A recipe on the bigram model and a local GSM8K-schema file of 1-or-2 answers (a few seconds)."""
    source = folder / "problems.jsonl"
    if not source.exists():
        rows = [
            {"question": f"What is {a} - {a - g}?", "answer": f"#### {g}"}
            for a, g in zip(range(10, 20), [1, 2] * 5)
        ]
        source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    eval_set = {"task": "gsm8k", "source": str(source), "size": 6, "checker": "exact"}
    return load_recipe(
        None,
        [
            "name=tiny",
            f"model.name={folder / 'model'}",
            "task.name=gsm8k",
            f"task.source={source}",
            "task.checker=exact",
            "task.size=6",
            "env.max_turns=3",
            "rollout.n_samples=4",
            "rollout.max_new_tokens=8",
            "train.finetune=lora",
            "train.lr=1e-3",
            "train.batch_size=4",
            "train.grad_accum=1",
            "train.save_steps=0",
            "train.max_length=512",
            f"eval.sets=[{json.dumps(eval_set)}]",
            "eval.greedy=false",
            "eval.repeats=3",
            "eval.max_new_tokens=8",
            *extra,
        ],
    )


def run_quietly(recipe, root: Path) -> str:
    """`run` with one torch thread; returns the lines it added to log.txt."""
    log = root / "log.txt"
    before = log.read_text() if log.exists() else ""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(recipe, root, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return log.read_text()[len(before) :]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A complete run directory made by `run` on the bigram model."""
    folder = tmp_path_factory.mktemp("tiny-run")
    make_bigram_lm(folder / "model")
    root = folder / "run"
    run_quietly(tiny_recipe(folder), root)
    return root


def test_eval_metrics_equal_their_recomputation_from_the_trajectories(tiny_run):
    stored = sorted(tiny_run.glob("eval-*/eval-*.json"))
    assert [p.relative_to(tiny_run).as_posix() for p in stored] == [
        "eval-reference/eval-gsm8k.json",
        "eval-trained/eval-gsm8k.json",
    ]
    for path in stored:
        metrics = json.loads(path.read_text())
        rows = list(iter_rows(path.with_suffix(".jsonl")))
        assert metrics == compute_metrics(rows, 3)  # exact: every rate is a ratio of integer counts
        assert recompute_matches(path, path.with_suffix(".jsonl")) == []
        assert metrics["n"] == len(rows) == 18  # 6 problems x 3 sampled repeats
        # the scripted model gives the metrics something to count
        assert 0 < metrics["multi@1"] < metrics["multi@3"] < 1
        assert 0 < metrics["format_error_rate"] < 1 and 0 < metrics["repeat_rate"] < 1


def test_weights_equal_their_recomputation_from_the_rollouts(tiny_run):
    recipe = yaml.safe_load((tiny_run / "recipe.yaml").read_text())
    w = recipe["weights"]
    rollouts = list(iter_rows(tiny_run / "rollouts.jsonl"))
    weighted = list(iter_rows(tiny_run / "weighted.jsonl"))
    assert len(rollouts) == len(weighted) == 24  # 6 prompts x 4 samples, in the same order
    assert [{k: v for k, v in r.items() if k not in ("return", "weight")} for r in weighted] == rollouts
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rollouts):
        groups.setdefault(row["prompt_id"], []).append(i)
    for members in groups.values():
        returns = [
            trajectory_return(rollouts[i], gamma=w["gamma"], repeat_coef=w["repeat_coef"]) for i in members
        ]
        assert [weighted[i]["return"] for i in members] == returns
        expected = group_weights(returns, w["beta"])
        assert [weighted[i]["weight"] for i in members] == expected  # same floats, not just close
    assert weighted == weight_rows(rollouts, gamma=w["gamma"], beta=w["beta"], repeat_coef=w["repeat_coef"])
    weights = [r["weight"] for r in weighted]
    assert min(weights) < 0.01 and max(weights) > 1.5  # far from uniform: the check has teeth


def test_run_dir_holds_the_recipe_versions_timings_and_summary(tiny_run):
    text = (tiny_run / "recipe.yaml").read_text()
    recipe = yaml.safe_load(text)
    assert recipe["seed"] == 0 and recipe["name"] == "tiny" and recipe["weights"]["beta"] == 0.1
    comments = text.split("# provenance (not part of the recipe)\n")[1].splitlines()
    provenance = yaml.safe_load("\n".join(line.removeprefix("# ") for line in comments))
    assert {"python", "torch", "transformers", "peft", "drift-lite"} <= set(provenance)
    timings = json.loads((tiny_run / "timings.json").read_text())
    assert list(timings) == ["rollout", "weight", "train", "eval-reference", "eval-trained"]  # step order
    assert all(t["seconds"] >= 0 for t in timings.values())
    summary = json.loads((tiny_run / "adapter" / "summary.json").read_text())
    assert timings["train"]["train_tokens"] == summary["tokens_seen"] > 0
    assert timings["train"]["target_tokens"] == summary["target_tokens"] > 0
    assert timings["rollout"]["generated_tokens"] > 0 and timings["eval-trained"]["generated_tokens"] > 0
    log = (tiny_run / "log.txt").read_text()
    assert "[report]" in log and "gsm8k (reference -> trained): multi@1" in log and "Report: " in log
    assert (tiny_run / "report.md").is_file() and sorted(p.name for p in (tiny_run / "plots").glob("*.png"))


def test_a_rerun_skips_every_step_and_a_lost_output_reruns_only_its_step(tiny_run):
    recipe = tiny_recipe(tiny_run.parent)
    files = [tiny_run / n for n in ("rollouts.jsonl", "weighted.jsonl", "adapter/adapter_model.safetensors")]
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files}
    log = run_quietly(recipe, tiny_run)
    steps = ("rollout", "weight", "train", "eval-reference", "eval-trained")
    assert all(f"[{s}] up to date, skipped" in log for s in steps), log
    (tiny_run / "eval-reference" / "eval-gsm8k.jsonl").unlink()
    log = run_quietly(recipe, tiny_run)
    assert "[eval-reference] resuming" in log
    assert all(f"[{s}] up to date, skipped" in log for s in steps if s != "eval-reference"), log
    assert (tiny_run / "eval-reference" / "eval-gsm8k.jsonl").is_file()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in files} == before


# ---------------------------------------------------------------------------------------------------------
# Bad input through the CLI: one line on stderr, exit 2


def _one_line_error(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("drift-lite: error: "), captured.err
    assert "Traceback" not in captured.err + captured.out
    return lines[0]


def test_cli_refuses_a_run_dir_of_another_recipe(tmp_path, capsys):
    root = tmp_path / "run"
    _claim(root, load_recipe(None, ["name=first"]), force=False)
    before = sorted(root.rglob("*"))
    line = _one_line_error(capsys, ["run", str(RECIPE), "--out", str(root)])
    assert "holds a run of recipe 'first', not 'toy-drift' (use --force" in line
    after = [p for p in sorted(root.rglob("*")) if p.name != ".drift-lite.lock"]  # the run's lock (flock)
    assert after == before and (root / "run.json").read_text().count("first") == 1


def test_cli_eval_with_a_missing_adapter_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _one_line_error(capsys, ["eval", str(RECIPE), "--adapter", "missing_dir", "--out", "ev"])
    assert "adapter not found: missing_dir" in line
    assert list(tmp_path.iterdir()) == []


def test_run_creates_missing_parent_folders(tmp_path):
    root = tmp_path / "runs" / "toy"  # `runs/` is not in a fresh clone
    _claim(root, load_recipe(None), force=False)
    assert json.loads((root / "run.json").read_text()) == {"recipe": "run"}
    (root / "run.json").write_text("{not json")
    with pytest.raises(UserError, match="holds a run of recipe '<unreadable run.json>'"):
        _claim(root, load_recipe(None), force=False)


@pytest.mark.parametrize("change", ["weights.beta=0.3", "weights.repeat_coef=0.2", "weights.max_weight=2"])
def test_a_weight_setting_reruns_exactly_weight_train_and_eval_trained(tiny_run, tmp_path, change):
    """The return's settings apply at the weight step only: the rollout and eval-reference stay."""
    import shutil

    root = tmp_path / "run"
    shutil.copytree(tiny_run, root)
    folder = tiny_run.parent
    log = run_quietly(tiny_recipe(folder, change), root)
    ran = {line.split("[")[1].split("]")[0] for line in log.splitlines() if "] running" in line}
    skipped = {line.split("[")[1].split("]")[0] for line in log.splitlines() if "up to date, skipped" in line}
    assert ran == {"weight", "train", "eval-trained"}, log
    assert skipped == {"rollout", "eval-reference"}, log
    assert (root / "rollouts.jsonl").read_bytes() == (tiny_run / "rollouts.jsonl").read_bytes()


def test_a_second_process_on_a_locked_run_folder_is_refused_and_changes_nothing(tiny_run, tmp_path):
    """One writer per run folder: while another process holds it, `drift-lite run` exits 2 with one line."""
    import shutil
    import subprocess
    import sys

    root = tmp_path / "run"
    shutil.copytree(tiny_run, root)
    (root / "log.txt").unlink()
    before = {
        p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".drift-lite.lock"
    }
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from drift_lite.files import exclusive_lock\n"
            f"with exclusive_lock({str(root)!r}):\n"
            "    print('locked', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        recipe = folder_recipe = tmp_path / "tiny.yaml"
        folder_recipe.write_text(yaml.safe_dump(tiny_recipe(tiny_run.parent).to_dict()))
        second = subprocess.run(
            [sys.executable, "-m", "drift_lite.cli", "run", str(recipe), "--out", str(root)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        holder.kill()
        holder.wait()
    lines = second.stderr.splitlines()
    assert second.returncode == 2 and len(lines) == 1, second.stderr
    assert f"pid {holder.pid}" in lines[0] and "another drift-lite process" in lines[0]
    after = {
        p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".drift-lite.lock"
    }
    assert after == before  # nothing written, not even the log
