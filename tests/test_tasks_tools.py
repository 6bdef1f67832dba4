"""Tool-call loader and the release's tool feedback messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from drift_lite.errors import UserError
from drift_lite.tasks import get_checker
from drift_lite.tasks.tools import (
    DEFAULT_CHECKER,
    FEEDBACK_CORRECT,
    FEEDBACK_NEED_TOOL,
    FEEDBACK_NO_TOOL,
    FEEDBACK_WRONG_CALL,
    LOADERS,
    NO_TOOL,
    feedback_for,
    parse_call,
)

FIXTURE = str(Path(__file__).resolve().parent.parent / "data" / "fixtures" / "mtu_bench.jsonl")


def test_loader_golds_ids_and_question() -> None:
    problems = LOADERS["mtu_bench"](FIXTURE, None, 0)
    assert [p.gold for p in problems] == [
        'get_weather(city="Paris", day="tomorrow")',
        'book_flight(flight="AF123", seats=2)',
        NO_TOOL,
        'set_alarm(time="07:30", repeat=true)',
        'convert_currency(amount=100.0, from="USD", to="EUR")',
    ]
    assert [p.id for p in problems] == [
        "mtu_bench-weather-1",
        "mtu_bench-flight-2",
        "mtu_bench-chat-3",
        "mtu_bench-alarm-4",
        "mtu_bench-4",
    ]
    first = problems[0]
    assert first.family == "tools" and first.meta == {"tools": ["get_weather", "get_time"]}
    assert first.question.startswith("What's the weather in Paris tomorrow?\n\nAvailable tools:\n")
    assert "- get_weather(city: string, day: string): Weather forecast for a city." in first.question
    checker = get_checker(DEFAULT_CHECKER["mtu_bench"])
    assert all(checker.is_correct(p.gold, p.gold) for p in problems if p.gold != NO_TOOL)
    assert checker.is_correct("convert_currency(to='EUR', amount=100, from='USD')", problems[4].gold)


FEEDBACK_CASES = [
    ("Sure, here you go.", 'get_weather(city="Paris")', FEEDBACK_NEED_TOOL),
    ("", 'get_weather(city="Paris")', FEEDBACK_NEED_TOOL),
    ('get_time(city="Paris")', 'get_weather(city="Paris")', FEEDBACK_WRONG_CALL),
    ('get_weather(city="Rome")', 'get_weather(city="Paris")', FEEDBACK_WRONG_CALL),
    ("get_weather(Paris)", 'get_weather(city="Paris")', FEEDBACK_WRONG_CALL),
    ('get_time(city="Paris")', NO_TOOL, FEEDBACK_NO_TOOL),
    ('get_weather(city="Paris")', 'get_weather(city="Paris")', FEEDBACK_CORRECT),
    ("Glad to help!", NO_TOOL, FEEDBACK_CORRECT),
    (None, 'get_weather(city="Paris")', FEEDBACK_NEED_TOOL),
    (None, NO_TOOL, FEEDBACK_NO_TOOL),
]


@pytest.mark.parametrize(("answer", "gold", "message"), FEEDBACK_CASES)
def test_feedback_for(answer: str | None, gold: str, message: str) -> None:
    assert feedback_for(answer, gold) == message


def test_feedback_strings_are_the_releases() -> None:
    assert FEEDBACK_NO_TOOL == (
        "Observation: You should not call any tool for this request. "
        "Please respond directly without tool calls."
    )
    assert FEEDBACK_NEED_TOOL == (
        "Observation: You need to call a tool to complete this task. "
        "Please try again with the appropriate tool call."
    )
    assert FEEDBACK_WRONG_CALL == (
        "Observation: The tool call was incorrect. Please check the tool name and parameters, then try again."
    )


def write(path: Path, rows: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(row) for row in rows) + "\n")
    return str(path)


TOOLS = [
    {
        "name": "f",
        "description": "d",
        "parameters": {"type": "object", "properties": {"x": {"type": "integer"}}},
    }
]


def test_json_schema_parameters_and_json_text_cells(tmp_path: Path) -> None:
    rows = [
        {"query": "q", "tools": TOOLS, "answer": {"name": "f", "arguments": {"x": 1}}},
        {
            "query": "q",
            "tools": json.dumps(TOOLS),
            "answer": json.dumps({"name": "f", "arguments": {"x": 2}}),
        },
    ]
    problems = LOADERS["mtu_bench"](write(tmp_path / "t.jsonl", rows), None, 0)
    assert [p.gold for p in problems] == ["f(x=1)", "f(x=2)"]
    assert "- f(x: integer): d" in problems[1].question


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"query": "q", "tools": TOOLS}, "row 0: field 'answer': missing"),
        ({"query": "q", "answer": {"name": "f", "arguments": {}}}, "row 0: field 'tools': missing"),
        (
            {"query": "q", "tools": TOOLS, "answer": {"name": "g", "arguments": {}}},
            "tool 'g' is not in 'tools'",
        ),
        ({"query": "q", "tools": [{"description": "x"}], "answer": {"name": ""}}, "tool 0 has no name"),
        ({"query": "q", "tools": TOOLS, "answer": "{not json"}, "field 'answer': not valid JSON"),
    ],
)
def test_row_errors(tmp_path: Path, row: dict, message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        LOADERS["mtu_bench"](write(tmp_path / "t.jsonl", [row]), None, 0)
    assert "\n" not in str(err.value) and "t.jsonl: row 0: field" in str(err.value)


def test_no_default_source() -> None:
    with pytest.raises(UserError, match="no default source") as err:
        LOADERS["mtu_bench"](None, None, 0)
    assert "\n" not in str(err.value)


def test_offline_hub_source_is_one_line(tmp_path: Path, monkeypatch) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        LOADERS["mtu_bench"]("someone/converted-mtu-bench", None, 0)
    message = str(err.value)
    assert "\n" not in message and message.startswith("someone/converted-mtu-bench: ")
    assert "`source`" in message


# -------------------- the answer checker

TOOL_CASES = [
    ('get_weather(city="Paris", day="tomorrow")', 'get_weather(day="tomorrow", city="Paris")', True),
    ('get_weather(city="Paris", day="tomorrow")', "get_weather(city='Paris', day='tomorrow')", True),
    ('get_weather(city="Paris", day="tomorrow")', "get_weather(city=Paris, day=tomorrow)", True),
    ('get_weather(city="Paris", day="tomorrow")', 'get_weather(city="Paris")', False),
    ('get_weather(city="Paris", day="tomorrow")', 'get_weather(city="Paris", day="tomorrow", x=1)', False),
    ('get_weather(city="Paris", day="tomorrow")', 'get_time(city="Paris", day="tomorrow")', False),
    ('get_weather(city="Paris", day="tomorrow")', 'get_weather(city="paris", day="tomorrow")', False),
    ('book_flight(flight="AF123", seats=2)', 'book_flight(seats=2.0, flight="AF123")', True),
    ('book_flight(flight="AF123", seats=2)', 'book_flight(flight="AF123", seats="2")', False),
    ('set_alarm(time="07:30", repeat=true)', 'set_alarm(time="07:30", repeat=True)', True),
    ('set_alarm(time="07:30", repeat=true)', 'set_alarm(time="07:30", repeat=1)', False),
    ('convert(amount=100.0, from="USD")', 'convert(from="USD", amount=100)', True),
    ('f(xs=[1, 2], opts={"a": 1})', "f(opts={'a': 1.0}, xs=[1, 2])", True),
    ('get_weather(city="Paris")', '`get_weather(city="Paris")`', True),
    ('get_weather(city="Paris")', 'get_weather("Paris")', False),
    ('get_weather(city="Paris")', "I would call get_weather", False),
    (NO_TOOL, "You're welcome!", True),
    (NO_TOOL, 'get_time(city="Paris")', False),
    (NO_TOOL, "", False),
]


@pytest.mark.parametrize(("gold", "answer", "correct"), TOOL_CASES)
def test_tool_checker(gold: str, answer: str, correct: bool) -> None:
    assert get_checker("tools").is_correct(answer, gold) is correct


def test_parse_call_and_normalize() -> None:
    assert parse_call('api.search(q="x", n=3)') == ("api.search", {"q": "x", "n": 3})
    assert parse_call("f(x=1)(y=2)") is None
    assert parse_call("f(x=1, x=2)") is None
    assert parse_call("not a call") is None
    checker = get_checker("tools")
    assert checker.normalize('f(b=2, a="x")') == checker.normalize("f(a='x', b=2.0)")
