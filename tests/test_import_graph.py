"""The import graph: no cycle, no step module reaching a later step (scripts/import_graph.py)."""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "import_graph.py"


def test_no_cycle_and_no_upstream_arrow():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "cycles: none" in done.stdout, done.stdout
    assert "upstream arrows: none" in done.stdout, done.stdout
