"""Streaming `weight_file` versus a naive load-everything baseline: rows/s and peak RSS, side by side.

Run from the project root:

    .venv/bin/python benchmarks/weights_scale.py                # 1,000,000 rows (~2.5 GB of JSONL in /tmp)
    .venv/bin/python benchmarks/weights_scale.py --rows 200000

It generates N release-like rollout rows (groups of 8 trajectories, 1-5 turns, ~300-char messages, full
reward_details) into a temporary folder, then runs, each in its own subprocess so peak RSS is clean:
(a) drift_lite.weights.weight_file, (b) a naive baseline (json.loads every line into a list, weight_rows,
json.dumps each row back), and (a) again on the same number of rows with messages twice as long, to show that
its peak RSS does not grow with row text. Wall and CPU time are measured inside each child around the work
only; the machine's load average is printed first, since other jobs on the same cores slow the wall figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GROUP = 8
TURNS_MAX = 5
WORDS = [
    *("the", "sum", "of", "carry", "digit", "step", "answer", "check", "units", "tens", "so", "we", "get"),
    *("then", "add", "again", "wait", "recompute", "therefore", "total", "value", "result", "number"),
    *("first", "second", "next", "problem", "equals", "divide", "multiply"),
]


def _text(rng: random.Random, length: int) -> str:
    """About `length` characters of word salad."""
    out: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(WORDS)
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def _row(rng: random.Random, prompt: int, pool: list[str]) -> dict:
    """One release-shaped rollout row of 1-5 turns."""
    turns = rng.randint(1, TURNS_MAX)
    solved = rng.random() < 0.7
    t_star = turns if solved else None
    answers = [str(rng.randint(90, 110)) for _ in range(turns)]
    messages = [
        {"role": "system", "content": "You're a helpful assistant. "},
        {"role": "user", "content": "You are solving Math problems.\n\nProblem:\n" + rng.choice(pool)},
    ]
    details = {}
    for t in range(1, turns + 1):
        if t > 1:
            messages.append({"role": "user", "content": "Incorrect. Please think again."})
        answer = answers[t - 1]
        reply = f"<think>{rng.choice(pool)}</think><answer>{answer}</answer>"
        messages.append({"role": "assistant", "content": reply})
        ok = solved and t == turns
        details[f"t{t}"] = {
            "env_reward": 1.0 if ok else 0.0,
            "format_penalty": 0.0,
            "actions": [answer],
            "parsed_actions": [answer],
            "info": {"action_is_valid": True, "success": ok, "per_question_unique_answers_ratio": 1.0},
        }
    return {
        "prompt_id": f"prompt_{prompt}",
        "gold": "100",
        "messages": messages,
        "verifier": {f"t{k}": int(solved and k == turns) for k in range(1, TURNS_MAX + 1)},
        "turn_rewards": {f"t{k}": 1.0 if solved and k == turns else 0.0 for k in range(1, TURNS_MAX + 1)},
        "reward_details": details,
        "t_star": t_star,
        "answer_norms": answers,
        "format_penalty": -0.1 * rng.randint(0, 1),
    }


def generate(path: Path, rows: int, text_chars: int, seed: int = 0) -> None:
    """Write `rows` rows with messages of about `text_chars` characters."""
    rng = random.Random(seed)
    pool = [_text(rng, text_chars) for _ in range(256)]
    with open(path, "w", encoding="utf-8") as handle:
        for index in range(rows):
            handle.write(json.dumps(_row(rng, index // GROUP, pool), ensure_ascii=False) + "\n")


def _child_streaming(src: str, dst: str) -> None:
    from drift_lite.weights import weight_file

    weight_file(src, dst, show_progress=False)


def _child_naive(src: str, dst: str) -> None:
    from drift_lite.weights import weight_rows

    with open(src, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    weighted = weight_rows(rows)
    with open(dst, "w", encoding="utf-8") as handle:
        for row in weighted:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def child(kind: str, src: str, dst: str) -> None:
    """Run one measured job in this process and print {seconds, peak_rss_mb} as JSON."""
    sys.path.insert(0, str(ROOT))
    import drift_lite.weights  # noqa: F401 - import cost stays out of the timing

    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    (_child_streaming if kind == "streaming" else _child_naive)(src, dst)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_rss_mb": after.ru_maxrss / 1024}))


def measure(kind: str, src: Path, dst: Path) -> dict:
    """Run `child` in a fresh interpreter; return its report."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(src), str(dst)],
        check=True,
        capture_output=True,
        text=True,
    )
    dst.unlink(missing_ok=True)
    Path(str(dst) + ".diagnostics.json").unlink(missing_ok=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(label: str, rows: int, report: dict) -> str:
    rate = rows / report["seconds"]
    seconds, cpu, peak = report["seconds"], report["cpu_seconds"], report["peak_rss_mb"]
    return (
        f"{label}: {rows} rows in {seconds:.1f} s = {rate:,.0f} rows/s "
        f"(CPU {cpu:.1f} s = {rows / cpu:,.0f} rows/CPU-s), peak RSS {peak:.0f} MB"
    )


def main() -> None:
    """Generate the data, run the three measurements, print the figures and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chars", type=int, default=300, help="approximate characters per message")
    parser.add_argument("--tmpdir", default=None, help="where to put the generated files")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "SRC", "DST"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{os.cpu_count()} CPUs, load average before start: {load} (other jobs slow the wall-clock figures)"
    )
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as tmp:
        folder = Path(tmp)
        short, long = folder / "rows.jsonl", folder / "rows_long.jsonl"
        started = time.perf_counter()
        generate(short, args.rows, args.chars)
        print(
            f"generated {args.rows} rows, {short.stat().st_size / 2**20:.0f} MB "
            f"in {time.perf_counter() - started:.0f} s",
            flush=True,
        )
        streaming = measure("streaming", short, folder / "out.jsonl")
        print(_line("(a) streaming weight_file", args.rows, streaming), flush=True)
        naive = measure("naive", short, folder / "out.jsonl")
        print(_line("(b) naive load-all baseline", args.rows, naive), flush=True)
        print(
            f"ratio (a)/(b): speed {naive['seconds'] / streaming['seconds']:.2f}x, "
            f"peak RSS {streaming['peak_rss_mb'] / naive['peak_rss_mb']:.3f}x",
            flush=True,
        )
        short.unlink()
        generate(long, args.rows, 2 * args.chars)
        size_mb = long.stat().st_size / 2**20
        print(f"generated {args.rows} rows with 2x longer messages, {size_mb:.0f} MB", flush=True)
        doubled = measure("streaming", long, folder / "out.jsonl")
        print(_line("(a) streaming weight_file, 2x text", args.rows, doubled), flush=True)
        one, two = streaming["peak_rss_mb"], doubled["peak_rss_mb"]
        print(f"peak RSS of (a): {one:.0f} MB at 1x text, {two:.0f} MB at 2x text (ratio {two / one:.2f})")


if __name__ == "__main__":
    main()
