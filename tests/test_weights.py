"""Returns and weights against an independent computation; streaming weight_file; diagnostics; bad input."""

from __future__ import annotations

import json
import math
import random
import tracemalloc
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from drift_lite import weights as weights_mod
from drift_lite.errors import UserError
from drift_lite.weights import (
    diagnostics_path,
    format_diagnostics,
    group_weights,
    trajectory_return,
    weight_file,
    weight_rows,
)

DATA = Path(__file__).parent / "data"
FULL = DATA / "release_rows_full.jsonl"
SIMPLE = DATA / "release_rows_simple.jsonl"


# ---------------------------------------------------------------------------------------------------------
# The reference, written from the formulas in DESIGN.md and nothing else


def ref_return(row: dict, gamma: float, repeat_coef: float) -> float:
    """Exact rational arithmetic, rounded once at the end."""
    g = Fraction(gamma)
    total = sum(
        (g ** (int(key.lstrip("t")) - 1) * Fraction(value) for key, value in row["turn_rewards"].items()),
        Fraction(0),
    )
    total += Fraction(row.get("format_penalty", 0))
    answers = row.get("answer_norms") or []
    if answers:
        unique = len({a for a in answers if a != ""})
        total -= Fraction(repeat_coef) * (1 - Fraction(unique, len(answers)))
    return float(total)


def ref_weights(returns: list[float], beta: float) -> list[float]:
    """exp(R/beta) without the max shift (safe for these magnitudes): the same ratio, scaled by exp(m)."""
    e = np.exp(np.asarray(returns, dtype=np.float64) / beta)
    return list(e / (e.mean() + 1e-12 * e.max()))


def ref_all(
    rows: list[dict], gamma: float, beta: float, repeat_coef: float = 0.5
) -> list[tuple[float, float]]:
    """(return, weight) per row in input order."""
    returns = [ref_return(row, gamma, repeat_coef) for row in rows]
    by_group: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        by_group.setdefault(row["prompt_id"], []).append(i)
    weights = [0.0] * len(rows)
    for members in by_group.values():
        for i, w in zip(members, ref_weights([returns[i] for i in members], beta)):
            weights[i] = w
    return list(zip(returns, weights))


def assert_close(actual: float, expected: float, rel: float = 1e-9) -> None:
    assert math.isclose(actual, expected, rel_tol=rel, abs_tol=1e-12), (actual, expected)


# ---------------------------------------------------------------------------------------------------------
# Generated data


def make_rows(seed: int = 0) -> list[dict]:
    """Interleaved groups of sizes 1..16, 1-12 turns, format penalties, repeated and empty answers."""
    rng = random.Random(seed)
    sizes = [1, 16, 2, 3] + [rng.randint(1, 16) for _ in range(26)]
    rows = []
    for g, size in enumerate(sizes):
        for i in range(size):
            turns = rng.randint(1, 12)
            solved = rng.choice([None, *range(1, turns + 1)])
            rewards = {f"t{k}": 1.0 if k == solved else 0.0 for k in range(1, turns + 1)}
            if rng.random() < 0.3:
                rewards = {f"t{k}": rng.choice([0, 0.25, 0.5, 1, -0.2]) for k in range(1, turns + 1)}
            if rng.random() < 0.3:
                rewards = dict(rng.sample(sorted(rewards.items()), len(rewards)))  # t10 before t2, etc.
            row = {
                "prompt_id": f"q{g}",
                "messages": [
                    {"role": "user", "content": f"problem {g}"},
                    {"role": "assistant", "content": "x"},
                ],
                "turn_rewards": rewards,
                "t_star": solved,
                "traj_idx": i,
                "extra": {"nested": [1, "é", None]},
            }
            if rng.random() < 0.8:
                row["answer_norms"] = [rng.choice(["1", "2", "3", ""]) for _ in range(rng.randint(0, turns))]
            if rng.random() < 0.7:
                row["format_penalty"] = -0.1 * rng.randint(0, 3)
            rows.append(row)
    equal = {"messages": [{"role": "user", "content": "q"}], "turn_rewards": {"t1": 0.0}, "t_star": None}
    rows += [{"prompt_id": "all_failed", **equal} for _ in range(4)]
    rows += [{"prompt_id": "all_solved", **equal, "turn_rewards": {"t1": 1.0}, "t_star": 1} for _ in range(3)]
    rng.shuffle(rows)
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------------
# Formulas


@pytest.mark.parametrize(("gamma", "beta"), [(0.9, 0.1), (0.7, 0.2)])
def test_weight_file_matches_independent_formula(tmp_path: Path, gamma: float, beta: float) -> None:
    rows = make_rows()
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    weight_file(src, out, gamma=gamma, beta=beta, show_progress=False)
    got = read_jsonl(out)
    assert len(got) == len(rows)
    for row, weighted, (ret, w) in zip(rows, got, ref_all(rows, gamma, beta)):
        assert_close(weighted["return"], ret)
        assert_close(weighted["weight"], w)
        assert weighted == {**row, "return": weighted["return"], "weight": weighted["weight"]}
        assert list(weighted) == [*row, "return", "weight"]
    in_memory = weight_rows(rows, gamma=gamma, beta=beta)
    assert in_memory == got  # same core, same floats


def test_returns_on_release_fixtures_by_hand() -> None:
    rows = read_jsonl(FULL)
    returns = [trajectory_return(row, gamma=0.9) for row in rows]
    sample_2 = rows[9]
    assert sample_2["answer_norms"] == ["101", "101", "99", "101", "100"] and sample_2["t_star"] == 5
    assert_close(returns[9], 0.9**4 - 0.5 * (1 - 3 / 5))
    assert rows[22]["answer_norms"] == [] and returns[22] == -0.5  # five format errors, no repetition term
    assert_close(
        returns[44], -0.2 - 0.5 * (1 - 2 / 3)
    )  # sample_11: never solved, 1025 twice, two format errors
    assert_close(returns[3], 0.9**2 - 0.2)  # sample_0: solved at t3 after two format errors
    assert returns[4:8] == [1.0] * 4  # sample_1: all solved at t1
    assert_close(trajectory_return(rows[9], gamma=0.7, repeat_coef=0.0), 0.7**4)


@pytest.mark.parametrize(("gamma", "beta"), [(0.9, 0.1), (0.7, 0.2)])
def test_release_fixtures_weights(tmp_path: Path, gamma: float, beta: float) -> None:
    out_full, out_simple = tmp_path / "full.jsonl", tmp_path / "simple.jsonl"
    weight_file(FULL, out_full, gamma=gamma, beta=beta, show_progress=False)
    weight_file(SIMPLE, out_simple, gamma=gamma, beta=beta, show_progress=False)
    rows, got = read_jsonl(FULL), read_jsonl(out_full)
    for weighted, (ret, w) in zip(got, ref_all(rows, gamma, beta)):
        assert_close(weighted["return"], ret)
        assert_close(weighted["weight"], w)
    simple = read_jsonl(out_simple)
    assert [(r["return"], r["weight"]) for r in simple] == [(r["return"], r["weight"]) for r in got]
    assert [r["weight"] for r in got[4:8]] == [1.0] * 4  # sample_1: all-equal group


def test_output_lines_are_input_lines_with_suffix(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    weight_file(FULL, out, show_progress=False)
    for line_in, line_out in zip(FULL.read_text().splitlines(), out.read_text().splitlines()):
        assert line_out.startswith(line_in[:-1] + ', "return": ')
        row = json.loads(line_out)
        assert line_out.endswith(f', "return": {row["return"]!r}, "weight": {row["weight"]!r}}}')


def test_turns_in_numeric_order() -> None:
    row = {
        "prompt_id": "p",
        "messages": [{"role": "user", "content": ""}],
        "turn_rewards": {"t10": 1, "t9": 2},
    }
    assert_close(trajectory_return(row, gamma=0.9), 0.9**9 + 2 * 0.9**8)


def test_group_mean_is_one_and_equal_groups_are_ones() -> None:
    rng = random.Random(1)
    for size in range(1, 17):
        returns = [rng.uniform(-1, 2) for _ in range(size)]
        w = group_weights(returns, 0.1)
        assert_close(sum(w) / size, 1.0)
        assert all(x > 0 for x in w)
    assert group_weights([0.3] * 5, 0.1) == [1.0] * 5
    assert group_weights([-0.5], 0.1) == [1.0]
    assert group_weights([], 0.1) == []


@pytest.mark.parametrize("beta", [1e-4, 1e-3, 0.1, 10.0])
def test_extreme_returns_and_small_beta_stay_finite(beta: float) -> None:
    for returns in ([1000.0, -1000.0, 999.9999], [-1000.0, -999.0], [1e3, 0.0, -1e3, 1e3]):
        w = group_weights(returns, beta)
        assert all(math.isfinite(x) and x >= 0 for x in w)
        assert_close(sum(w) / len(w), 1.0)
    rows = [
        {"prompt_id": "p", "messages": [{"role": "user", "content": ""}], "turn_rewards": {"t1": r}}
        for r in (1000.0, -1000.0, 0.0)
    ]
    got = weight_rows(rows, beta=beta)
    assert all(math.isfinite(r["weight"]) for r in got)


@pytest.mark.parametrize("beta", [0, -0.1, float("nan"), float("inf"), True, "0.1"])
def test_bad_beta(beta: object) -> None:
    with pytest.raises(UserError, match="^key 'weights.beta': must be a finite number > 0, got "):
        group_weights([0.0, 1.0], beta)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="^key 'weights.beta': must be"):
        weight_rows(read_jsonl(FULL), beta=beta)  # type: ignore[arg-type]


@pytest.mark.parametrize("gamma", [0, -0.5, 1.0000001, 2, float("nan"), None])
def test_bad_gamma(gamma: object) -> None:
    row = read_jsonl(FULL)[0]
    with pytest.raises(UserError, match=r"^key 'weights.gamma': must be a number in \(0, 1\], got "):
        trajectory_return(row, gamma=gamma)  # type: ignore[arg-type]
    with pytest.raises(UserError, match="^key 'weights.gamma': must be"):
        weight_rows([row], gamma=gamma)  # type: ignore[arg-type]


def test_gamma_one_and_other_settings() -> None:
    row = read_jsonl(FULL)[9]
    assert_close(trajectory_return(row, gamma=1.0), 1.0 - 0.2)
    with pytest.raises(
        UserError, match="^key 'weights.scheme': must be one of drift, uniform, correct_only, got 'rft'$"
    ):
        weight_rows([row], scheme="rft")
    with pytest.raises(UserError, match="^key 'weights.repeat_coef': must be a finite number >= 0"):
        weight_rows([row], repeat_coef=-1)
    with pytest.raises(UserError, match="^no rows to weight$"):
        weight_rows([])


# ---------------------------------------------------------------------------------------------------------
# Schemes, dropping, diagnostics


def small_rows() -> list[dict]:
    """Group a: solved at t1 / failed; group b: one solved row; group c: two failed, equal returns."""
    msg = [{"role": "user", "content": "q"}]
    return [
        {"prompt_id": "a", "messages": msg, "turn_rewards": {"t1": 1.0}, "t_star": 1},
        {"prompt_id": "c", "messages": msg, "turn_rewards": {"t1": 0.0, "t2": 0.0}, "t_star": None},
        {"prompt_id": "a", "messages": msg, "turn_rewards": {"t1": 0.0}, "t_star": None},
        {"prompt_id": "b", "messages": msg, "turn_rewards": {"t1": 0.0, "t2": 0.5}, "t_star": None},
        {"prompt_id": "c", "messages": msg, "turn_rewards": {"t1": 0.0, "t2": 0.0}},
    ]


def test_schemes() -> None:
    rows = small_rows()
    assert [r["weight"] for r in weight_rows(rows, scheme="uniform")] == [1.0] * 5
    assert [r["weight"] for r in weight_rows(rows, scheme="correct_only")] == [1.0, 0.0, 0.0, 1.0, 0.0]
    drift = [r["weight"] for r in weight_rows(rows)]
    assert drift[1] == drift[4] == drift[3] == 1.0
    assert_close(drift[0] + drift[2], 2.0)


def test_drop_equal_groups(tmp_path: Path) -> None:
    rows = small_rows()
    kept = weight_rows(rows, drop_equal_groups=True)
    assert [r["prompt_id"] for r in kept] == ["a", "a"]  # b (a group of one) and c have all-equal returns
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    d = weight_file(src, tmp_path / "out.jsonl", drop_equal_groups=True, show_progress=False)
    assert read_jsonl(tmp_path / "out.jsonl") == kept
    assert (d["rows_written"], d["rows_dropped"], d["groups_dropped"]) == (2, 3, 2)
    src = write_jsonl(tmp_path / "equal.jsonl", [rows[1], rows[3], rows[4]])
    with pytest.raises(
        UserError, match=r"every group was dropped \(drop_equal_groups / drop_failed_groups left no rows\)$"
    ):
        weight_file(src, tmp_path / "none.jsonl", drop_equal_groups=True, show_progress=False)
    assert not (tmp_path / "none.jsonl").exists()


def test_drop_failed_groups_on_hand_made_groups(tmp_path: Path) -> None:
    msg = [{"role": "user", "content": "q"}]
    failed_unequal = [  # no success, yet unequal returns (format penalties): drop_equal_groups keeps them
        {"prompt_id": "d", "messages": msg, "turn_rewards": {"t1": 0.0}, "format_penalty": -0.1},
        {"prompt_id": "d", "messages": msg, "turn_rewards": {"t1": 0.0}, "format_penalty": 0.0},
    ]
    rows = small_rows() + failed_unequal
    assert [r["prompt_id"] for r in weight_rows(rows, drop_equal_groups=True)] == ["a", "a", "d", "d"]
    kept = weight_rows(rows, drop_failed_groups=True)
    assert [r["prompt_id"] for r in kept] == ["a", "a", "b"]  # c and d never succeeded; b did (t2 reward 0.5)
    assert [r["weight"] for r in kept] == [
        r["weight"] for r in weight_rows(small_rows()) if r["prompt_id"] != "c"
    ]
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    d = weight_file(src, tmp_path / "out.jsonl", drop_failed_groups=True, show_progress=False)
    assert read_jsonl(tmp_path / "out.jsonl") == kept
    assert (d["all_failed_groups"], d["groups_dropped"], d["rows_dropped"]) == (2, 2, 4)
    dropped = {g["prompt_id"]: g["dropped"] for g in d["per_group"]}
    assert dropped == {"a": None, "c": "all failed", "b": None, "d": "all failed"}
    assert d["failed_weight_share"] < 0.01  # what is left is group a's failed row (weight ~0) only
    assert "groups with no success: 2: dropped" in format_diagnostics(d)


def test_max_weight_clips_after_normalizing_and_counts() -> None:
    top, low = ref_weights([1.0, 0.0], 0.1)
    clipped = [r["weight"] for r in weight_rows(small_rows(), max_weight=1.5)]
    assert clipped[0] == 1.5 and math.isclose(clipped[2], low, rel_tol=1e-12)  # not renormalized
    assert clipped[1] == clipped[3] == clipped[4] == 1.0
    with pytest.raises(UserError, match=r"^key 'weights.max_weight': must be a finite number > 0"):
        weight_rows(small_rows(), max_weight=0)
    assert top > 1.5


def test_per_group_diagnostics_ess_and_failed_share(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", small_rows())
    d = weight_file(src, tmp_path / "out.jsonl", max_weight=1.5, show_progress=False)
    top, low = 1.5, ref_weights([1.0, 0.0], 0.1)[1]
    by_id = {g["prompt_id"]: g for g in d["per_group"]}
    assert_close(by_id["a"]["ess"], (top + low) ** 2 / (top**2 + low**2))
    assert_close(by_id["a"]["failed_weight_share"], low / (top + low))
    assert (by_id["a"]["size"], by_id["a"]["solved"]) == (2, 1)
    assert by_id["c"]["failed_weight_share"] == 1.0 and by_id["c"]["ess"] == 2.0
    assert d["rows_clipped"] == 1 and "1 clipped at 1.5" in format_diagnostics(d)


def test_diagnostics_values_and_file(tmp_path: Path, capsys) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", small_rows())
    out = tmp_path / "out.jsonl"
    d = weight_file(src, out, show_progress=True)
    assert capsys.readouterr().out == ""  # the progress bar goes to stderr only
    assert Path(diagnostics_path(out)).name == "out.jsonl.diagnostics.json"
    assert json.loads(Path(diagnostics_path(out)).read_text()) == d
    top, low = ref_weights([1.0, 0.0], 0.1)
    assert (d["rows"], d["groups"], d["rows_dropped"]) == (5, 3, 0)
    assert d["group_size"] == {"min": 1, "mean": 5 / 3, "max": 2}
    assert (d["equal_return_groups"], d["equal_return_groups_all_failed"]) == (2, 1)
    assert_close(d["max_weight"], top)
    ess_a = (top + low) ** 2 / (top**2 + low**2)
    assert_close(d["ess"]["mean"], (ess_a + 1 + 2) / 3)
    assert d["ess"]["min"] == 1.0  # group b, a single row
    assert_close(d["ess"]["mean_fraction_of_group"], (ess_a / 2 + 1 + 1) / 3)
    assert_close(d["failed_weight_share"], (low + 2) / (top + low + 1 + 2))
    assert d["settings"] == {
        "drop_failed_groups": False,
        "max_weight": None,
        "gamma": 0.9,
        "beta": 0.1,
        "scheme": "drift",
        "repeat_coef": 0.5,
        "drop_equal_groups": False,
    }
    text = format_diagnostics(d)
    assert text.startswith("rows: 5 in 3 groups (size 1..2, mean 1.67); written 5\n")
    assert "groups with all-equal returns: 2 (1 all failed)" in text
    assert len(text.splitlines()) == 6


# ---------------------------------------------------------------------------------------------------------
# File handling


def test_existing_return_and_weight_are_replaced_once(tmp_path: Path) -> None:
    rows = small_rows()
    rows[0] = {**rows[0], "return": 99.0, "weight": 7.0, "after": 1}
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    weight_file(src, tmp_path / "out.jsonl", show_progress=False)
    got = read_jsonl(tmp_path / "out.jsonl")
    assert list(got[0]) == ["prompt_id", "messages", "turn_rewards", "t_star", "after", "return", "weight"]
    assert got[0]["return"] == 1.0
    assert '"return"' not in (tmp_path / "out.jsonl").read_text().splitlines()[0].split('"after"')[0]
    second = tmp_path / "again.jsonl"  # re-weighting a weighted file gives the same file
    weight_file(tmp_path / "out.jsonl", second, show_progress=False)
    assert read_jsonl(second) == got


def test_odd_but_valid_layout(tmp_path: Path) -> None:
    lines = [json.dumps(row, indent=None, separators=(",", ":")) for row in small_rows()]
    text = (
        "\ufeff" + lines[0] + "  \r\n\n" + lines[1][:-1] + " }\t\n" + "\n".join(lines[2:])
    )  # no final newline
    src = tmp_path / "in.jsonl"
    src.write_text(text, encoding="utf-8")
    weight_file(src, tmp_path / "out.jsonl", show_progress=False)
    assert read_jsonl(tmp_path / "out.jsonl") == weight_rows(small_rows())


def traced_peak(tmp_path: Path, text_chars: int) -> tuple[int, int]:
    """(peak traced bytes of weight_file, input size) on 400 rows with one message of `text_chars`."""
    text = "x" * text_chars
    rows = [
        {
            "prompt_id": f"p{i // 4}",
            "messages": [{"role": "user", "content": text}],
            "turn_rewards": {"t1": i % 2},
        }
        for i in range(400)
    ]
    src = write_jsonl(tmp_path / f"in{text_chars}.jsonl", rows)
    tracemalloc.start()
    try:
        weight_file(src, tmp_path / "out.jsonl", show_progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, src.stat().st_size


def test_memory_does_not_hold_row_text(tmp_path: Path) -> None:
    small_peak, small_size = traced_peak(tmp_path, 10_000)
    big_peak, big_size = traced_peak(tmp_path, 40_000)
    assert big_size > 15 * 2**20
    assert big_peak - small_peak < 2**20, (small_peak, big_peak)  # a few line buffers, not the file
    assert big_peak < big_size / 5


def test_input_changed_between_passes(tmp_path: Path, monkeypatch) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", small_rows())
    out = tmp_path / "out.jsonl"
    out.write_text("sentinel\n")
    real_plan = weights_mod._plan

    def plan_then_append(collector):
        with open(src, "a") as handle:
            handle.write(json.dumps(small_rows()[0]) + "\n")
        return real_plan(collector)

    monkeypatch.setattr(weights_mod, "_plan", plan_then_append)
    with pytest.raises(UserError, match=r"in\.jsonl: changed while it was being weighted; run again$"):
        weight_file(src, out, show_progress=False)
    assert out.read_text() == "sentinel\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


GOOD = json.dumps(small_rows()[0])

BAD_INPUTS = [
    ("not_json", GOOD + '\n{"prompt_id": "a",\n', r"in\.jsonl:2: not valid JSON \(Expecting property name"),
    ("not_object", GOOD + "\n[1, 2]\n", r"in\.jsonl:2: expected a JSON object, got list$"),
    ("no_prompt_id", '{"messages": [], "turn_rewards": {}}\n', r"in\.jsonl:1: field 'prompt_id': missing$"),
    (
        "no_messages",
        '{"prompt_id": "a", "turn_rewards": {"t1": 0}}\n',
        r"in\.jsonl:1: field 'messages': missing$",
    ),
    (
        "no_turn_rewards",
        '{"prompt_id": "a", "messages": [{"role": "user", "content": ""}]}\n',
        r"in\.jsonl:1: field 'turn_rewards': missing$",
    ),
    (
        "rewards_list",
        GOOD + "\n" + GOOD.replace('"turn_rewards": {"t1": 1.0}', '"turn_rewards": [1.0]') + "\n",
        r"in\.jsonl:2: field 'turn_rewards': expected an object of t1..tN numbers, got list$",
    ),
    (
        "bad_turn_key",
        GOOD.replace('"t1": 1.0', '"turn1": 1.0') + "\n",
        r"in\.jsonl:1: field 'turn_rewards': key 'turn1' is not a turn key t<k> with k >= 1$",
    ),
    (
        "string_reward",
        GOOD.replace('"t1": 1.0', '"t1": "1.0"') + "\n",
        r"in\.jsonl:1: field 'turn_rewards\.t1': expected a finite number, got string$",
    ),
    (
        "content_int",
        GOOD.replace('"content": "q"', '"content": 7') + "\n",
        r"in\.jsonl:1: field 'messages\[0\]\.content': expected a string, got int$",
    ),
    ("nan", GOOD.replace("1.0", "NaN") + "\n", r"in\.jsonl:1: not valid JSON \(NaN is not allowed\)$"),
    (
        "infinity",
        GOOD.replace("1.0", "Infinity") + "\n",
        r"in\.jsonl:1: not valid JSON \(Infinity is not allowed\)$",
    ),
    (
        "huge",
        GOOD.replace("1.0", "1e400") + "\n",
        r"in\.jsonl:1: not valid JSON \(number 1e400 is out of range\)$",
    ),
    ("empty", "", r"^in\.jsonl: no rows$"),
    ("blank", "\n\n", r"^in\.jsonl: no rows$"),
]


@pytest.mark.parametrize(
    ("text", "pattern"), [case[1:] for case in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
@pytest.mark.parametrize("out_exists", [False, True], ids=["no_out", "sentinel_out"])
def test_bad_input_leaves_out_alone(
    tmp_path: Path, monkeypatch, text: str, pattern: str, out_exists: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.jsonl").write_text(text, encoding="utf-8")
    if out_exists:
        (tmp_path / "out.jsonl").write_text("sentinel\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UserError, match=pattern) as info:
        weight_file("in.jsonl", "out.jsonl", show_progress=False)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if out_exists:
        assert (tmp_path / "out.jsonl").read_text() == "sentinel\n"


@pytest.mark.parametrize(
    ("src", "dst", "pattern"),
    [
        ("missing.jsonl", "out.jsonl", r"^missing\.jsonl: no such file$"),
        ("folder", "out.jsonl", r"^folder: is a directory, expected a JSONL file$"),
        ("in.jsonl", "nowhere/out.jsonl", r"^nowhere/out\.jsonl: folder 'nowhere' does not exist$"),
        ("in.jsonl", "folder", r"^folder: is a directory, expected a file path$"),
        ("in.jsonl", "in.jsonl", r"^in\.jsonl: output is the input file; choose another output path$"),
    ],
)
def test_bad_paths(tmp_path: Path, monkeypatch, src: str, dst: str, pattern: str) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "in.jsonl", small_rows())
    (tmp_path / "folder").mkdir()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(UserError, match=pattern):
        weight_file(src, dst, show_progress=False)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert not (tmp_path / "nowhere").exists()
    assert list((tmp_path / "folder").iterdir()) == []


def test_bad_settings_create_nothing(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", small_rows())
    with pytest.raises(UserError, match="^key 'weights.beta': must be"):
        weight_file(src, tmp_path / "out.jsonl", beta=0, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


# OUT and its diagnostics change together: a failure on either leaves neither new one, and says so truly


def _replace_failing_for(monkeypatch, suffix: str, code: int) -> None:
    import os

    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if str(dst).endswith(suffix):
            raise OSError(code, os.strerror(code), str(dst))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def test_a_diagnostics_write_failure_leaves_out_untouched(tmp_path: Path, monkeypatch) -> None:
    import errno

    src = write_jsonl(tmp_path / "in.jsonl", small_rows())
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    _replace_failing_for(monkeypatch, ".diagnostics.json", errno.ENOSPC)
    with pytest.raises(UserError, match=r"diagnostics.json: No space left on device \(nothing written\)"):
        weight_file(src, out, show_progress=False)
    assert out.read_text() == "old\n"  # "nothing written" is true: OUT is the old file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.jsonl"]


def test_an_out_rename_failure_removes_the_new_diagnostics(tmp_path: Path, monkeypatch) -> None:
    import errno

    src = write_jsonl(tmp_path / "in.jsonl", small_rows())
    out = tmp_path / "out.jsonl"
    _replace_failing_for(monkeypatch, "out.jsonl", errno.EIO)
    with pytest.raises(OSError, match="Input/output error"):
        weight_file(src, out, show_progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_the_cli_reports_a_diagnostics_failure_as_one_true_line(tmp_path: Path, monkeypatch, capsys) -> None:
    import errno

    from drift_lite import cli

    src = write_jsonl(tmp_path / "in.jsonl", small_rows())
    _replace_failing_for(monkeypatch, ".diagnostics.json", errno.ENOSPC)
    code = cli.main(["weight", str(src), str(tmp_path / "out.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "(nothing written)" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]
