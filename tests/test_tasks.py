"""The checker registry: every checker by name, unknown names as one-line errors."""

from __future__ import annotations

import pytest

from drift_lite.errors import UserError
from drift_lite.tasks import CHECKERS, checker_for, get_checker


def test_unknown_checker_lists_the_known_ones() -> None:
    with pytest.raises(UserError) as err:
        get_checker("fuzzy")
    message = str(err.value)
    assert "\n" not in message and "fuzzy" in message
    assert all(name in message for name in CHECKERS)


def test_every_checker_has_the_protocol() -> None:
    for name in CHECKERS:
        checker = get_checker(name)
        assert checker.name == name
        assert isinstance(checker.normalize("A"), str)
        assert isinstance(checker.is_correct("A", "A"), bool)


def test_checker_for_picks_the_recipe_choice_else_the_task_default() -> None:
    assert checker_for("toy", None).name == "exact"
    assert checker_for("theoremqa", None).name == "numeric"
    assert checker_for("gsm8k", None).name == "math-verify"
    assert checker_for("gsm8k", "exact").name == "exact"
    assert checker_for("mtu_bench", None).name == "tools"
