"""The arith task (plain additions for real small chat models): splits, mix, ids, gold answers, worked
examples, and its place in the task registry and in `env.shots`."""

import math

import pytest

from drift_lite import chat
from drift_lite.env import EpisodeSettings
from drift_lite.errors import UserError
from drift_lite.recipe import load_recipe
from drift_lite.rollouts import load_shots, make_jobs
from drift_lite.tasks import arith, checker_for, load_problems, task_names, toy


def _pair(problem) -> tuple[int, int]:
    a, b = problem.meta["a"], problem.meta["b"]
    return (min(a, b), max(a, b))


def _all_pairs(split: str) -> set[tuple[int, int]]:
    return {(min(a, b), max(a, b)) for cls in arith.CLASSES for a, b in arith.pool(split, cls)}


def test_train_and_eval_are_disjoint_by_unordered_pair():
    train, evals = _all_pairs("train"), _all_pairs("eval")
    assert train and evals and not train & evals
    assert len(train | evals) == 99 * 100 // 2  # every unordered pair of operands 1-99 is in one split
    for seed in (0, 1):
        tr = {_pair(p) for p in arith.load("train", 168, seed)}
        ev = {_pair(p) for p in arith.load("eval", 72, seed)}
        assert not tr & ev
        assert tr <= train and ev <= evals
    # the toy tasks' split: a two-digit pair held out in one task is held out in the other
    for a, b in [(47, 38), (27, 15), *sorted(evals)[:50]]:
        assert toy.split_of(a, b) == ("eval" if (min(a, b), max(a, b)) in evals else "train")


def test_loading_is_deterministic_in_the_seed():
    def ids(seed: int) -> list[str]:
        return [p.id for p in arith.load("train", 150, seed)]

    assert ids(0) == ids(0)
    assert ids(0) != ids(1)
    assert len(set(ids(0))) == 150


def test_default_sizes():
    assert len(arith.load("train", None, 0)) == arith.DEFAULT_SIZES["train"]
    assert len(arith.load("eval", None, 0)) == arith.DEFAULT_SIZES["eval"]
    assert arith.load("train", 0, 0) == []


def _classes(problems) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in problems:
        counts[p.meta["class"]] = counts.get(p.meta["class"], 0) + 1
    return counts


def test_exact_class_proportions():
    assert _classes(arith.load("train", 150, 3)) == {"1+1": 50, "1+2": 50, "2+2": 50}
    assert _classes(arith.load("eval", 72, 0)) == {"1+1": 24, "1+2": 24, "2+2": 24}
    for size in (1, 7, 33, 64, 101):
        counts = _classes(arith.load("eval" if size <= 72 else "train", size, 0))
        assert sum(counts.values()) == size
        for cls in arith.CLASSES:
            quota = size * arith.MIX[cls]
            assert math.floor(quota) <= counts.get(cls, 0) <= math.ceil(quota)


def test_class_follows_the_operand_digits():
    seen = set()
    for p in arith.load("train", 168, 0) + arith.load("eval", 72, 0):
        a, b = p.meta["a"], p.meta["b"]
        assert 1 <= a <= 99 and 1 <= b <= 99
        digits = sorted((a >= 10) + 1 for a in (a, b))
        assert p.meta["class"] == f"{digits[0]}+{digits[1]}"
        seen.add((p.meta["class"], a < 10))
    assert ("1+2", True) in seen and ("1+2", False) in seen  # the one-digit operand comes first or second


def test_ids_name_the_content_under_every_seed():
    seen: dict[str, tuple[str, str]] = {}
    for seed in range(4):
        for p in arith.load("train", 150, seed) + arith.load("eval", 72, seed):
            assert seen.setdefault(p.id, (p.question, p.gold)) == (p.question, p.gold)
            again = arith.make_problem(p.meta["a"], p.meta["b"])
            assert (again.id, again.question, again.gold, again.meta) == (p.id, p.question, p.gold, p.meta)
    assert arith.make_problem(7, 35).id == "arith-7+35"
    assert arith.make_problem(7, 35).id != arith.make_problem(35, 7).id


def test_gold_is_the_sum():
    for p in arith.load("train", 150, 0) + arith.load("eval", 72, 0):
        a, b = p.meta["a"], p.meta["b"]
        assert p.question == f"What is {a}+{b}?"
        assert p.gold == str(a + b) and p.family == "math" and p.meta["task"] == "arith"


def test_solutions_parse_and_check():
    checker = arith.checker()
    for p in arith.load("train", 150, 0):
        content = arith.solution(p)
        assert content == f"<think>{p.meta['a']}+{p.meta['b']}={p.gold}</think><answer>{p.gold}</answer>"
        turn = chat.parse_turn(content.removeprefix(chat.THINK_PREFILL))
        assert turn.answer == p.gold and checker.is_correct(turn.answer, p.gold)
        assert turn.content == content
        assert not checker.is_correct(str(int(p.gold) + 10), p.gold)


def test_worked_examples_come_from_the_train_split():
    examples = arith.worked_examples(6)
    assert examples == arith.worked_examples(6)  # fixed
    assert arith.worked_examples(1) == examples[:1]
    assert len({_pair(p) for p, _ in examples}) == 6  # distinct, even with the operands swapped
    assert examples[0][1] == "<think>27+15=42</think><answer>42</answer>"  # the measured example first
    assert [p.meta["class"] for p, _ in examples[1:4]] == ["2+2", "1+2", "1+1"]  # then the classes in turn
    eval_pairs = _all_pairs("eval")
    for problem, content in examples:
        assert arith.split_of(problem.meta["a"], problem.meta["b"]) == "train"
        assert _pair(problem) not in eval_pairs
        assert content == arith.solution(problem)


def test_worked_examples_never_show_the_problem_itself():
    for a, b in [(27, 15), (15, 27)]:  # the first example's own problem, in either order
        shown = arith.worked_examples(3, avoid=arith.make_problem(a, b))
        assert len(shown) == 3 and (15, 27) not in {_pair(p) for p, _ in shown}
        assert shown[:2] == arith.worked_examples(3)[1:3]
    for p in arith.load("train", 150, 0):
        assert _pair(p) not in {_pair(s) for s, _ in arith.worked_examples(4, avoid=p)}


def test_bad_split_or_size_is_a_user_error():
    with pytest.raises(UserError, match="unknown split 'test'"):
        arith.load("test", 10, 0)
    with pytest.raises(UserError, match="only 25 1\\+1"):
        arith.load("eval", 90, 0)
    with pytest.raises(UserError, match="only 56 1\\+1"):
        arith.load("train", 170, 0)
    with pytest.raises(UserError, match=">= 0"):
        arith.load("train", -1, 0)
    with pytest.raises(UserError, match="env.shots"):
        arith.worked_examples(100_000)


def test_registry_and_checker():
    assert "arith" in task_names()
    assert load_problems("arith", "eval", None, 30, 2) == arith.load("eval", 30, 2)
    exact = checker_for("arith", None)
    assert exact.name == "exact"
    assert exact.is_correct(" 42 ", "42") and not exact.is_correct("42.0", "42")
    assert checker_for("arith", "math-verify").is_correct("42.0", "42")  # a recipe can still name another
    with pytest.raises(UserError, match="no problems"):
        load_problems("arith", "train", None, 0, 0)


def test_env_shots_give_each_task_its_own_worked_examples():
    shots = load_shots(load_recipe(None, ["task.name=arith", "env.shots=1"]))
    problems = arith.load("train", 6, 0) + toy.load("train", 4, 0)  # e.g. a toy eval set beside arith
    for job in make_jobs(problems, 1, 0, checker_for("arith", None), EpisodeSettings(), shots):
        problem, messages = job.episode.problem, job.episode.messages
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
        if problem.meta.get("task") == "arith":
            ((shot, content),) = arith.worked_examples(1, avoid=problem)
            assert content.startswith("<think>") and "</answer>" in content
        else:
            ((shot, content),) = toy.worked_examples(problem.meta["toy_family"], 1, avoid=problem)
        assert messages[1]["content"] == chat.first_user_message(shot, "simple", 5)
        assert messages[2]["content"] == content
        assert messages[3]["content"] == chat.first_user_message(problem, "simple", 5)
    with pytest.raises(UserError, match="env.shots"):
        load_shots(load_recipe(None, ["task.name=gsm8k", "env.shots=1"]))
