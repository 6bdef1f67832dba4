"""`drift-lite run --processes N`: a run's rollout, training and evaluation in N local processes.

- rollout: N children `drift-lite rollout RECIPE --out <part> --shard i/N`, then `shards.merge` of the parts;
- training: `python -m torch.distributed.run --standalone --nproc_per_node=N -m drift_lite.cli train ...`
  (DDP through accelerate, as `training.py` runs under any launcher: gloo on CPU, nccl on CUDA);
- evaluation: N children `drift-lite eval RECIPE --out <part> --shard i/N`, then `evaluation.merge_evals`.

The children are the kit's own CLI commands, so a sharded step is exactly what a user runs by hand, and a
child that dies (a kill, out of memory) takes only its shard down: a rerun resumes the rollout parts that
finished. Each child writes its output to `<run>/logs/<stage>-shard-<i>-<N>.log`; a failed one is one
line naming the stage and the shard with the child's error line (a UserError, so the CLI exits 2).
We start plain subprocesses rather than `multiprocessing` workers because torch's DDP launcher needs a
command line anyway, and one way of starting children keeps the failure handling in one place.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import drift_lite
from drift_lite.errors import UserError
from drift_lite.files import read_json

_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def check_processes(processes: object) -> int:
    """The process count of `run --processes N` (an int >= 1); N > 1 under an outer launcher is refused."""
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise UserError(f"--processes {processes}: expected a whole number >= 1")
    if processes > 1 and os.environ.get("RANK", "").strip():
        raise UserError(
            f"--processes {processes}: this process is already one of a launcher's (RANK is set); "
            "use either the launcher or --processes"
        )
    return processes


def check_devices(model, processes: int) -> None:
    """Refuse more processes than CUDA devices for a CUDA run (DDP gives each process its own GPU)."""
    if processes == 1:
        return
    from drift_lite.models import resolve_device

    if resolve_device(model) != "cuda":
        return
    import torch

    count = torch.cuda.device_count()
    if count < processes:
        raise UserError(
            f"--processes {processes}: {count} CUDA device(s) visible here; use at most one process per GPU"
        )


def child_env(processes: int, device: str | None = None) -> dict[str, str]:
    """The environment of a child: this kit's code first on the path, no launcher variables, and, unless set,
    the CPU's threads divided among the processes (N processes each using every core slow each other)."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCHER_VARS}
    root = str(Path(drift_lite.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def _gpus_for(processes: int) -> list[str | None]:
    """One visible CUDA device per shard when there are enough of them; else every shard sees them all."""
    import torch

    if not torch.cuda.is_available() or torch.cuda.device_count() < processes:
        return [None] * processes
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    ids = [d.strip() for d in visible.split(",")] if visible else [str(i) for i in range(processes)]
    return [ids[i] for i in range(processes)]


def _cli(command: str, recipe_file: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "drift_lite.cli", command, str(recipe_file), *args]


def error_line(log: Path) -> str:
    """The line that says why a child failed: the kit's one-line error, else an exception's last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return "(no log)"
    for pattern in (r"^drift-lite: error: ", r"^[\w.]*(Error|Exception|Interrupt)\b"):
        # torchrun's own ChildFailedError wraps the child's error, which it printed above: keep the child's
        found = [line for line in lines if re.match(pattern, line) and "ChildFailedError" not in line]
        if found:
            return re.sub(r"^drift-lite: error: ", "", found[-1])
    return lines[-1] if lines else "(nothing written)"


def run_children(children: list[tuple[str, list[str], dict[str, str]]], logs: Path) -> None:
    """Start every (label, command, env) at once and wait for all; raise a one-line UserError naming the
    first failed child (its label: stage and shard) and its error line. A Ctrl-C stops every child."""
    logs.mkdir(parents=True, exist_ok=True)
    running = []
    try:
        for label, command, env in children:
            log = logs / (re.sub(r"[^A-Za-z0-9.-]+", "-", label).strip("-") + ".log")
            with open(log, "wb") as handle:  # the child holds its own copy of the descriptor
                proc = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env)
            running.append((label, proc, log))
        for _, proc, _ in running:
            proc.wait()
    except BaseException:
        for _, proc, _ in running:
            proc.terminate()
        for _, proc, _ in running:
            proc.wait()
        raise
    for label, proc, log in running:
        if proc.returncode != 0:
            raise UserError(f"{label} failed (exit {proc.returncode}): {error_line(log)} (log: {log})")


def shard_paths(out: Path, processes: int) -> list[Path]:
    """The part of each shard i of N beside `out` (as a launcher's ranks write them)."""
    from drift_lite.shards import shard_path

    return [shard_path(out, (i, processes)) for i in range(processes)]


def remove_rollout_parts(parts: list[Path]) -> None:
    """Delete rollout parts with their settings and lock files."""
    from drift_lite.records import fingerprint_path

    for part in parts:
        for path in (part, fingerprint_path(part), Path(f"{part}.lock")):
            path.unlink(missing_ok=True)


def rollout(recipe_file: Path, out: Path, processes: int, logs: Path, *, fresh: bool) -> dict:
    """Rollout shards in `processes` children, merged into `out`; `fresh`: drop parts of an earlier run
    first (else a finished part is kept and a killed one resumes)."""
    from drift_lite.shards import merge

    parts = shard_paths(out, processes)
    if fresh:
        remove_rollout_parts(parts)
    gpus = _gpus_for(processes)
    children = [
        (
            f"rollout shard {i}/{processes}",
            _cli("rollout", recipe_file, "--out", str(part), "--shard", f"{i}/{processes}"),
            child_env(processes, gpus[i]),
        )
        for i, part in enumerate(parts)
    ]
    run_children(children, logs)
    stats = merge(parts, out)
    remove_rollout_parts(parts)
    return stats


def train(recipe_file: Path, data: Path, out: Path, processes: int, logs: Path) -> dict:
    """Weighted SFT under torch's DDP launcher with `processes` processes; returns the output's summary."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # one node: a local rendezvous on a free port
        f"--nproc_per_node={processes}",
        "-m",
        "drift_lite.cli",
        "train",
        str(recipe_file),
        "--data",
        str(data),
        "--out",
        str(out),
    ]
    run_children([(f"train ({processes} processes)", command, child_env(processes))], logs)
    summary = read_json(out / "summary.json")
    return summary if isinstance(summary, dict) else {}


def evaluate(recipe_file: Path, out: Path, processes: int, logs: Path, adapter: Path | None) -> dict:
    """Evaluation shards in `processes` children, merged into the folder `out`; returns `merge_evals`'s."""
    import shutil

    from drift_lite.evaluation import merge_evals

    parts = shard_paths(out, processes)
    for part in parts:  # an evaluation is rewritten whole: no part of an earlier one is kept
        shutil.rmtree(part, ignore_errors=True)
    extra = ["--adapter", str(adapter)] if adapter is not None else []
    gpus = _gpus_for(processes)
    children = [
        (
            f"{out.name} shard {i}/{processes}",
            _cli("eval", recipe_file, "--out", str(part), "--shard", f"{i}/{processes}", *extra),
            child_env(processes, gpus[i]),
        )
        for i, part in enumerate(parts)
    ]
    run_children(children, logs)
    stats = merge_evals(parts, out)
    for part in parts:
        shutil.rmtree(part, ignore_errors=True)
    return stats
