"""docs/tutorial.md runs top to bottom: its ```python blocks, in order, in one fresh process and folder.

Our own runner (about 30 lines) rather than phmdoctest or pytest-markdown-docs: neither is installed, and
both run blocks as separate tests or check printed output, while the tutorial is one program whose blocks
share state and whose numbers vary with the machine. Each block is compiled with its Markdown line offset,
so a traceback names the line in docs/tutorial.md. Blocks marked ```python exercise are not run.

    python tests/test_tutorial.py --keep DIR   # run the tutorial in DIR (kept), e.g. to refresh docs/img
    DRIFT_TUTORIAL_DIR=DIR pytest -m slow tests/test_tutorial.py   # the slow test, its folder kept in DIR
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[1] / "docs" / "tutorial.md"
PLOTS = ("tutorial-beta.png", "tutorial-bandit.png", "tutorial-theory-kl.png", "tutorial-multi-at-k.png")
_FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first code line number, source) of every block fenced exactly as ```python, in order."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _FENCE.finditer(text)]


def run_blocks(markdown: Path, folder: Path) -> None:
    """Execute the blocks of `markdown` in order in this process, with `folder` as the working directory."""
    os.chdir(folder)
    namespace: dict = {"__name__": "__main__"}
    for line, source in python_blocks(markdown.read_text(encoding="utf-8")):
        # padding with newlines makes tracebacks show the Markdown file's own line numbers
        exec(compile("\n" * (line - 1) + source, str(markdown), "exec"), namespace)


def test_python_blocks_are_found_in_order():
    """The extractor finds plain ```python blocks with their line numbers and skips ```python exercise."""
    text = "intro\n```python\na = 1\n```\n\n```python exercise\nb = 2\n```\n```python\nc = a\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (10, "c = a\n")]


@pytest.mark.slow
def test_tutorial_runs_top_to_bottom(tmp_path):
    """Every block runs without error in a fresh process and folder, and writes the plots the text shows."""
    folder = Path(os.environ.get("DRIFT_TUTORIAL_DIR") or tmp_path)
    path = os.pathsep.join(filter(None, [str(TUTORIAL.parents[1]), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}  # this checkout
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--keep", str(folder)], env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    for name in PLOTS:
        assert (folder / "img" / name).stat().st_size > 0, name
        assert f"(img/{name})" in TUTORIAL.read_text(encoding="utf-8"), f"{name} is not shown in the text"
    print(f"tutorial wall time: {wall:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--keep":
        sys.exit("usage: python tests/test_tutorial.py --keep DIR")
    target = Path(sys.argv[2]).resolve()
    target.mkdir(parents=True, exist_ok=True)
    run_blocks(TUTORIAL, target)
