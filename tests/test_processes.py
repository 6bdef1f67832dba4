"""`run --processes N` (drift_lite.processes): N local processes for rollout, training and evaluation give the
one-process rollout, a trained adapter and both evaluations; failures and a launcher's RANK are one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_pipeline import make_bigram_lm, tiny_recipe

from drift_lite import cli
from drift_lite.errors import UserError
from drift_lite.evaluation import evaluate
from drift_lite.pipeline import run
from drift_lite.processes import check_processes, error_line, run_children
from drift_lite.recipe import load_recipe
from drift_lite.rollouts import rollout
from drift_lite.training import is_complete


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> tuple[Path, Path]:
    """A complete run made with `processes=2` on the bigram model (its folder, and the run folder)."""
    folder = tmp_path_factory.mktemp("processes")
    make_bigram_lm(folder / "model")
    root = folder / "run"
    run(tiny_recipe(folder), root, show_progress=False, processes=2)
    return folder, root


def test_two_processes_run_every_step_into_the_files_of_one_process(two_process_run):
    folder, root = two_process_run
    recipe = tiny_recipe(folder)
    assert is_complete(root / "adapter")
    assert json.loads((root / "adapter" / "summary.json").read_text())["processes"] == 2  # DDP ran
    for label in ("reference", "trained"):
        assert sorted(p.name for p in (root / f"eval-{label}").iterdir()) == [
            "eval-gsm8k.json",
            "eval-gsm8k.jsonl",
        ]
    # the merged rollout holds the rows of a one-process rollout (per-trajectory seeds), in the same order
    one = folder / "one.jsonl"
    rollout(recipe, one, show_progress=False)
    merged = (root / "rollouts.jsonl").read_bytes()
    assert merged.count(b"\n") == 6 * 4
    assert set(merged.splitlines()) == set(one.read_bytes().splitlines()) and merged == one.read_bytes()
    # the reference's evaluation too (sampled: eval.greedy=false, 3 repeats)
    evaluate(recipe, folder / "eval-one", show_progress=False)
    for name in ("eval-gsm8k.jsonl", "eval-gsm8k.json"):
        assert (root / "eval-reference" / name).read_bytes() == (folder / "eval-one" / name).read_bytes()
    # no part is left behind; every child's log is kept
    assert not list(root.glob("*shard*"))
    assert len(list((root / "logs").glob("*.log"))) == 2 + 1 + 2 + 2
    timings = json.loads((root / "timings.json").read_text())
    assert timings["rollout"]["processes"] == 2 and timings["eval-trained"]["processes"] == 2


def test_a_rerun_with_two_processes_skips_every_step(two_process_run, capsys):
    folder, root = two_process_run
    run(tiny_recipe(folder), root, show_progress=False, processes=2)
    log = capsys.readouterr().out
    assert log.count("up to date, skipped") == 5


def test_a_failed_child_is_one_line_naming_its_stage_and_shard(tmp_path):
    fail = "import sys; print('loading'); sys.exit('drift-lite: error: task.size: too few')"
    children = [
        ("rollout shard 0/2", [sys.executable, "-c", "pass"], {}),
        ("rollout shard 1/2", [sys.executable, "-c", fail], {}),
    ]
    with pytest.raises(UserError) as info:
        run_children(children, tmp_path / "logs")
    message = str(info.value)
    assert message.startswith("rollout shard 1/2 failed (exit 1): task.size: too few (log: ")
    assert "\n" not in message and (tmp_path / "logs" / "rollout-shard-1-2.log").is_file()
    crash = tmp_path / "crash.log"
    crash.write_text("Traceback (most recent call last):\n  File x\nRuntimeError: CUDA out of memory\n")
    assert error_line(crash) == "RuntimeError: CUDA out of memory"


def test_processes_under_a_launcher_or_below_one_are_refused_in_one_line(tmp_path, monkeypatch, capsys):
    assert check_processes(1) == 1 and check_processes(3) == 3
    for bad in (0, -1, True, 2.0):
        with pytest.raises(UserError, match="expected a whole number"):
            check_processes(bad)
    monkeypatch.setenv("RANK", "0")
    assert check_processes(1) == 1  # the default path is unchanged under a launcher
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\n")
    out = tmp_path / "run"
    assert cli.main(["run", str(recipe), "--out", str(out), "--processes", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drift-lite: error: --processes 2: this process is already one of a launcher's")
    assert "\n" not in err and not out.exists()


def test_the_recipe_a_run_writes_loads_back_as_the_same_recipe(two_process_run):
    folder, root = two_process_run
    assert load_recipe(root / "recipe.yaml").to_dict() == tiny_recipe(folder).to_dict()


def test_more_processes_than_gpus_is_refused_for_a_cuda_run(monkeypatch):
    import torch

    from drift_lite.processes import check_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    model = load_recipe(None, ["model.device=auto"]).model
    check_devices(model, 1)
    with pytest.raises(UserError, match="--processes 2: 1 CUDA device.* one process per GPU"):
        check_devices(model, 2)
    check_devices(load_recipe(None, ["model.device=cpu"]).model, 2)  # CPU processes share the cores


def test_the_error_line_of_a_launched_child_is_its_own_not_torchruns(tmp_path):
    log = tmp_path / "train.log"
    log.write_text(
        "Traceback (most recent call last):\n"
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "Traceback (most recent call last):\n"
        "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n"
    )
    assert error_line(log).startswith("torch.OutOfMemoryError: CUDA out of memory")
