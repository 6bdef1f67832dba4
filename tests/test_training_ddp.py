"""SFT under several processes (torchrun, gloo on CPU) equals one process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_examples import make_rows, write_rows
from test_models import make_tiny_model

from drift_lite.recipe import load_recipe
from drift_lite.training import train

REPO = Path(__file__).resolve().parents[1]

COMMON = [
    "train.finetune=lora",
    "train.lr=0.01",
    "train.warmup_ratio=0.0",
    "train.max_steps=-1",
    "train.epochs=1",
    "train.save_steps=0",
    "train.lora_r=4",
    "train.lora_alpha=8",
    "train.lora_dropout=0",  # dropout masks are drawn per process: equality needs none
    "train.group_by_length=true",  # sorts within each global step: must see the global window
]

# Every process of the launched group runs this; argv: data, out root, model, then the runs to do.
_CHILD = """
import json, os, sys
from transformers import TrainerCallback
from drift_lite.recipe import load_recipe
from drift_lite.training import train

data, root, model = sys.argv[1], sys.argv[2], sys.argv[3]
common = json.loads(sys.argv[4])
runs = json.loads(sys.argv[5])

class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("simulated crash")

for name, overrides in runs.items():
    recipe = load_recipe(None, [f"model.name={model}", *common, *overrides])
    if name.endswith("-crash"):
        try:
            train(recipe, data, f"{root}/{name}", show_progress=False, callbacks=[Crash()])
        except RuntimeError:
            pass
        else:
            raise SystemExit("the crash did not happen")
    summary = train(recipe, data, f"{root}/{name}", show_progress=False)
    if summary.get("processes") != 2:
        raise SystemExit(f"ran with {summary.get('processes')} processes")
    # one file per rank: both ranks writing one file interleaved their JSON (a flaky "Extra data")
    with open(f"{root}/{name}.rank{os.environ['RANK']}.summary.json", "w") as handle:
        json.dump(summary, handle)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter_model.safetensors"))


def test_two_processes_train_the_adapter_of_one_process_with_the_same_global_batch(tmp_path):
    model = str(make_tiny_model(tmp_path / "model"))
    # 10 rows at a global batch of 4: steps of 4, 4 and a short last one of 2 (padded on the second process)
    data = write_rows(
        tmp_path / "w.jsonl", make_rows(10, weights=[0.2, 1.5, 0.7, 3.0, 0.1, 1, 2, 0.4, 5, 0.9])
    )
    runs = {
        # per process: batch 1 x GA 2 (mean), batch 2 x GA 1 (weight_sum); two processes: 4 rows a step
        "mean": ["train.normalize=mean", "train.batch_size=1", "train.grad_accum=2"],
        "weight_sum": ["train.normalize=weight_sum", "train.batch_size=2", "train.grad_accum=1"],
        # a checkpoint every step, a crash at step 2, then a rerun that resumes from checkpoint 1
        "mean-crash": [
            "train.normalize=mean",
            "train.batch_size=1",
            "train.grad_accum=2",
            "train.save_steps=1",
        ],
    }
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "--no-python",  # the worker command is the interpreter below
        sys.executable,
        "-c",
        _CHILD,
        str(data),
        str(tmp_path),
        model,
        json.dumps(COMMON),
        json.dumps(runs),
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    for normalize in ["mean", "weight_sum"]:
        one = tmp_path / f"one-{normalize}"
        recipe = load_recipe(
            None,
            [
                f"model.name={model}",
                *COMMON,
                f"train.normalize={normalize}",
                "train.batch_size=4",
                "train.grad_accum=1",
            ],
        )
        reference = train(recipe, data, one, show_progress=False)
        two = json.loads((tmp_path / f"{normalize}.rank0.summary.json").read_text())
        other = json.loads((tmp_path / f"{normalize}.rank1.summary.json").read_text())
        assert other["steps"] == two["steps"]
        assert two["steps"] == reference["steps"] == 3
        assert two["final_loss"] == pytest.approx(reference["final_loss"], rel=1e-4)
        got, want = _adapter(tmp_path / normalize), _adapter(one)
        assert got.keys() == want.keys()
        assert max(want[k].abs().max() for k in want if "lora_B" in k) > 1e-3  # trained (lora_B starts at 0)
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-5, msg=f"{normalize} {name}")

    crashed = json.loads((tmp_path / "mean-crash.rank0.summary.json").read_text())
    assert crashed["resumed_from"] == 1 and crashed["steps"] == 3
    for name, value in _adapter(tmp_path / "mean").items():
        torch.testing.assert_close(_adapter(tmp_path / "mean-crash")[name], value, rtol=1e-5, atol=1e-7)
    # only the main process wrote the output: one adapter, no leftovers of the other process
    assert not (tmp_path / "mean-crash" / "checkpoints").exists()
    assert not (tmp_path / "mean" / "training_args.bin").exists()
