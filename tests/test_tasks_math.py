"""Math loaders on fixtures in the real dataset schemas: golds, ids, filtering, limits and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drift_lite.errors import UserError
from drift_lite.tasks import get_checker
from drift_lite.tasks.math import DEFAULT_CHECKER, LOADERS, gsm8k_gold, last_boxed, metamath_gold

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"


def load(task: str, name: str, limit: int | None = None, seed: int = 0):
    return LOADERS[task](str(FIXTURES / name), limit, seed)


def test_metamathqa_keeps_math_types_and_extracts_the_answer() -> None:
    problems = load("metamathqa", "metamathqa.json")
    assert [p.id for p in problems] == ["metamathqa-0", "metamathqa-2", "metamathqa-3", "metamathqa-5"]
    assert [p.gold for p in problems] == [r"\frac{1}{2}", "15", "3", "(-2,2)"]
    assert all(p.meta["type"].startswith("MATH_") and p.family == "math" for p in problems)
    assert problems[0].question == r"What is the value of $\frac{3}{6}$ written in lowest terms?"


def test_math500_golds_and_ids() -> None:
    problems = load("math500", "math500.jsonl")
    assert [p.gold for p in problems] == [
        r"\frac{3}{4}",
        "3, -3",
        r"\left( 3, \frac{\pi}{2} \right)",
        r"\text{(C)}",
        r"5\sqrt{2}",
    ]
    assert problems[0].id == "math500-test/prealgebra/1001.json"
    assert problems[0].meta == {"subject": "Prealgebra", "level": 1}


def test_hendrycks_math_takes_the_last_balanced_box() -> None:
    problems = load("hendrycks_math", "hendrycks_math.jsonl")
    assert [p.gold for p in problems] == [r"\frac{\sqrt{3}}{2}", "6", r"\{1, 2\}", r"\frac{5}{6}", "2", "6"]
    assert [p.id for p in problems][:2] == ["hendrycks_math-0", "hendrycks_math-1"]


@pytest.mark.parametrize(
    ("solution", "gold"),
    [
        (r"so $\boxed{\frac{a}{b^{2}}}$.", r"\frac{a}{b^{2}}"),
        (r"$\boxed{1}$ then $\boxed{\left\{ 2 \right\}}$", r"\left\{ 2 \right\}"),
        (r"\fbox{7} and \boxed {8}", "8"),
        (r"\boxed 5$.", "5"),
        (r"\boxed{x} then an unbalanced \boxed{y", "x"),
        ("no box here", None),
    ],
)
def test_last_boxed(solution: str, gold: str | None) -> None:
    assert last_boxed(solution) == gold


def test_gsm8k_golds_drop_thousands_commas() -> None:
    problems = load("gsm8k", "gsm8k.jsonl")
    assert [p.gold for p in problems] == ["72", "1200", "-7", "10", "1234570"]
    assert gsm8k_gold("no marker") is None
    assert metamath_gold("The answer is: 4\nThe answer is: 5 ") == "5"


def test_theoremqa_json_and_parquet_agree() -> None:
    from_json = load("theoremqa", "theoremqa.json")
    from_parquet = load("theoremqa", "theoremqa.parquet")
    assert [p.gold for p in from_json] == ["12", "0.125", "True", "[1, 3, 5]", "(b)", "299792458.0"]
    assert [(p.id, p.gold, p.question) for p in from_parquet] == [
        (p.id, p.gold, p.question) for p in from_json
    ]
    assert [p.meta["answer_type"] for p in from_parquet][:3] == ["integer", "float", "bool"]


def test_default_checkers_accept_the_golds() -> None:
    for task, name in [
        ("math500", "math500.jsonl"),
        ("theoremqa", "theoremqa.json"),
        ("gsm8k", "gsm8k.jsonl"),
    ]:
        checker = get_checker(DEFAULT_CHECKER[task])
        assert all(checker.is_correct(p.gold, p.gold) for p in load(task, name))
    assert set(DEFAULT_CHECKER) == set(LOADERS)


def test_limit_is_a_seeded_sample_in_file_order() -> None:
    first = load("hendrycks_math", "hendrycks_math.jsonl", limit=3, seed=1)
    again = load("hendrycks_math", "hendrycks_math.jsonl", limit=3, seed=1)
    assert [p.id for p in first] == [p.id for p in again]
    assert len(first) == 3
    indices = [int(p.id.rsplit("-", 1)[1]) for p in first]
    assert indices == sorted(indices)
    seeds = {tuple(p.id for p in load("hendrycks_math", "hendrycks_math.jsonl", 3, s)) for s in range(8)}
    assert len(seeds) > 1
    assert load("gsm8k", "gsm8k.jsonl", limit=0) == []
    assert len(load("gsm8k", "gsm8k.jsonl", limit=50)) == 5


def test_rows_without_an_answer_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "gsm.jsonl"
    rows = [{"question": "q0", "answer": "#### 1"}, {"question": "q1", "answer": "no marker"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert [p.id for p in LOADERS["gsm8k"](str(path), None, 0)] == ["gsm8k-0"]
    path.write_text(json.dumps(rows[1]) + "\n")
    with pytest.raises(UserError, match="no usable rows"):
        LOADERS["gsm8k"](str(path), None, 0)


def test_missing_field_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "m500.jsonl"
    rows = [
        {"problem": "p0", "answer": "1", "unique_id": "a"},
        {"problem": "p1", "unique_id": "b"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(UserError) as err:
        LOADERS["math500"](str(path), None, 0)
    assert str(err.value) == f"{path}: row 1: field 'answer': missing"


def test_metamathqa_row_without_type(tmp_path: Path) -> None:
    path = tmp_path / "mm.json"
    path.write_text(json.dumps([{"query": "q", "response": "The answer is: 1", "type": None}]))
    with pytest.raises(UserError, match=r"row 0: field 'type': missing"):
        LOADERS["metamathqa"](str(path), None, 0)


def test_missing_or_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(UserError) as err:
        LOADERS["gsm8k"](str(tmp_path / "nope.jsonl"), None, 0)
    assert str(err.value) == f"{tmp_path / 'nope.jsonl'}: no such file"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", \n')
    with pytest.raises(UserError) as err:
        LOADERS["gsm8k"](str(bad), None, 0)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)
    with pytest.raises(UserError, match="unknown file type"):
        LOADERS["gsm8k"](str(tmp_path), None, 0)


@pytest.fixture
def no_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty `datasets` / hub caches, so a hub id can only come from the hub."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def test_offline_hub_id_fails_fast_in_one_line(no_hub_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import datasets
    from huggingface_hub import constants

    from drift_lite.tasks import loading

    def no_probe(*args, **kwargs):
        raise AssertionError("HF_HUB_OFFLINE is set: the hub must not be probed")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # after `datasets` was imported: its own flag is stale
    monkeypatch.setattr(loading, "hub_reachable", no_probe)
    flags = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        LOADERS["gsm8k"](None, 4, 0)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message and message.startswith("openai/gsm8k: ")
    assert "HF_HUB_OFFLINE" in message and "`source`" in message and "data/fixtures/" in message
    assert flags == (datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE)  # restored


def test_unreachable_hub_fails_fast_in_one_line(no_hub_cache, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import datasets
    from huggingface_hub import constants

    from drift_lite.tasks import loading

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(UserError) as err:
        LOADERS["math500"](None, 4, 0)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "\n" not in message and message.startswith("HuggingFaceH4/MATH-500: ")
    assert "cannot be reached" in message and "`source`" in message


def test_hub_probe_failure_means_unreachable_and_is_asked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    from drift_lite.tasks import loading

    calls = []

    class Session:
        def head(self, url, timeout):
            calls.append((url, timeout))
            raise OSError("Name or service not known")

    monkeypatch.setattr(loading, "_REACHABLE", {})
    monkeypatch.setattr(huggingface_hub, "get_session", lambda: Session())
    assert loading.hub_reachable(timeout=0.5) is False
    assert loading.hub_reachable(timeout=0.5) is False
    assert len(calls) == 1 and calls[0][1] == 0.5


@pytest.mark.parametrize(("value", "offline"), [("1", True), ("true", True), ("0", False), ("", False)])
def test_hub_offline_reads_the_environment_now(monkeypatch: pytest.MonkeyPatch, value, offline) -> None:
    from drift_lite.tasks.loading import hub_offline

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_offline() is offline
