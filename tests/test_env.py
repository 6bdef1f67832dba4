"""The episode reproduces rows written by the release's own code, replayed from their assistant turns."""

import json
from pathlib import Path

import pytest

from drift_lite import chat
from drift_lite.env import Episode, EpisodeSettings
from drift_lite.tasks.base import ExactChecker, Problem

DATA = Path(__file__).parent / "data"


def _release_rows(mode):
    with open(DATA / f"release_rows_{mode}.jsonl") as f:
        return [json.loads(line) for line in f]


def _question(row, mode):
    first = row["messages"][1]["content"]
    if mode == "simple":
        return first.split("\n\nProblem:\n", 1)[1].split("\n\nAlways output:", 1)[0]
    return first.split("State:\n", 1)[1].split("\nYou have", 1)[0]


@pytest.mark.parametrize("mode", ["simple", "full"])
def test_replaying_release_rows_reproduces_them(mode):
    rows = _release_rows(mode)
    assert len(rows) == 48
    for row in rows:
        problem = Problem(id=row["prompt_id"], question=_question(row, mode), gold=row["gold"])
        episode = Episode(problem, ExactChecker(), EpisodeSettings(mode=mode))
        for message in row["messages"][2:]:
            if message["role"] == "assistant":
                assert not episode.done
                episode.step(message["content"].removeprefix(chat.THINK_PREFILL))
        assert episode.done
        assert episode.to_row() == row


def test_parse_turn_release_cases():
    assert chat.parse_turn("a</think> <answer> 12 || 13 </answer> tail").answer == "12"
    assert (
        chat.parse_turn("a</think><answer> 12 || 13 </answer>").content
        == "<think>a</think><answer> 12 || 13 </answer>"
    )
    assert chat.parse_turn("a</think><answer>||</answer>").answer is None
    assert chat.parse_turn("a</think><answer></answer>").answer is None
    missing = chat.parse_turn(" <answer>12</answer>")
    assert missing.answer is None and missing.content == "<think> <answer>12</answer>"
    assert chat.parse_turn("").content == "<think>"


def test_step_after_done_is_an_error():
    episode = Episode(Problem("p", "1+1", "2"), ExactChecker(), EpisodeSettings(max_turns=1))
    episode.step("x</think><answer>3</answer>")
    with pytest.raises(RuntimeError):
        episode.step("x</think><answer>2</answer>")
