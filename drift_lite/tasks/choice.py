"""Multiple-choice sources (family "choice", gold = a letter): GPQA-diamond, MMLU-Redux 2.0, MMLU-Pro.

The question gets its options appended as "A. ..." lines (the release's layout). Default hub datasets:
- gpqa_diamond: `Idavidrein/gpqa` config `gpqa_diamond`, train (gated: accept its terms and log in first).
  Columns `Question`, `Correct Answer`, `Incorrect Answer 1..3`; the four options are shuffled per question
  with a generator seeded by sha256(seed, question text), so the order is the same on every machine and run.
- mmlu_redux: `edinburgh-dawg/mmlu-redux-2.0`, every subject config, test; `question`, `choices`, `answer`
  (0-based index). Rows flagged in `error_type` are kept, as the release does; the flag is in meta.
- mmlu_pro: `TIGER-Lab/MMLU-Pro` test; `question`, `options` (up to 10), `answer` (letter), `answer_index`,
  `category`; letters A-J.

The answer checker, `letter`: the first standalone uppercase letter A-J (no letter or digit on either side,
not followed by an apostrophe): "B", "(B)", "B.", "**B**", "The answer is B" give B; "AB" gives none.
Lowercase counts only when the whole answer is one letter, bracketed or not ("b", "(c)"). "I think B" gives I:
the answer tags should hold the letter only.
"""

from __future__ import annotations

import hashlib
import random
import re

from drift_lite.tasks.base import Problem, exact_normalize
from drift_lite.tasks.loading import HubSpec, Table, bad_field, collect, open_source, require, resolve

LETTERS = "ABCDEFGHIJ"
HUB = {
    "gpqa_diamond": HubSpec("Idavidrein/gpqa", "train", configs=("gpqa_diamond",)),
    "mmlu_redux": HubSpec("edinburgh-dawg/mmlu-redux-2.0", "test", all_configs=True),
    "mmlu_pro": HubSpec("TIGER-Lab/MMLU-Pro", "test"),
}
GPQA_FIELDS = ["Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3"]


def _open(task: str, source: str | None) -> Table:
    return open_source(resolve(source, HUB[task].path, task), HUB[task])


def with_options(question: str, options: list[str]) -> str:
    """The question followed by one "A. option" line per option."""
    lines = [question.strip()] + [f"{LETTERS[k]}. {option}" for k, option in enumerate(options)]
    return "\n".join(lines)


def gpqa_order(question: str, seed: int, n: int = 4) -> list[int]:
    """A permutation of range(n) fixed by the question text and the seed (no salted hash())."""
    digest = hashlib.sha256(f"{seed}\x00{question}".encode()).digest()
    order = list(range(n))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return order


def _options(label: str, i: int, row: dict, name: str, low: int, high: int) -> list[str]:
    options = row.get(name)
    if options is None:
        require(label, i, row, [name])
    if not isinstance(options, list) or not all(isinstance(o, str | int | float) for o in options):
        raise bad_field(label, i, name, "not a list of strings")
    if not low <= len(options) <= high:
        raise bad_field(label, i, name, f"{len(options)} options (expected {low} to {high})")
    return [str(option).strip() for option in options]


def _index(label: str, i: int, name: str, value: object, n: int) -> int:
    try:
        index = int(str(value).strip())
    except ValueError:
        raise bad_field(label, i, name, f"not an integer: {value!r}") from None
    if not 0 <= index < n:
        raise bad_field(label, i, name, f"index {index} out of range for {n} options")
    return index


def load_gpqa_diamond(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """GPQA-diamond with deterministically shuffled options."""
    table = _open("gpqa_diamond", source)

    def make(i: int, row: dict) -> Problem:
        question, correct, *wrong = (str(v).strip() for v in require(table.label, i, row, GPQA_FIELDS))
        given = [correct, *wrong]
        order = gpqa_order(question, seed)
        options = [given[k] for k in order]
        gold = LETTERS[order.index(0)]
        key = row.get("Record ID") or table.key(i)
        meta = {"letters": "A-D", "options": options}
        for name in ("High-level domain", "Subdomain"):
            if row.get(name):
                meta[name] = row[name]
        return Problem(f"gpqa_diamond-{key}", with_options(question, options), gold, "choice", meta)

    return collect(table, list(range(len(table))), limit, seed, make)


def load_mmlu_redux(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """MMLU-Redux 2.0: gold is the letter of the `answer` index."""
    table = _open("mmlu_redux", source)

    def make(i: int, row: dict) -> Problem:
        question, _, answer = require(table.label, i, row, ["question", "choices", "answer"])
        options = _options(table.label, i, row, "choices", 2, 10)
        gold = LETTERS[_index(table.label, i, "answer", answer, len(options))]
        meta = {"letters": f"A-{LETTERS[len(options) - 1]}"}
        if row.get("error_type"):
            meta["error_type"] = row["error_type"]
        if table.configs:
            meta["subject"] = table.configs[i]
        return Problem(
            f"mmlu_redux-{table.key(i)}", with_options(str(question), options), gold, "choice", meta
        )

    return collect(table, list(range(len(table))), limit, seed, make)


def load_mmlu_pro(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """MMLU-Pro: gold is `answer`, which must be the letter of `answer_index`."""
    table = _open("mmlu_pro", source)

    def make(i: int, row: dict) -> Problem:
        question, _, answer, answer_index = require(
            table.label, i, row, ["question", "options", "answer", "answer_index"]
        )
        options = _options(table.label, i, row, "options", 2, 10)
        letter = LETTERS[_index(table.label, i, "answer_index", answer_index, len(options))]
        if str(answer).strip().upper() != letter:
            raise bad_field(
                table.label, i, "answer", f"{answer!r} is not the letter of answer_index ({letter})"
            )
        key = row.get("question_id")
        key = table.key(i) if key is None else key
        meta = {"letters": "A-J"}
        if row.get("category"):
            meta["category"] = row["category"]
        return Problem(f"mmlu_pro-{key}", with_options(str(question), options), letter, "choice", meta)

    return collect(table, list(range(len(table))), limit, seed, make)


LOADERS = {"gpqa_diamond": load_gpqa_diamond, "mmlu_redux": load_mmlu_redux, "mmlu_pro": load_mmlu_pro}
DEFAULT_CHECKER = {"gpqa_diamond": "letter", "mmlu_redux": "letter", "mmlu_pro": "letter"}


# ---------------------------------------------------------------------------------------------- letter

_LETTER = re.compile(r"(?<![A-Za-z0-9])([A-J])(?![A-Za-z0-9'’])")
_LONE_LETTER = re.compile(r"[\s(\[{*]*([A-Ja-j])[\s)\]}.:*]*")


def first_letter(answer: str) -> str | None:
    """The choice letter in `answer` (see the module docstring), or None."""
    lone = _LONE_LETTER.fullmatch(answer)
    if lone:
        return lone.group(1).upper()
    found = _LETTER.search(answer)
    return found.group(1) if found else None


class LetterChecker:
    """Multiple choice: the first standalone letter A-J must equal the gold letter."""

    name = "letter"

    def normalize(self, answer: str) -> str:
        letter = first_letter(answer)
        return letter if letter is not None else exact_normalize(answer)

    def is_correct(self, answer: str, gold: str) -> bool:
        letter = first_letter(answer)
        return letter is not None and letter == gold.strip().upper()
