"""Multiple-choice loaders: GPQA shuffle, MMLU-Redux / MMLU-Pro letters, and one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from drift_lite.errors import UserError
from drift_lite.tasks import get_checker
from drift_lite.tasks.choice import DEFAULT_CHECKER, LETTERS, LOADERS, first_letter, gpqa_order

FIXTURES = Path(__file__).resolve().parent.parent / "data" / "fixtures"
GPQA = str(FIXTURES / "gpqa_diamond.csv")


def correct_answers() -> dict[str, str]:
    with open(GPQA, newline="", encoding="utf-8") as fh:
        return {row["Record ID"]: row["Correct Answer"].strip() for row in csv.DictReader(fh)}


def test_gpqa_gold_letter_points_at_the_correct_answer() -> None:
    problems = LOADERS["gpqa_diamond"](GPQA, None, 0)
    truth = correct_answers()
    assert [p.id for p in problems] == [f"gpqa_diamond-{key}" for key in truth]
    for problem in problems:
        key = problem.id.removeprefix("gpqa_diamond-")
        options = problem.meta["options"]
        assert options[LETTERS.index(problem.gold)] == truth[key]
        assert f"\n{problem.gold}. {truth[key]}" in problem.question
        assert problem.family == "choice" and problem.meta["letters"] == "A-D"
        assert [line[:3] for line in problem.question.splitlines()[-4:]] == ["A. ", "B. ", "C. ", "D. "]


def test_gpqa_shuffle_is_deterministic_and_seeded() -> None:
    first = LOADERS["gpqa_diamond"](GPQA, None, 0)
    again = LOADERS["gpqa_diamond"](GPQA, None, 0)
    assert [(p.question, p.gold) for p in first] == [(p.question, p.gold) for p in again]
    assert gpqa_order("What is 2+2?", 0) == gpqa_order("What is 2+2?", 0)
    assert sorted(gpqa_order("What is 2+2?", 0)) == [0, 1, 2, 3]
    orders = {tuple(gpqa_order("What is 2+2?", seed)) for seed in range(20)}
    assert len(orders) > 1
    # Pinned: any change to the seeding (e.g. Python's salted hash()) would move these.
    assert [p.gold for p in first] == ["B", "A", "D", "C"]


def test_gpqa_csv_cells_stay_text() -> None:
    problem = LOADERS["gpqa_diamond"](GPQA, None, 0)[3]
    assert sorted(problem.meta["options"]) == ["007", "NA", "m c", "mc^2"]
    assert problem.question.startswith("What is the rest energy of a particle of mass m?\nA. ")
    multiline = LOADERS["gpqa_diamond"](GPQA, None, 0)[0].question
    assert (
        multiline.splitlines()[1] == "What is the probability of finding it in the middle third of the well?"
    )


def test_mmlu_redux() -> None:
    problems = LOADERS["mmlu_redux"](str(FIXTURES / "mmlu_redux.jsonl"), None, 0)
    assert [p.gold for p in problems] == ["C", "B", "A", "D"]
    assert problems[0].question == "What is the capital of France?\nA. Berlin\nB. Madrid\nC. Paris\nD. Rome"
    assert problems[3].meta == {"letters": "A-D", "error_type": "wrong_groundtruth"}
    assert [p.id for p in problems] == [f"mmlu_redux-{i}" for i in range(4)]


def test_mmlu_pro() -> None:
    problems = LOADERS["mmlu_pro"](str(FIXTURES / "mmlu_pro.jsonl"), None, 0)
    assert [p.gold for p in problems] == ["E", "A", "J", "A"]
    assert [p.id for p in problems] == ["mmlu_pro-70", "mmlu_pro-71", "mmlu_pro-72", "mmlu_pro-73"]
    assert problems[2].question.splitlines()[-1] == "J. Argon"
    assert all(p.meta["letters"] == "A-J" for p in problems)
    checker = get_checker(DEFAULT_CHECKER["mmlu_pro"])
    assert checker.is_correct("(J)", problems[2].gold)


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


def test_mmlu_pro_answer_must_match_answer_index(tmp_path: Path) -> None:
    row = {"question_id": 1, "question": "q", "options": ["a", "b", "c"], "answer": "B", "answer_index": 2}
    path = write_jsonl(tmp_path / "pro.jsonl", [row])
    with pytest.raises(UserError) as err:
        LOADERS["mmlu_pro"](path, None, 0)
    assert str(err.value) == f"{path}: row 0: field 'answer': 'B' is not the letter of answer_index (C)"


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"question": "q", "choices": ["a", "b"]}, "row 0: field 'answer': missing"),
        ({"question": "q", "choices": ["a", "b"], "answer": 5}, "field 'answer': index 5 out of range"),
        ({"question": "q", "choices": ["a"], "answer": 0}, "field 'choices': 1 options"),
        ({"question": "", "choices": ["a", "b"], "answer": 0}, "field 'question': missing"),
    ],
)
def test_mmlu_redux_errors(tmp_path: Path, row: dict, message: str) -> None:
    path = write_jsonl(tmp_path / "redux.jsonl", [row])
    with pytest.raises(UserError, match=message) as err:
        LOADERS["mmlu_redux"](path, None, 0)
    assert "\n" not in str(err.value)


def test_gpqa_missing_field(tmp_path: Path) -> None:
    path = tmp_path / "gpqa.csv"
    path.write_text(
        "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
        "q0,a,b,c,d\nq1,a,b,,d\n"
    )
    with pytest.raises(UserError) as err:
        LOADERS["gpqa_diamond"](str(path), None, 0)
    assert str(err.value) == f"{path}: row 1: field 'Incorrect Answer 2': missing"


def test_jsonl_and_parquet_give_the_same_problems(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (FIXTURES / "mmlu_pro.jsonl").read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pro.parquet")
    from_parquet = LOADERS["mmlu_pro"](str(tmp_path / "pro.parquet"), None, 0)
    from_jsonl = LOADERS["mmlu_pro"](str(FIXTURES / "mmlu_pro.jsonl"), None, 0)
    assert from_parquet == from_jsonl


def test_offline_hub_dataset_with_config_names_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        LOADERS["mmlu_redux"](None, 4, 0)  # asks the hub for its subject configs first
    message = str(err.value)
    assert "\n" not in message and message.startswith("edinburgh-dawg/mmlu-redux-2.0: ")
    assert "`source`" in message


# -------------------- the answer checker

LETTER_CASES = [
    ("B", "B"),
    ("(B)", "B"),
    ("B.", "B"),
    ("**B**", "B"),
    ("The answer is B", "B"),
    ("Option C: 3", "C"),
    (r"\boxed{D}", "D"),
    ("b", "B"),
    ("(c)", "C"),
    ("J", "J"),
    ("A and B", "A"),
    ("AB", None),
    ("K", None),
    ("answer b", None),
    ("", None),
    ("I'm unsure, B", "B"),
]


@pytest.mark.parametrize(("answer", "letter"), LETTER_CASES)
def test_first_letter(answer: str, letter: str | None) -> None:
    assert first_letter(answer) == letter


def test_letter_checker() -> None:
    checker = get_checker("letter")
    assert checker.is_correct("(B)", "B")
    assert checker.is_correct("b", " b ")
    assert not checker.is_correct("AB", "A")
    assert not checker.is_correct("C", "B")
    assert checker.normalize("The answer is (B).") == "B"
    assert checker.normalize("no idea") == "noidea"
