"""The toy task of the embedded default: splits, mix, ids, gold answers, scratchpads, worked examples."""

import math
import re

import pytest

from drift_lite import chat
from drift_lite.errors import UserError
from drift_lite.tasks import toy


def _pair(problem) -> tuple[int, int]:
    a, b = problem.meta["a"], problem.meta["b"]
    return (min(a, b), max(a, b))


def _all_pairs(split: str) -> set[tuple[int, int]]:
    return {
        (min(a, b), max(a, b)) for f in toy.FAMILIES for c in toy.CLASSES for a, b in toy._pool(split, f, c)
    }


def test_train_and_eval_are_disjoint_by_unordered_pair():
    train, evals = _all_pairs("train"), _all_pairs("eval")
    assert train and evals and not train & evals
    for seed in (0, 1):
        tr = {_pair(p) for p in toy.load("train", 1024, seed)}
        ev = {_pair(p) for p in toy.load("eval", 256, seed)}
        assert not tr & ev
        assert tr <= train and ev <= evals


def test_loading_is_deterministic_in_the_seed():
    def ids(seed: int) -> list[str]:
        return [p.id for p in toy.load("train", 200, seed)]

    assert ids(0) == ids(0)
    assert ids(0) != ids(1)
    assert len(set(ids(0))) == 200


def test_default_sizes():
    assert len(toy.load("train", None, 0)) == toy.DEFAULT_SIZES["train"]
    assert len(toy.load("eval", None, 0)) == toy.DEFAULT_SIZES["eval"]
    assert toy.load("train", 0, 0) == []


def _cells(problems) -> dict[tuple[str, str], int]:
    counts: dict[tuple[str, str], int] = {}
    for p in problems:
        cell = (p.meta["toy_family"], p.meta["class"])
        counts[cell] = counts.get(cell, 0) + 1
    return counts


def test_exact_family_and_class_proportions():
    counts = _cells(toy.load("train", 400, 3))  # every quota is a whole number at 400
    assert counts == {
        ("add", "easy"): 120,
        ("add", "carry"): 135,
        ("add", "stubborn"): 45,
        ("choice", "easy"): 40,
        ("choice", "carry"): 45,
        ("choice", "stubborn"): 15,
    }
    for size in (1, 7, 33, 101):
        counts = _cells(toy.load("eval", size, 0))
        assert sum(counts.values()) == size
        for family in toy.FAMILIES:
            for cls in toy.CLASSES:
                quota = size * toy.FAMILY_MIX[family] * toy.CLASS_MIX[cls]
                assert math.floor(quota) <= counts.get((family, cls), 0) <= math.ceil(quota)


def test_class_follows_the_units_sum():
    for p in toy.load("train", 300, 0):
        units = p.meta["a"] % 10 + p.meta["b"] % 10
        expected = "easy" if units < 10 else "carry" if units < 15 else "stubborn"
        assert p.meta["class"] == expected


def test_ids_name_the_content_under_every_seed():
    seen: dict[str, tuple[str, str]] = {}
    for seed in range(4):
        for p in toy.load("train", 300, seed) + toy.load("eval", 100, seed):
            assert seen.setdefault(p.id, (p.question, p.gold)) == (p.question, p.gold)
            again = toy.make_problem(p.meta["toy_family"], p.meta["a"], p.meta["b"])
            assert (again.id, again.question, again.gold) == (p.id, p.question, p.gold)
    assert toy.make_problem("add", 47, 38).id == "toy-add-003358"  # (47 - 10) * 90 + (38 - 10)
    assert toy.make_problem("add", 47, 38).id != toy.make_problem("add", 38, 47).id
    assert toy.make_problem("choice", 47, 38).id != toy.make_problem("add", 47, 38).id


def test_add_gold_is_the_sum():
    for p in toy.load("train", 300, 0):
        if p.meta["toy_family"] == "add":
            a, b = p.meta["a"], p.meta["b"]
            assert p.question == f"What is {a}+{b}?"
            assert p.gold == str(a + b) and p.family == "math"
            assert 10 <= a + b <= 99


def test_choice_gold_points_at_the_sum_and_the_slip_is_a_distractor():
    problems = [p for seed in (0, 1) for p in toy.load("train", 400, seed) + toy.load("eval", 200, seed)]
    choice = [p for p in problems if p.meta["toy_family"] == "choice"]
    assert {p.meta["class"] for p in choice} == set(toy.CLASSES)
    for p in choice:
        a, b, values = p.meta["a"], p.meta["b"], p.meta["options"]
        assert p.family == "choice" and p.meta["letters"] == "A-D"
        assert (
            p.question
            == f"Options: {' '.join(f'{x}. {v}' for x, v in zip('ABCD', values))}. Which option is {a}+{b}?"
        )
        assert values[toy.LETTERS.index(p.gold)] == a + b
        assert len(set(values)) == 4 and all(10 <= v <= 99 for v in values)
        assert all(v % 10 == (a + b) % 10 for v in values)
        assert [v // 10 for v in values] == list(range(values[0] // 10, values[0] // 10 + 4))
        if p.meta["class"] != "easy":
            slip = toy.sum_value(a, b, carry=False)
            assert slip == a + b - 10 and slip in values
            assert toy.answer_for(p, carry=False) != p.gold


@pytest.mark.parametrize(
    ("a", "b", "carry", "text"),
    [
        (47, 38, True, "47+38 7+8=15 4+3+1=8"),
        (47, 38, False, "47+38 7+8=15 4+3+0=7"),
        (21, 34, True, "21+34 1+4=05 2+3+0=5"),
        (21, 34, False, "21+34 1+4=05 2+3+0=5"),
        (19, 79, True, "19+79 9+9=18 1+7+1=9"),
    ],
)
def test_scratchpad_examples(a, b, carry, text):
    assert toy.scratchpad(a, b, carry) == text


def test_scratchpad_values_for_every_pair():
    pattern = re.compile(r"(\d\d)\+(\d\d) (\d)\+(\d)=(\d\d) (\d)\+(\d)\+([01])=(\d)")
    for a in toy.OPERANDS:
        for b in toy.OPERANDS:
            if a + b >= 100:
                continue
            m = pattern.fullmatch(toy.scratchpad(a, b))
            assert m, (a, b)
            ra, rb, ua, ub, us, ta, tb, carried, tens = map(int, m.groups())
            assert (ra, rb, ua, ub, ta, tb) == (a, b, a % 10, b % 10, a // 10, b // 10)
            assert us == ua + ub and carried == int(us >= 10)
            assert tens * 10 + us % 10 == a + b


def test_solutions_parse_and_check():
    checker = toy.checker()
    for p in toy.load("train", 200, 0):
        turn = chat.parse_turn(toy.solution(p).removeprefix(chat.THINK_PREFILL))
        assert turn.answer == p.gold and checker.is_correct(turn.answer, p.gold)
        assert turn.content == toy.solution(p)
        if p.meta["toy_family"] == "choice":
            assert toy.thinking(p).endswith(f" A={p.meta['options'][0] // 10}")
        slip = chat.parse_turn(toy.solution(p, carry=False).removeprefix(chat.THINK_PREFILL)).answer
        assert checker.is_correct(slip, p.gold) == (p.meta["class"] == "easy")


@pytest.mark.parametrize("family", ["add", "choice"])
def test_worked_examples_come_from_the_train_split_and_match_the_family(family):
    examples = toy.worked_examples(family, 5)
    assert examples == toy.worked_examples(family, 5)  # fixed
    assert toy.worked_examples(family, 1) == examples[:1]
    assert len({_pair(p) for p, _ in examples}) == 5  # distinct, even with the operands swapped
    eval_ids = {p.id for seed in range(3) for p in toy.load("eval", 256, seed)}
    for problem, content in examples:
        assert problem.meta["toy_family"] == family
        assert toy.split_of(problem.meta["a"], problem.meta["b"]) == "train"
        assert problem.id not in eval_ids
        assert content == toy.solution(problem)
        assert chat.parse_turn(content.removeprefix(chat.THINK_PREFILL)).answer == problem.gold
    first = examples[0][0]
    assert first.meta["class"] != "easy"  # the first one shows the carry


def test_worked_examples_skip_the_problem_itself():
    first = toy.worked_examples("add", 1)[0][0]
    a, b = first.meta["a"], first.meta["b"]
    for avoid in (toy.make_problem("add", a, b), toy.make_problem("add", b, a)):
        shown = toy.worked_examples("add", 3, avoid=avoid)
        assert len(shown) == 3 and all(_pair(p) != _pair(avoid) for p, _ in shown)
    assert toy.worked_examples("math", 2) == toy.worked_examples("add", 2)


def test_bad_split_or_size_is_a_user_error():
    with pytest.raises(UserError, match="unknown split 'test'"):
        toy.load("test", 10, 0)
    with pytest.raises(UserError, match="only"):
        toy.load("eval", 5000, 0)
    with pytest.raises(UserError, match="only"):
        toy.load("train", 100_000, 0)
    with pytest.raises(UserError, match=">= 0"):
        toy.load("train", -1, 0)
    with pytest.raises(UserError, match="env.shots"):
        toy.worked_examples("add", 100_000)


def test_an_id_gives_back_its_family_and_operands():
    for problem in toy.load("train", 20, 0):
        family, a, b = toy.parse_id(problem.id)
        assert (family, a, b) == (problem.meta["toy_family"], problem.meta["a"], problem.meta["b"])
