"""The report on fake run directories: tables with the right numbers, valid PNGs, partial and missing runs."""

import json
from pathlib import Path

import pytest
import yaml

from drift_lite.errors import UserError
from drift_lite.metrics import compute_metrics, recompute_matches
from drift_lite.report_runs import load_run, sample_weights
from drift_lite.reporting import summary_lines, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def row(t_star, answers, turns=5, pid="p-0"):
    keys = [f"t{k}" for k in range(1, turns + 1)]
    return {
        "prompt_id": pid,
        "gold": "4",
        "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "2+2?"}],
        "verifier": {k: int(i + 1 == t_star) for i, k in enumerate(keys)},
        "turn_rewards": {k: float(i + 1 == t_star) for i, k in enumerate(keys)},
        "reward_details": {},
        "t_star": t_star,
        "answer_norms": answers,
        "format_penalty": 0.0,
    }


# Reference: multi@1..5 = .25 .5 .75 .75 .75 (hand counts in test_metrics). Trained: 3 of 4 at turn 1, 1 at 2.
REFERENCE = [row(1, ["4"]), row(3, ["5", "5", "4"]), row(None, []), row(2, ["4"])]
TRAINED = [row(1, ["4"]), row(1, ["4"]), row(1, ["4"]), row(2, ["5", "4"])]


def write_eval(run: Path, label: str, rows: list, eval_set: str = "toy") -> None:
    folder = run / f"eval-{label}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"eval-{eval_set}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"eval-{eval_set}.json").write_text(json.dumps(compute_metrics(rows)))


def make_run(root: Path, name: str = "demo", dirname: str | None = None) -> Path:
    """A complete fake run directory with small synthetic content."""
    run = root / (dirname or name)
    run.mkdir(parents=True)
    recipe = {"name": name, "seed": 3, "model": {"name": "toy"}, "task": {"name": "toy", "size": 4}}
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (run / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in REFERENCE))
    lines = []
    for i, weight in enumerate([0.001, 0.5, 1.0, 2.499, 1.0, 1.0, 0.0, 2.0]):
        line = json.dumps({**row(1, ["4"], pid=f"p-{i // 4}"), "return": 0.9, "weight": weight})
        lines.append(line + "\n")
    # One row whose weight is not the last field: read through the full JSON fallback.
    lines.append(json.dumps({"weight": 3.0, **row(1, ["4"], pid="p-2")}) + "\n")
    (run / "weighted.jsonl").write_text("".join(lines))
    diagnostics = {"rows": 9, "groups": 3, "ess": {"mean": 3.5, "min": 2.0}, "equal_return_groups": 1}
    (run / "weighted.diagnostics.json").write_text(json.dumps({**diagnostics, "max_weight": 3.0}))
    (run / "adapter").mkdir()
    log = [{"step": s, "loss": loss, "lr": 1e-4} for s, loss in zip(range(1, 6), [2.0, 1.5, 1.0, 1.3, 1.1])]
    text = "".join(json.dumps(e) + "\n" for e in log) + json.dumps({"step": 5, "train_runtime": 9.0}) + "\n"
    (run / "adapter" / "train_log.jsonl").write_text(text + '{"step": 6, "lo')  # killed mid-line
    write_eval(run, "reference", REFERENCE)
    write_eval(run, "trained", TRAINED)
    timings = {
        "rollout": {"seconds": 12.5, "generated_tokens": 5000},
        "train": {"seconds": 30.0, "train_tokens": 600},
    }
    (run / "timings.json").write_text(json.dumps(timings))
    return run


def check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path
    assert len(data) > 5000, path


def test_full_report(tmp_path):
    run = make_run(tmp_path / "runs")
    report = write_report([run], tmp_path / "out")
    assert report == tmp_path / "out" / "report.md"
    text = report.read_text()
    assert text.startswith("# drift-lite report")
    assert "| demo | " in text and "| toy | toy | 3 | reference, trained |" in text
    header = "| run / label | n | multi@1 | multi@2 | multi@3 | multi@4 | multi@5 | correction | repeats |"
    assert header in text
    assert (
        "| demo / reference | 4 | 0.250 | 0.500 | 0.750 | 0.750 | 0.750 | 0.667 | 0.500 | 0.545 | 2.750 |"
        in text
    )
    assert (
        "| demo / trained | 4 | 0.750 | 1.000 | 1.000 | 1.000 | 1.000 | 1.000 | 0.000 | 0.000 | 1.250 |"
        in text
    )
    assert "| demo / reference | 0.250 | 0.333 | 0.500 | 0.000 | 0.000 |" in text  # per-turn accuracy
    assert "| demo / trained | 0.750 | 1.000 | – | – | – |" in text
    assert "| ess.mean | 3.500 |" in text and "| equal_return_groups | 1 |" in text
    assert "| demo | 9 | 0.000 | 1.000 | 3.000 | 0.222 |" in text  # weights: rows, min, median, max, < 0.01
    assert "| demo | 5 | 2.000 | 1.100 | 1.000 | 3 |" in text  # loss: steps, first, last, min, at step
    assert "1 unreadable line(s)" in text
    assert "| demo | rollout | 12.500 | 5000 | – | 400.000 |" in text
    assert "| demo | train | 30.000 | – | 600 | 20.000 |" in text
    assert "| demo | **total** | 42.500 | 5000 | 600 | – |" in text
    assert "Every run has all expected files." in text
    plots = sorted(p.name for p in (tmp_path / "out" / "plots").iterdir())
    assert plots == ["loss.png", "multi_at_k_toy.png", "per_turn_toy.png", "weights.png"]
    for name in plots:
        assert f"](plots/{name})" in text
        check_png(tmp_path / "out" / "plots" / name)
    assert not [p for p in (tmp_path / "out").rglob(".*.tmp")]  # temp files renamed away


def test_eval_json_matches_recomputation(tmp_path):
    run = make_run(tmp_path)
    pairs = sorted(run.glob("eval-*/eval-*.json"))
    assert len(pairs) == 2
    for js in pairs:
        assert recompute_matches(js, js.with_suffix(".jsonl")) == [], js


def test_two_runs_and_baseline_labels(tmp_path):
    a = make_run(tmp_path, "demo", "seed0")
    b = make_run(tmp_path, "demo", "seed1")
    write_eval(b, "sft", TRAINED)
    write_eval(b, "trained", TRAINED, eval_set="math")
    text = write_report([a, b], tmp_path / "out").read_text()
    assert "| demo (seed1) / sft | 4 | 0.750 |" in text
    assert "### math" in text and "| demo (seed1) / trained | 4 | 0.750 |" in text
    assert "| ess.mean | 3.500 | 3.500 |" in text
    for name in ("multi_at_k_math.png", "per_turn_math.png", "multi_at_k_toy.png"):
        check_png(tmp_path / "out" / "plots" / name)


def test_partial_run(tmp_path):
    run = tmp_path / "partial"
    write_eval(run, "reference", REFERENCE)
    text = write_report([run], tmp_path / "out").read_text()
    assert "| partial / reference | 4 | 0.250 |" in text
    assert "No training log" in text and "No timings" in text and "No weight diagnostics." in text
    assert "`recipe.yaml`" in text and "`eval-trained/`" in text and "`adapter/train_log.jsonl`" in text
    assert "](plots/multi_at_k_toy.png)" in text and "weights.png" not in text
    check_png(tmp_path / "out" / "plots" / "multi_at_k_toy.png")
    lines = summary_lines(run)
    assert "  toy (reference -> trained): multi@1 0.250 -> n/a; multi@5 0.750 -> n/a" in lines


def test_run_with_only_timings(tmp_path):
    run = tmp_path / "early"
    run.mkdir()
    (run / "timings.json").write_text(json.dumps({"rollout": {"seconds": 1.0}}))
    text = write_report([run], tmp_path / "out", plots=False).read_text()
    assert "No evaluation results" in text and "| early | rollout | 1.000 | – | – |" in text


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_not_a_run_dir_is_one_line_user_error(tmp_path, kind):
    path = tmp_path / "run"
    if kind == "empty":
        path.mkdir()
    elif kind == "file":
        path.write_text("x")
    with pytest.raises(UserError) as info:
        write_report([path], tmp_path / "out")
    assert "\n" not in str(info.value) and str(path) in str(info.value)
    with pytest.raises(UserError):
        load_run(path)


def test_corrupt_eval_json_is_user_error(tmp_path):
    run = make_run(tmp_path)
    (run / "eval-trained" / "eval-toy.json").write_text("{not json")
    with pytest.raises(UserError, match="eval-toy.json: cannot read JSON") as info:
        load_run(run)
    assert "\n" not in str(info.value)


def test_summary_lines(tmp_path):
    run = make_run(tmp_path)
    write_eval(run, "sft", TRAINED)
    lines = summary_lines(run)
    assert len(lines) <= 10
    text = "\n".join(lines)
    assert (
        "toy (reference -> trained): multi@1 0.250 -> 0.750 (+0.500); multi@5 0.750 -> 1.000 (+0.250)" in text
    )
    assert "toy (sft): multi@1 0.750; multi@5 1.000" in text
    assert lines[-1] == f"Report: not written yet ({run / 'report.md'})"
    write_report([run], run)
    assert summary_lines(run)[-1] == f"Report: {run / 'report.md'}"


def test_weight_sampling_is_bounded(tmp_path):
    path = tmp_path / "weighted.jsonl"
    path.write_text("".join(json.dumps({"prompt_id": "p", "weight": i / 10}) + "\n" for i in range(100)))
    sample, count = sample_weights(path, cap=10)
    assert count == 100 and len(sample) == 10
    assert set(sample) <= {i / 10 for i in range(100)}
    assert sample_weights(path, cap=10) == (sample, count)  # fixed seed: same sample each time


NASTY_NAME = "a|b *x* _y_ `c` [l](u) <b>x</b> &amp; ~s~ $\\frac$ !#"


def test_a_run_name_with_markdown_specials_renders_literally(tmp_path):
    import html
    import re

    markdown_it = pytest.importorskip("markdown_it")
    run = make_run(tmp_path / "runs", name=NASTY_NAME, dirname="nasty")
    report = write_report([run], tmp_path / "out")  # plots too: a `$` must not start matplotlib's math mode
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(report.read_text())
    shown = html.escape(NASTY_NAME, quote=False)
    assert f"<h1>drift-lite report: {shown}</h1>" in rendered
    assert f"<td>{shown}</td>" in rendered  # runs, weights, loss and timings tables
    assert f"<td>{shown} / reference</td>" in rendered  # metrics tables
    assert "<em>" not in rendered and '<a href="u">' not in rendered and "<b>" not in rendered
    assert "<code>c</code>" not in rendered
    assert re.search(f"<th[^>]*>{re.escape(shown)}</th>", rendered)  # the diagnostics table's column


def test_md_text_escapes_every_special_and_keeps_one_line():
    from drift_lite.report_tables import md_text

    assert md_text("plain-name.v1") == "plain-name.v1"
    assert md_text("a*b_c") == "a\\*b\\_c"
    assert md_text("two\nlines\t x") == "two lines x"
