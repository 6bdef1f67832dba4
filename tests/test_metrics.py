"""Metrics checked against hand counts: small synthetic rows and the release's own rows."""

import json
from pathlib import Path

import pytest

from drift_lite.errors import UserError
from drift_lite.metrics import compute_metrics, metrics_by, prompt_family, recompute_matches

RELEASE = Path(__file__).parent / "data" / "release_rows_simple.jsonl"


def row(t_star, answers, turns=5, pid="p-0"):
    """A minimal rollout row: the fields the metrics read (plus a prompt_id)."""
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


def release_rows():
    with RELEASE.open() as handle:
        return [json.loads(line) for line in handle]


def approx(d):
    return {k: (pytest.approx(v) if v is not None and not isinstance(v, list) else v) for k, v in d.items()}


# Solved at t1; solved at t3 after repeating "5"; never answered; format error then solved at t2.
SYNTH = [row(1, ["4"]), row(3, ["5", "5", "4"]), row(None, []), row(2, ["4"])]


def test_synthetic_rows_by_hand():
    m = compute_metrics(SYNTH)
    assert list(m) == [
        "n",
        *(f"multi@{k}" for k in range(1, 6)),
        "per_turn",
        "correction_rate",
        "repeat_rate",
        "format_error_rate",
        "mean_turns",
    ]
    assert m["n"] == 4
    assert [m[f"multi@{k}"] for k in range(1, 6)] == [1 / 4, 2 / 4, 3 / 4, 3 / 4, 3 / 4]
    # active: t1 all 4; t2 B,C,D; t3 B,C; t4 C; t5 C
    assert m["per_turn"] == [1 / 4, 1 / 3, 1 / 2, 0.0, 0.0]
    assert m["correction_rate"] == 2 / 3  # B and D, out of B, C, D
    assert m["repeat_rate"] == 1 / 2  # B: one repeat among its 2 later answers
    assert m["format_error_rate"] == 6 / 11  # executed 1+3+5+2, answers 1+3+0+1
    assert m["mean_turns"] == 11 / 4


def test_release_fixture_by_hand():
    m = compute_metrics(release_rows())
    # t_star counts over the 48 rows: t1 13, t2 15, t3 2, t4 5, t5 5, never 8.
    assert m["n"] == 48
    assert [m[f"multi@{k}"] for k in range(1, 6)] == [13 / 48, 28 / 48, 30 / 48, 35 / 48, 40 / 48]
    assert m["per_turn"] == [13 / 48, 15 / 35, 2 / 20, 5 / 18, 5 / 13]
    assert m["correction_rate"] == 27 / 35
    assert m["repeat_rate"] == 24 / 60  # 106 answers in 46 answered rows → 60 chances to repeat
    assert m["format_error_rate"] == 28 / 134
    assert m["mean_turns"] == 134 / 48


def test_release_row_with_repeats():
    rows = release_rows()
    r = rows[9]
    assert r["answer_norms"] == ["101", "101", "99", "101", "100"]
    m = compute_metrics([r])
    assert m["repeat_rate"] == 2 / 4
    assert m["multi@4"] == 0.0 and m["multi@5"] == 1.0
    assert m["per_turn"] == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert m["correction_rate"] == 1.0 and m["format_error_rate"] == 0.0 and m["mean_turns"] == 5


def test_format_errors_agree_with_release_penalties():
    # Each answer-less turn costs the release -0.1: our count of such turns must match its penalties.
    rows = release_rows()
    m = compute_metrics(rows)
    no_answer = round(-sum(r["format_penalty"] for r in rows) / 0.1)
    assert no_answer == 28
    assert m["format_error_rate"] * 134 == pytest.approx(no_answer)


def test_metrics_by_prompt():
    groups = metrics_by(release_rows(), lambda r: r["prompt_id"])
    assert len(groups) == 12
    g = groups["sample_2"]  # t_star 1, 5, 2, 5
    assert g["n"] == 4 and g["multi@1"] == 1 / 4 and g["multi@2"] == 2 / 4 and g["multi@5"] == 1.0
    assert g["repeat_rate"] == 2 / 7  # answers 1, 5, 2, 3 long: 2 repeats (row 9) in 0+4+1+2 chances
    assert g["format_error_rate"] == 2 / 13  # row 11: 5 turns, 3 answers
    assert metrics_by(release_rows(), prompt_family).keys() == {"sample"}


def test_metrics_by_shares_horizon():
    rows = [row(1, ["a"], turns=3, pid="a-0"), row(None, ["b"], turns=5, pid="b-0")]
    groups = metrics_by(rows, prompt_family)
    assert len(groups["a"]["per_turn"]) == len(groups["b"]["per_turn"]) == 5


def test_prompt_family():
    assert prompt_family({"prompt_id": "carry-12"}) == "carry"
    assert prompt_family({"prompt_id": "sample_3"}) == "sample"
    assert prompt_family({"prompt_id": "main-algebra-7"}) == "main-algebra"
    assert prompt_family({"prompt_id": "12"}) == "12"


def test_other_turn_budget():
    rows = [row(None, ["1", "2", "1"], turns=3), row(3, ["x", "y"], turns=3), row(1, ["y"], turns=3)]
    m = compute_metrics(rows)
    assert [k for k in m if k.startswith("multi@")] == ["multi@1", "multi@2", "multi@3"]
    assert [m["multi@1"], m["multi@2"], m["multi@3"]] == [1 / 3, 1 / 3, 2 / 3]
    assert m["per_turn"] == [1 / 3, 0.0, 1 / 2]
    assert m["correction_rate"] == 1 / 2
    assert m["repeat_rate"] == 1 / 3
    assert m["format_error_rate"] == 1 / 7
    assert m["mean_turns"] == 7 / 3
    # A longer budget than the rows ran: multi@k stays flat, nobody is active at turn 4.
    m4 = compute_metrics(rows, max_turns=4)
    assert m4["multi@4"] == 2 / 3 and m4["per_turn"][3] is None
    with pytest.raises(UserError, match="max_turns is 2"):
        compute_metrics(rows, max_turns=2)


def test_undefined_rates_are_null():
    m = compute_metrics([row(1, ["4"]), row(1, ["4"])])
    assert m["per_turn"] == [1.0, None, None, None, None]
    assert m["correction_rate"] is None and m["repeat_rate"] is None
    assert m["format_error_rate"] == 0.0 and m["mean_turns"] == 1.0


def test_never_answered_row():
    m = compute_metrics([row(None, [])])
    assert m["multi@5"] == 0.0 and m["per_turn"] == [0.0] * 5
    assert m["format_error_rate"] == 1.0 and m["mean_turns"] == 5.0
    assert m["correction_rate"] == 0.0 and m["repeat_rate"] is None


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([], "no trajectory rows"),
        ([{k: v for k, v in row(1, ["4"]).items() if k != "answer_norms"}], "answer_norms"),
        ([{k: v for k, v in row(1, ["4"]).items() if k != "t_star"}], "t_star"),
        ([row(7, ["4"])], "t_star"),
        ([row(2, ["1", "2", "3"])], "3 answers in 2 executed turns"),
    ],
)
def test_bad_input_is_one_line_user_error(rows, message):
    with pytest.raises(UserError, match=message) as info:
        compute_metrics(rows)
    assert "\n" not in str(info.value)


def test_streams_a_generator():
    m = compute_metrics(r for r in SYNTH)
    assert m == compute_metrics(SYNTH)


def test_recompute_matches(tmp_path):
    jsonl, js = tmp_path / "eval-toy.jsonl", tmp_path / "eval-toy.json"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in release_rows()))
    stored = compute_metrics(release_rows())
    js.write_text(json.dumps(stored))
    assert recompute_matches(js, jsonl) == []
    stored["multi@1"] += 0.01
    stored["per_turn"][2] = None
    del stored["mean_turns"]
    js.write_text(json.dumps(stored))
    assert recompute_matches(js, jsonl) == ["multi@1", "per_turn", "mean_turns"]


def test_recompute_matches_uses_stored_horizon(tmp_path):
    jsonl, js = tmp_path / "eval-x.jsonl", tmp_path / "eval-x.json"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in SYNTH))
    js.write_text(json.dumps(compute_metrics(SYNTH, max_turns=6)))
    assert recompute_matches(js, jsonl) == []
    with pytest.raises(UserError, match="no such file"):
        recompute_matches(tmp_path / "missing.json", jsonl)
