"""A plain (not editable) `pip install` of the clone in a fresh venv runs `drift-lite run toy` from elsewhere.

Slow (a venv and an install, about 2-4 min): run with `make test-slow`. The venv gets torch first (the
Makefile's pin, from the machine's wheel cache/index) so that pip never resolves a CUDA build on a CPU box.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_TOY_RUN

REPO = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"  # keep in step with TORCH in the Makefile
SMALL = [
    *TINY_TOY_RUN,
    "train.batch_size=2",
    "train.grad_accum=1",
    "train.max_steps=4",
]


def _copy_clone(dest: Path) -> Path:
    """The working tree's tracked and not-ignored files (symlinks kept), as a fresh clone would have them."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO / os.fsdecode(name)
        if not src.exists() and not src.is_symlink():  # deleted in the working tree, not yet committed
            continue
        target = dest / os.fsdecode(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target, follow_symlinks=False)
    return dest


def _check(argv: list[str], log: Path, **kwargs) -> None:
    """Run a command with its output in `log`; on failure show the log's tail."""
    with log.open("a") as handle:
        proc = subprocess.run(argv, stdout=handle, stderr=subprocess.STDOUT, **kwargs)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
    assert proc.returncode == 0, f"{' '.join(argv[:4])} ... failed:\n{tail}"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("git") is None, reason="needs git to list the clone's files")
def test_pip_install_then_run_toy_from_another_folder(tmp_path):
    clone = _copy_clone(tmp_path / "clone")
    venv = tmp_path / "venv"
    log = tmp_path / "install.log"
    bin_dir = venv / "bin"
    _check([sys.executable, "-m", "venv", str(venv)], log)
    # --no-compile: byte-compiling torch's thousands of files is a minute of the install that this test
    # does not need (Python compiles what it imports)
    pip = [str(bin_dir / "pip"), "install", "-q", "--no-compile"]
    _check([*pip, TORCH], log)
    _check([*pip, str(clone)], log)  # not editable: pip builds a wheel, as from PyPI
    shutil.rmtree(clone)  # the installed package must stand alone

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DRIFT_LITE_PROGRESS")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", DRIFT_LITE_CACHE=str(tmp_path / "cache"))
    out = tmp_path / "run.log"
    # `toy` is a packaged recipe name: needs recipe.load_recipe to call recipe_files.find_recipe
    _check([str(bin_dir / "drift-lite"), "run", "toy", "--out", "run", *SMALL], out, cwd=work, env=env)

    run = work / "run"
    for name in (
        "rollouts.jsonl",
        "weighted.jsonl",
        "report.md",
        "eval-reference",
        "eval-trained",
        "adapter",
    ):
        assert (run / name).exists(), f"{name} missing from the run folder"
    assert (run / "eval-trained" / "eval-toy.json").is_file()
    text = out.read_text()
    assert "toy (reference -> trained): multi@1" in text
    # the CLI calls quiet.quiet_known_noise: no third-party warning line reaches the user
    assert "Failed to load" not in text and "Warning" not in text
