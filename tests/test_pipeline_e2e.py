"""`drift-lite run` on the toy recipe end to end, through the real CLI in a subprocess (small settings).

One run directory goes through three invocations: the first is killed with SIGKILL during the train step,
the second resumes it to the end, the third changes `weights.beta` and must redo exactly weight, train and
eval-trained. The toy reference is built with tiny settings into a cache folder of this module (seconds).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_TOY_RUN

from drift_lite.metrics import recompute_matches
from drift_lite.records import iter_rows

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "toy" / "drift.yaml"
SMALL = [
    *TINY_TOY_RUN,
    "train.save_steps=1",
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.epochs=3",  # 24 optimizer steps: time to see a checkpoint and kill mid-training
]
STEPS = ("rollout", "weight", "train", "eval-reference", "eval-trained")
# Written before the train step and never to be touched again by a resume (bytes and mtime compared).
UPSTREAM = (
    "rollouts.jsonl",
    "rollouts.jsonl.settings.json",
    "weighted.jsonl",
    "weighted.jsonl.diagnostics.json",
    ".stamps/rollout.json",
    ".stamps/weight.json",
)
TIMEOUT = 300


def _env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DRIFT_LITE_PROGRESS"}
    env.update(OMP_NUM_THREADS="1", DRIFT_LITE_CACHE=str(cache), HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    return env


def _argv(root: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "drift_lite.cli", "run", str(RECIPE), "--out", str(root), *SMALL, *extra]


def _snapshot(root: Path, names: tuple[str, ...]) -> dict[str, tuple[bytes, int]]:
    return {n: ((root / n).read_bytes(), (root / n).stat().st_mtime_ns) for n in names}


def _tail(path: Path, n: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


def _run(root: Path, cache: Path, out: Path, *extra: str) -> tuple[str, str]:
    """Run `drift-lite run` to the end; returns (stdout+stderr, the lines it added to log.txt)."""
    log = root / "log.txt"
    before = log.read_text() if log.exists() else ""
    with out.open("w") as handle:
        proc = subprocess.run(
            _argv(root, *extra),
            cwd=REPO,
            env=_env(cache),
            stdout=handle,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT,
        )
    assert proc.returncode == 0, _tail(out)
    return out.read_text(), log.read_text()[len(before) :]


def _complete_checkpoint(adapter: Path) -> bool:
    return any((adapter / "checkpoints").glob("checkpoint-*/checkpoint_complete"))


def _kill_during_train(root: Path, cache: Path, out: Path) -> None:
    """Start a run; SIGKILL it once the train step has written a complete checkpoint."""
    with out.open("w") as handle:
        proc = subprocess.Popen(_argv(root), cwd=REPO, env=_env(cache), stdout=handle, stderr=handle)
    try:
        deadline = time.monotonic() + TIMEOUT
        log = root / "log.txt"
        while time.monotonic() < deadline and proc.poll() is None:
            if (
                log.exists()
                and "[train] running" in log.read_text()
                and _complete_checkpoint(root / "adapter")
            ):
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before a train checkpoint appeared:\n{_tail(out)}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> dict:
    """A toy run killed during train, then resumed to the end; what each part did."""
    folder = tmp_path_factory.mktemp("e2e")
    root, cache = folder / "run", folder / "cache"
    _kill_during_train(root, cache, folder / "killed.txt")
    killed_log = (root / "log.txt").read_text()
    assert not (root / "adapter" / "done.json").exists(), "training finished before the kill"
    upstream = _snapshot(root, UPSTREAM)
    output, log = _run(root, cache, folder / "resumed.txt")
    return {
        "root": root,
        "cache": cache,
        "folder": folder,
        "killed_log": killed_log,
        "upstream": upstream,
        "output": output,
        "log": log,
    }


def test_a_run_killed_during_train_resumes_without_recomputing_earlier_steps(run_dir):
    root, log = run_dir["root"], run_dir["log"]
    killed = run_dir["killed_log"]
    assert "[weight] done" in killed and "[train] running" in killed and "[train] done" not in killed
    assert "[rollout] up to date, skipped" in log and "[weight] up to date, skipped" in log, log
    assert "[train] resuming" in log and "[train] done" in log, log
    assert "[eval-reference] running" in log and "[eval-trained] running" in log, log
    assert _snapshot(root, UPSTREAM) == run_dir["upstream"]  # same bytes, same mtime
    summary = json.loads((root / "adapter" / "summary.json").read_text())
    assert summary["resumed_from"] is not None and summary["resumed_from"] >= 1
    assert summary["steps"] == 24
    timings = json.loads((root / "timings.json").read_text())
    assert timings["train"]["resumed"] is True and timings["train"]["train_tokens"] == summary["tokens_seen"]
    assert not (root / "adapter" / "checkpoints").exists()  # deleted once the adapter is final


def test_the_run_directory_holds_every_artifact(run_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = run_dir["root"]
    text = (root / "recipe.yaml").read_text()
    recipe = yaml.safe_load(text)
    assert recipe["name"] == "toy-drift" and recipe["seed"] == 0 and recipe["task"]["size"] == 8
    assert recipe["toy"]["hidden_size"] == 32 and recipe["train"]["epochs"] == 3.0
    for package in ("torch", "transformers", "peft", "drift-lite", "python"):
        assert f"\n# {package}: " in text, package

    rollouts = list(iter_rows(root / "rollouts.jsonl"))
    weighted = list(iter_rows(root / "weighted.jsonl"))
    assert len(rollouts) == len(weighted) == 16
    assert all("weight" in r and "return" in r for r in weighted)

    adapter = root / "adapter"
    summary = json.loads((adapter / "summary.json").read_text())
    base = AutoModelForCausalLM.from_pretrained(summary["base_model"])
    model = PeftModel.from_pretrained(base, str(adapter))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained, not the zero init

    for label in ("reference", "trained"):
        stored = root / f"eval-{label}" / "eval-toy.json"
        metrics = json.loads(stored.read_text())
        assert metrics["n"] == 8 and {"multi@1", "multi@5", "per_turn", "mean_turns"} <= set(metrics)
        assert recompute_matches(stored, stored.with_suffix(".jsonl")) == []

    report = (root / "report.md").read_text()
    assert "## Multi-turn metrics" in report and "toy-drift / trained" in report
    plots = sorted((root / "plots").glob("*.png"))
    assert {p.name for p in plots} >= {"loss.png", "weights.png", "multi_at_k_toy.png", "per_turn_toy.png"}
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in plots)
    assert "Report: " in (root / "log.txt").read_text()
    timings = json.loads((root / "timings.json").read_text())
    assert set(timings) == set(STEPS) and all(t["seconds"] >= 0 for t in timings.values())
    assert timings["rollout"]["generated_tokens"] > 0
    out = run_dir["output"]  # the one-screen summary closes the command's output
    assert "toy (reference -> trained): multi@1" in out and "multi@5" in out and f"Report: {root}" in out


def test_a_changed_setting_reruns_exactly_the_steps_that_depend_on_it(run_dir):
    root, cache = run_dir["root"], run_dir["cache"]
    kept = (*UPSTREAM[:2], "eval-reference/eval-toy.json", "eval-reference/eval-toy.jsonl")
    before = _snapshot(root, kept)
    old_weights = (root / "weighted.jsonl").stat().st_mtime_ns
    _, log = _run(root, cache, run_dir["folder"] / "beta.txt", "weights.beta=0.2")
    ran = [s for s in STEPS if f"[{s}] running" in log]
    skipped = [s for s in STEPS if f"[{s}] up to date, skipped" in log]
    assert ran == ["weight", "train", "eval-trained"], log
    assert skipped == ["rollout", "eval-reference"], log
    assert _snapshot(root, kept) == before
    assert (root / "weighted.jsonl").stat().st_mtime_ns != old_weights  # rewritten (maybe same bytes: the
    # tiny reference fails every prompt, so every group has equal returns and weight 1 under any beta)
    diagnostics = json.loads((root / "weighted.jsonl.diagnostics.json").read_text())
    assert diagnostics["settings"]["beta"] == 0.2
    assert yaml.safe_load((root / "recipe.yaml").read_text())["weights"]["beta"] == 0.2
    assert json.loads((root / "adapter" / "summary.json").read_text())["resumed_from"] is None
