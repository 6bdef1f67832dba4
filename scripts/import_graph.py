"""The import graph of drift_lite/ (function-level imports included): cycles and upstream arrows.

    .venv/bin/python scripts/import_graph.py   # "cycles: none", "upstream arrows: none" when clean

Edges to the package root (`from drift_lite import x`) are left out: importing any submodule runs
drift_lite/__init__.py first whatever the import says. The stages are the method's order: recipe -> rollouts
-> weights -> training -> evaluation -> reporting; a stage must not reach a later one, even through others.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "drift_lite"
STAGES = ["recipe", "rollouts", "weights", "training", "evaluation", "reporting"]


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its body."""
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("drift_lite"):
                targets.append(node.module)
                targets += [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            edges[name] |= {t for t in targets if t in mods and t not in (name, "drift_lite")}
    return edges


def reach(edges: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in edges[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def main() -> int:
    """Print the cycles and upstream arrows; exit 1 if there is any."""
    edges = graph(modules())
    cycles = sorted({tuple(sorted(m for m in reach(edges, a) if a in reach(edges, m))) for a in edges} - {()})
    stage = {f"drift_lite.{s}": i for i, s in enumerate(STAGES)}
    upstream = [
        f"{a} -> {b}" for a in stage for b in sorted(reach(edges, a)) if b in stage and stage[b] > stage[a]
    ]
    print("cycles:", "; ".join(" <-> ".join(c) for c in cycles) or "none")
    print("upstream arrows:", ", ".join(upstream) or "none")
    return 1 if cycles or upstream else 0


if __name__ == "__main__":
    raise SystemExit(main())
