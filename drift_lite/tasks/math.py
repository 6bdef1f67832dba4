"""Math problem sources: MetaMathQA, MATH-500, MATH (Hendrycks), GSM8K, TheoremQA.

Each loader is `load(source, limit, seed) -> list[Problem]` (see tasks/loading.py for sources and `limit`).
Default hub datasets (`source=None`), as the release uses them:
- metamathqa: `meta-math/MetaMathQA` train; rows whose `type` starts with `MATH_`; gold after
  "The answer is: ".
- math500: `HuggingFaceH4/MATH-500` test; gold `answer`; id `math500-<unique_id>`.
- hendrycks_math: `EleutherAI/hendrycks_math` test, its seven subject configs; gold = the last
  `\\boxed{}` / `\\fbox{}`.
- gsm8k: `openai/gsm8k` config `main`, test; gold after `####`, thousands commas removed.
- theoremqa: `TIGER-Lab/TheoremQA` test; gold `str(Answer)`, `Answer_type` in meta; checked by `numeric`.
Ids are `<task>-<row index in the file>` unless the dataset has its own. Rows whose gold answer cannot be
extracted are skipped (and logged); a row missing a required field is an error.
"""

from __future__ import annotations

import re

from drift_lite.errors import UserError
from drift_lite.tasks.base import Problem
from drift_lite.tasks.loading import HubSpec, Table, collect, open_source, require, resolve

HENDRYCKS_SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
HUB = {
    "metamathqa": HubSpec("meta-math/MetaMathQA", "train"),
    "math500": HubSpec("HuggingFaceH4/MATH-500", "test"),
    "hendrycks_math": HubSpec("EleutherAI/hendrycks_math", "test", configs=HENDRYCKS_SUBJECTS),
    "gsm8k": HubSpec("openai/gsm8k", "test", configs=("main",)),
    "theoremqa": HubSpec("TIGER-Lab/TheoremQA", "test"),
}
METAMATH_MARKER = "The answer is: "
METAMATH_TYPE_PREFIX = "MATH_"
_BOXED = re.compile(r"\\(?:boxed|fbox)")


def _open(task: str, source: str | None) -> Table:
    return open_source(resolve(source, HUB[task].path, task), HUB[task])


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` or `\\fbox{...}` (balanced braces), or None."""
    for found in reversed(list(_BOXED.finditer(text))):
        rest = text[found.end() :]
        stripped = rest.lstrip()
        if stripped.startswith("{"):
            start = found.end() + (len(rest) - len(stripped))
            depth = 0
            for j in range(start, len(text)):
                if text[j] == "{" and text[j - 1] != "\\":
                    depth += 1
                elif text[j] == "}" and text[j - 1] != "\\":
                    depth -= 1
                    if depth == 0:
                        inner = text[start + 1 : j].strip()
                        return inner[1:-1].strip() if re.fullmatch(r"\$[^$]+\$", inner) else inner
            continue  # unbalanced: try an earlier one
        if rest[:1] == " ":  # `\boxed 5`: one token
            token = re.match(r"\s*([^\s$]+)", rest)
            if token:
                return token.group(1)
    return None


def gsm8k_gold(answer: str) -> str | None:
    """The text after the last `####`, stripped, with thousands commas removed; None without `####`."""
    if "####" not in answer:
        return None
    gold = answer.rsplit("####", 1)[1].strip()
    return re.sub(r"(?<=\d),(?=\d)", "", gold) or None


def metamath_gold(response: str) -> str | None:
    """The text after the last "The answer is: " in a MetaMathQA response, or None."""
    at = response.rfind(METAMATH_MARKER)
    if at < 0:
        return None
    return response[at + len(METAMATH_MARKER) :].strip() or None


def load_metamathqa(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """MetaMathQA rows of the MATH_ types (the release's filter)."""
    table = _open("metamathqa", source)
    keep = []
    for i, kind in enumerate(table.column("type")):
        if kind is None:
            require(table.label, i, {}, ["type"])
        if str(kind).startswith(METAMATH_TYPE_PREFIX):
            keep.append(i)

    def make(i: int, row: dict) -> Problem | None:
        query, response = require(table.label, i, row, ["query", "response"])
        gold = metamath_gold(str(response))
        if gold is None:
            return None
        return Problem(f"metamathqa-{table.key(i)}", str(query).strip(), gold, "math", {"type": row["type"]})

    return collect(table, keep, limit, seed, make)


def load_math500(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """MATH-500: gold is the `answer` column."""
    table = _open("math500", source)

    def make(i: int, row: dict) -> Problem:
        problem, answer = require(table.label, i, row, ["problem", "answer"])
        key = row.get("unique_id") or table.key(i)
        meta = {k: row[k] for k in ("subject", "level") if row.get(k) is not None}
        return Problem(f"math500-{key}", str(problem).strip(), str(answer).strip(), "math", meta)

    return collect(table, list(range(len(table))), limit, seed, make)


def load_hendrycks_math(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """MATH (Hendrycks): gold is the last boxed expression of `solution`."""
    table = _open("hendrycks_math", source)

    def make(i: int, row: dict) -> Problem | None:
        problem, solution = require(table.label, i, row, ["problem", "solution"])
        gold = last_boxed(str(solution))
        if not gold:
            return None
        meta = {k: row[k] for k in ("level", "type") if row.get(k) is not None}
        return Problem(f"hendrycks_math-{table.key(i)}", str(problem).strip(), gold, "math", meta)

    return collect(table, list(range(len(table))), limit, seed, make)


def load_gsm8k(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """GSM8K: gold is the number after `####`."""
    table = _open("gsm8k", source)

    def make(i: int, row: dict) -> Problem | None:
        question, answer = require(table.label, i, row, ["question", "answer"])
        gold = gsm8k_gold(str(answer))
        if gold is None:
            return None
        return Problem(f"gsm8k-{table.key(i)}", str(question).strip(), gold, "math", {})

    return collect(table, list(range(len(table))), limit, seed, make)


def theoremqa_gold(answer: object) -> str:
    """TheoremQA's answer as text: `str()` of the value (`True`, `[1, 2]`, `0.5`), stripped."""
    return str(answer).strip()


def load_theoremqa(source: str | None, limit: int | None, seed: int) -> list[Problem]:
    """TheoremQA: gold `str(Answer)`; rows with a picture are kept (as the release does) and flagged."""
    table = _open("theoremqa", source)

    def make(i: int, row: dict) -> Problem:
        question, answer, answer_type = require(table.label, i, row, ["Question", "Answer", "Answer_type"])
        if isinstance(answer, list | tuple) and not answer:
            raise UserError(f"{table.label}: row {i}: field 'Answer': missing")
        picture = row.get("Picture")
        meta = {"answer_type": str(answer_type), "has_picture": picture not in (None, "", "None")}
        key = row.get("id") or table.key(i)
        return Problem(f"theoremqa-{key}", str(question).strip(), theoremqa_gold(answer), "math", meta)

    return collect(table, list(range(len(table))), limit, seed, make)


LOADERS = {
    "metamathqa": load_metamathqa,
    "math500": load_math500,
    "hendrycks_math": load_hendrycks_math,
    "gsm8k": load_gsm8k,
    "theoremqa": load_theoremqa,
}
DEFAULT_CHECKER = {
    "metamathqa": "math-verify",
    "math500": "math-verify",
    "hendrycks_math": "math-verify",
    "gsm8k": "math-verify",
    "theoremqa": "numeric",
}
