"""The `arith_choice` task: the `arith` problems as four-option multiple choice, checked by letter."""

from __future__ import annotations

from collections import Counter

import pytest

from drift_lite import chat
from drift_lite.env import EpisodeSettings
from drift_lite.errors import UserError
from drift_lite.recipe import load_recipe
from drift_lite.rollouts import load_shots, make_jobs
from drift_lite.tasks import arith, arith_choice, checker_for, load_problems, task_names


def test_the_splits_and_mix_of_arith():
    for split, size in [("train", 150), ("eval", 72)]:
        for seed in (0, 3):
            problems = arith_choice.load(split, size, seed)
            assert problems == arith_choice.load(split, size, seed)  # deterministic
            assert all(arith.split_of(p.meta["a"], p.meta["b"]) == split for p in problems)
            assert Counter(p.meta["class"] for p in problems) == {c: size // 3 for c in arith.CLASSES}
            assert len({p.id for p in problems}) == size


def test_four_distinct_positive_options_one_of_them_the_sum():
    for p in arith_choice.load("train", 150, 0) + arith_choice.load("eval", 72, 0):
        a, b, values = p.meta["a"], p.meta["b"], p.meta["options"]
        assert len(values) == len(set(values)) == 4 and min(values) > 0
        assert values["ABCD".index(p.gold)] == a + b and values.count(a + b) == 1
        assert all(abs(v - (a + b)) in {0, 1, 2, 9, 10, 11} for v in values)
        lines = p.question.split("\n")
        assert lines[0] == f"What is {a}+{b}?"
        assert lines[1:] == [f"{letter}. {v}" for letter, v in zip("ABCD", values, strict=True)]
        assert p.family == "choice" and p.meta["letters"] == "A-D" and p.id == f"arith_choice-{a}+{b}"


def test_a_problem_is_the_same_under_every_seed_and_gold_letters_spread():
    first = {p.id: p.question for p in arith_choice.load("eval", 72, 0)}
    for p in arith_choice.load("eval", 72, 5):
        if p.id in first:
            assert p.question == first[p.id]
    assert arith_choice.make_problem(7, 35) == arith_choice.make_problem(7, 35)
    golds = Counter(p.gold for p in arith_choice.load("train", 150, 0))
    assert set(golds) == set("ABCD") and min(golds.values()) >= 20  # 37.5 each if uniform


def test_the_instruction_is_the_release_multiple_choice_one():
    p = arith_choice.make_problem(7, 35)
    message = chat.first_user_message(p, "simple", 5)
    assert chat.CHOICE_INSTRUCTION.format(letters="A-D") in message and p.question in message


def test_checker_is_the_letter_checker_by_default():
    assert "arith_choice" in task_names()
    checker = checker_for("arith_choice", None)
    assert checker.name == "letter"
    assert checker.is_correct("B", "B") and checker.is_correct("B. 42", "B")
    assert checker.is_correct("(b)", "B")
    assert not checker.is_correct("42", "B") and not checker.is_correct("C", "B")
    assert checker.normalize("B. 42") == checker.normalize("B")  # a repeated letter is a repeated answer
    assert checker_for("arith", None).name == "exact"  # the plain task keeps its exact match
    assert load_problems("arith_choice", "eval", None, 12, 1) == arith_choice.load("eval", 12, 1)


def test_worked_examples_answer_with_the_letter_and_skip_the_problem():
    ((shot, content),) = arith_choice.worked_examples(1)
    assert (shot.meta["a"], shot.meta["b"]) == arith.FIRST_SHOT
    assert content == f"<think>27+15=42</think><answer>{shot.gold}</answer>"
    turn = chat.parse_turn(content.removeprefix(chat.THINK_PREFILL))
    assert checker_for("arith_choice", None).is_correct(turn.answer, shot.gold)
    shown = arith_choice.worked_examples(2, avoid=arith_choice.make_problem(15, 27))
    assert all({p.meta["a"], p.meta["b"]} != {15, 27} for p, _ in shown)
    with pytest.raises(UserError, match="env.shots"):
        arith_choice.worked_examples(100_000)


def test_env_shots_give_each_problem_a_choice_example():
    shots = load_shots(load_recipe(None, ["task.name=arith_choice", "env.shots=1"]))
    problems = arith_choice.load("train", 4, 0)
    for job in make_jobs(problems, 1, 0, checker_for("arith_choice", None), EpisodeSettings(), shots):
        messages = job.episode.messages
        ((shot, content),) = arith_choice.worked_examples(1, avoid=job.episode.problem)
        assert messages[1]["content"] == chat.first_user_message(shot, "simple", 5)
        assert messages[2]["content"] == content and content.endswith(f"<answer>{shot.gold}</answer>")


def test_the_docstring_example_is_the_problem():
    assert arith_choice.make_problem(7, 35).question == "What is 7+35?\nA. 51\nB. 42\nC. 40\nD. 33"
    assert '"A. 51", "B. 42", "C. 40", "D. 33"' in arith_choice.__doc__
