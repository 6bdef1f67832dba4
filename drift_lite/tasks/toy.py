"""Synthetic tasks of the embedded default: two-digit addition with a scratchpad, in two families.

- `add` (numeric, like the math sets): "What is 47+38?", gold "85", checked by exact match.
- `choice` (letters, like GPQA/MMLU): "Options: A. 65 B. 75 C. 85 D. 95. Which option is 47+38?", gold "C",
  meta {"letters": "A-D"}. The four options ascend, share the units digit and have consecutive tens digits, so
  the forgotten-carry sum (75 here) is always a distractor and the letter follows from the tens digit.

The worked solution is a scratchpad over the digits, units first:
`<think>47+38 7+8=15 4+3+1=8</think><answer>85</answer>` (restated, then units, then tens with the carry;
a sum without carry reads `21+34 1+4=05 2+3+0=5`). Operands are two-digit with a two-digit sum.

Every problem has a class, by the units sum `u` of its operands, that the toy reference's errors follow:
`easy` (u < 10, no carry), `carry` (10 <= u <= 14), `stubborn` (u >= 15).

Default mix (`load`): families add 75% / choice 25%; classes easy 40% / carry 45% / stubborn 15% in each
family, in exact proportions (largest remainder), then shuffled. Splits are disjoint by content: an unordered
operand pair {a, b} belongs to `eval` when a fixed hash of it falls in one bucket of five (independent of the
seed), so no eval sum appears in any train problem of either family. An id names the content
(`toy-add-003248`: family plus operand pair), so the same id is the same problem under every seed.
"""

from __future__ import annotations

import hashlib
import random
from functools import cache

from drift_lite.errors import UserError
from drift_lite.tasks.base import ExactChecker, Problem, draw_mix, unordered

FAMILIES = ("add", "choice")
CLASSES = ("easy", "carry", "stubborn")
FAMILY_MIX = {"add": 0.75, "choice": 0.25}
CLASS_MIX = {"easy": 0.40, "carry": 0.45, "stubborn": 0.15}
DEFAULT_SIZES = {"train": 1024, "eval": 256}  # what `size=None` gives (the task is synthetic: no "all")
EVAL_BUCKETS = 5  # one unordered pair in five is held out for eval
LETTERS = "ABCD"
OPERANDS = range(10, 100)
# The fixed words of the questions (the toy tokenizer makes each one token).
ADD_ASK = "What is "
CHOICE_HEAD = "Options: "
CHOICE_ASK = ". Which option is "


def problem_class(a: int, b: int) -> str:
    """The error class of a + b, by the sum of the units digits."""
    units = a % 10 + b % 10
    if units < 10:
        return "easy"
    return "carry" if units < 15 else "stubborn"


def split_of(a: int, b: int) -> str:
    """ "eval" or "train" for the operand pair, by a fixed hash of the unordered pair (seed-independent)."""
    lo, hi = sorted((a, b))
    digest = hashlib.sha256(f"toy-pair-{lo}-{hi}".encode()).digest()
    return "eval" if digest[0] % EVAL_BUCKETS == 0 else "train"


def scratchpad(a: int, b: int, carry: bool = True) -> str:
    """The thinking for a + b; `carry=False` is the classic slip that drops the carry into the tens.

    Fixed width (the units sum as two digits, the carry always written, a + b < 100): every digit the model
    copies or adds sits at a fixed distance, which a 2-layer model learns quickly; the slip is the single
    token after `4+3+`.
    """
    units = a % 10 + b % 10
    carried = int(units >= 10 and carry)
    tens = a // 10 + b // 10 + carried
    return f"{a}+{b} {a % 10}+{b % 10}={units:02d} {a // 10}+{b // 10}+{carried}={tens}"


def sum_value(a: int, b: int, carry: bool = True) -> int:
    """a + b, or the value a solver that drops the carry writes."""
    return a + b if carry or a % 10 + b % 10 < 10 else a + b - 10


def _options(a: int, b: int) -> list[int]:
    """The four option values of the choice problem for a + b, ascending (the window is fixed by the pair)."""
    rng = random.Random(f"toy-choice-{a}-{b}")
    tens, units = divmod(a + b, 10)
    has_carry = a % 10 + b % 10 >= 10
    last = min(tens - 1 if has_carry else tens, 6)  # four consecutive tens digits, holding the slip's tens
    start = rng.randint(max(1, tens - 3), last)
    return [10 * t + units for t in range(start, start + 4)]


def _index(a: int, b: int) -> int:
    return (a - 10) * 90 + (b - 10)


def parse_id(prompt_id: str) -> tuple[str, int, int]:
    """(family, a, b) of a toy problem id `toy-<family>-<index of the operand pair>` (`make_problem`'s)."""
    _, family, index = prompt_id.split("-")
    a, b = divmod(int(index), 90)
    return family, a + 10, b + 10


def make_problem(family: str, a: int, b: int) -> Problem:
    """The problem of `family` for a + b (a, b two-digit, a + b < 100)."""
    meta = {"a": a, "b": b, "class": problem_class(a, b), "toy_family": family}
    pid = f"toy-{family}-{_index(a, b):06d}"
    if family == "add":
        return Problem(pid, f"{ADD_ASK}{a}+{b}?", str(a + b), family="math", meta=meta)
    if family == "choice":
        values = _options(a, b)
        listed = " ".join(f"{letter}. {v}" for letter, v in zip(LETTERS, values))
        gold = LETTERS[values.index(a + b)]
        meta = {**meta, "letters": "A-D", "options": values}
        # Options first: the sum ends the question in both families, so the model reads it the same way.
        question = f"{CHOICE_HEAD}{listed}{CHOICE_ASK}{a}+{b}?"
        return Problem(pid, question, gold, family="choice", meta=meta)
    raise ValueError(f"unknown toy family {family!r}")


def answer_for(problem: Problem, carry: bool = True) -> str:
    """The answer a solver gives after its scratchpad (with or without the carry)."""
    a, b = problem.meta["a"], problem.meta["b"]
    value = sum_value(a, b, carry)
    if problem.meta["toy_family"] == "choice":
        return LETTERS[problem.meta["options"].index(value)]
    return str(value)


def thinking(problem: Problem, carry: bool = True) -> str:
    """The text between the think tags: the scratchpad, and for choice the tens digit of option A.

    With A's tens digit next to the sum's, the letter is a small local table (8 - 6 = 2 -> C), which a
    tiny model learns far faster than matching the sum against the options across the prompt.
    """
    text = scratchpad(problem.meta["a"], problem.meta["b"], carry)
    if problem.meta["toy_family"] == "choice":
        text += f" A={problem.meta['options'][0] // 10}"
    return text


def solution(problem: Problem, carry: bool = True) -> str:
    """The assistant content `<think>…</think><answer>…</answer>` of a solver that does (not) carry."""
    return f"<think>{thinking(problem, carry)}</think><answer>{answer_for(problem, carry)}</answer>"


@cache
def _pool(split: str, family: str, cls: str) -> tuple[tuple[int, int], ...]:
    """Every operand pair of one split, family and class, in a fixed order."""
    pairs = []
    for a in OPERANDS:
        for b in OPERANDS:
            if a + b >= 100:  # two-digit sums keep the scratchpad and the answer fixed-width
                continue
            if problem_class(a, b) == cls and split_of(a, b) == split:
                pairs.append((a, b))
    return tuple(pairs)


def load(split: str, size: int | None, seed: int) -> list[Problem]:
    """`size` problems of the default mix from `split` ("train" | "eval"), deterministic in `seed`."""
    shares = {(f, c): FAMILY_MIX[f] * CLASS_MIX[c] for f in FAMILIES for c in CLASSES}
    return draw_mix(
        "toy", split, size, seed, DEFAULT_SIZES, shares, _pool, lambda f, c, a, b: make_problem(f, a, b)
    )


# The first worked example of each family (a carry problem, train split); more follow in a fixed order.
_SHOT_PAIRS = {"add": (27, 15), "choice": (36, 27)}


@cache
def _shot_order(family: str) -> tuple[tuple[int, int], ...]:
    """Train-split operand pairs for worked examples, distinct as unordered pairs, in a fixed order."""
    first = _SHOT_PAIRS[family]
    rest = {unordered(a, b) for cls in CLASSES for a, b in _pool("train", family, cls)}
    rest.discard(unordered(*first))
    shuffled = sorted(rest)
    random.Random(f"toy-shots-{family}").shuffle(shuffled)
    return (first, *shuffled)


def worked_examples(family: str, n: int, avoid: Problem | None = None) -> list[tuple[Problem, str]]:
    """`n` distinct worked examples (problem, perfect assistant content) of `family`, from the train split.

    Every problem of a family gets the same examples, except that one with the operands of `avoid` (in
    either order) is skipped, so no problem is shown its own answer.
    """
    key = "add" if family == "math" else family
    if key not in _SHOT_PAIRS:
        raise ValueError(f"no toy worked examples for family {family!r}")
    skip = unordered(avoid.meta["a"], avoid.meta["b"]) if avoid is not None else None
    pairs = [pair for pair in _shot_order(key) if unordered(*pair) != skip][:n]
    if len(pairs) < n:
        raise UserError(f"env.shots: the toy train split has only {len(pairs)} {key} examples, {n} asked")
    return [(problem, solution(problem)) for problem in (make_problem(key, a, b) for a, b in pairs)]


def checker() -> ExactChecker:
    """The toy tasks' checker: the release's exact match (numbers and letters alike)."""
    return ExactChecker()
