"""Math answer checkers: `math-verify` (symbolic / numeric equivalence) and `numeric` (TheoremQA).

Every checker has `name`, `normalize(answer)` (stored in `answer_norms`, used to count repeated answers) and
`is_correct(answer, gold)`. Choices made here:
- `math-verify`: gold and answer are parsed by math_verify as LaTeX wrapped in `$...$` (so bare `1/2`,
  `\\frac{1}{2}` and `0.5` all parse), or as they are when they already hold `$` or `\\boxed`; a plain
  `1.2e-3` is rewritten as `1.2\\times10^{-3}` first. Parsing is cached. Timeouts (signal.alarm, 5 s) are
  used in the main thread only: without them `9^{9^{9^{9}}}` or `(x+1)^{100000}` stalls `verify` for good.
  Off the main thread they are off (signal.alarm cannot run there), and answers with a power above
  MAX_SAFE_EXPONENT or a nested power are judged by exact match only. An answer whose text equals the
  gold after `exact_normalize` is always correct; when parsing fails nothing else is.
  `normalize` is `exact_normalize`, so `0.5` and `1/2` count as different answers for repetition.
- `numeric` (TheoremQA): relative tolerance 1e-2 (absolute 1e-8 near zero); numbers may carry a sign,
  thousands commas, `1.2e-3`, `1.2 \\times 10^{-3}`, `10^{5}`, fractions, `\\sqrt`, `\\pi`, a leading `x =`,
  and trailing units after a space; an answer with `%` matches when either its value or value/100 does.
  Gold `True`/`False` accept true/false/yes/no; a gold list `[a, b]` needs the same length and each element
  within tolerance; anything else (options like `(b)`) is compared case-insensitively without brackets.
"""

from __future__ import annotations

import functools
import math
import re
import threading
from typing import Any

from drift_lite.tasks.base import exact_normalize

MATH_VERIFY_TIMEOUT = 5  # seconds per parse / comparison, main thread only
MAX_SAFE_EXPONENT = 1000  # off the main thread, answers with larger powers are judged by exact match only

# ---------------------------------------------------------------------------------------------- math-verify

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")
_SCI = re.compile(r"([+-]?(?:\d+\.?\d*|\.\d+))[eE]([+-]?\d+)")


def _timeout() -> int | None:
    return MATH_VERIFY_TIMEOUT if threading.current_thread() is threading.main_thread() else None


def _latex_input(text: str) -> str:
    text = text.strip()
    sci = _SCI.fullmatch(text)
    if sci:
        text = f"{sci.group(1)}\\times10^{{{sci.group(2)}}}"
    if _UNESCAPED_DOLLAR.search(text) or "\\boxed" in text:
        return text
    return f"${text}$"


@functools.lru_cache(maxsize=1 << 16)
def _mv_parse(text: str, timeout: int | None) -> tuple:
    from math_verify import parse

    if not text.strip():
        return ()
    try:
        return tuple(parse(_latex_input(text), parsing_timeout=timeout))
    except Exception:  # math_verify raises on odd inputs in some versions; treat as unparsable
        return ()


def math_parse(text: str) -> tuple:
    """math_verify's parse of `text` (cached; empty when unparsable)."""
    return _mv_parse(text, _timeout())


def _risky(parsed: tuple) -> bool:
    """True when an expression has a power that sympy may take forever on: `x^{100000}`, `9^{9^{9}}`."""
    from sympy import Pow

    for item in parsed:
        if isinstance(item, str):
            continue
        for power in item.atoms(Pow):
            exponent = power.exp
            if exponent.has(Pow) or (exponent.is_Number and abs(exponent) > MAX_SAFE_EXPONENT):
                return True
    return False


class MathVerifyChecker:
    """Symbolic / numeric equivalence with math_verify; exact match as the floor."""

    name = "math-verify"

    def normalize(self, answer: str) -> str:
        return exact_normalize(answer)

    def is_correct(self, answer: str, gold: str) -> bool:
        if not answer.strip():
            return False
        if exact_normalize(answer) == exact_normalize(gold):
            return True
        gold_parsed, answer_parsed = math_parse(gold), math_parse(answer)
        if not gold_parsed or not answer_parsed:
            return False
        timeout = _timeout()
        if timeout is None and _risky(answer_parsed):
            return False  # no timeout available here, and sympy may never finish
        from math_verify import verify

        try:
            return bool(verify(list(gold_parsed), list(answer_parsed), timeout_seconds=timeout))
        except Exception:
            return False


# ---------------------------------------------------------------------------------------------- numeric

_NUMBER = r"[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[+-]?\.\d+"
_POWER = r"\s*(?:\\times|\\cdot|\*|×|x)\s*10\s*(?:\^|\*\*)\s*\{?\s*([+-]?\d+)\s*\}?"
_PLAIN = re.compile(rf"({_NUMBER})(?:[eE]([+-]?\d+)|{_POWER})?")
_POWER_ONLY = re.compile(r"([+-]?)10\s*(?:\^|\*\*)\s*\{?\s*([+-]?\d+)\s*\}?")
_UNIT_TAIL = re.compile(rf"({_NUMBER})(?:\s+|\s*\\(?:text|mathrm)\{{|\s*°|\s*\^\s*\\circ).*", re.DOTALL)
_LEAD = re.compile(r"^[A-Za-z_][\w']*\s*(?:=|≈|\\approx)\s*")
_BOXED = re.compile(r"^\\boxed\{(.*)\}$", re.DOTALL)
_NOISE = re.compile(r"\\left|\\right|\\[,!;:]|~|\\displaystyle")
_TRUE, _FALSE = {"true", "yes"}, {"false", "no"}


def _clean(text: str) -> str:
    text = text.strip().strip("$").strip()
    for wrapper in (r"^\\\((.*)\\\)$", r"^\\\[(.*)\\\]$", _BOXED.pattern):
        found = re.match(wrapper, text, re.DOTALL)
        if found:
            text = found.group(1).strip()
    text = _NOISE.sub("", text).replace("{,}", ",")
    return _LEAD.sub("", text).strip().rstrip(".").strip()


_MATH_FUNCS = {"sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "tanh", "exp", "log"}


def _float_eval(expr: Any) -> float | None:
    """A sympy number in float arithmetic: overflow fails fast where evalf of `9^{9^{9^9}}` hangs."""
    try:
        if expr.is_Number or expr.is_NumberSymbol:
            value: Any = float(expr)
        elif expr.is_Add or expr.is_Mul:
            parts = [_float_eval(arg) for arg in expr.args]
            if any(part is None for part in parts):
                return None
            value = math.fsum(parts) if expr.is_Add else math.prod(parts)
        elif expr.is_Pow:
            base, power = _float_eval(expr.base), _float_eval(expr.exp)
            if base is None or power is None:
                return None
            value = base**power
        elif expr.func.__name__ in _MATH_FUNCS and len(expr.args) in (1, 2):
            args = [_float_eval(arg) for arg in expr.args]  # log(x, base) has two
            value = None if None in args else getattr(math, expr.func.__name__)(*args)
        else:
            return None
    except (OverflowError, ValueError, ZeroDivisionError, TypeError, AttributeError):
        return None
    if isinstance(value, complex) or value is None or math.isnan(value):
        return None
    return float(value)


def _to_float(text: str) -> float | None:
    plain = _PLAIN.fullmatch(text)
    if plain:
        value = float(plain.group(1).replace(",", ""))
        exponent = plain.group(2) or plain.group(3)
        return value * 10.0 ** int(exponent) if exponent else value
    power = _POWER_ONLY.fullmatch(text)
    if power:
        return (-1.0 if power.group(1) == "-" else 1.0) * 10.0 ** int(power.group(2))
    for item in math_parse(text):
        if getattr(item, "is_number", False) and not getattr(item, "free_symbols", True):
            return _float_eval(item)
    unit = _UNIT_TAIL.fullmatch(text)
    if unit:
        return float(unit.group(1).replace(",", ""))
    return None


def parse_number(text: str) -> list[float]:
    """The values `text` may mean as a number: [] if none, [v, v/100] for a percentage, else [v]."""
    text = _clean(text)
    percent = text.endswith("%")
    if percent:
        text = text.rstrip("%").rstrip("\\").strip()
    try:
        value = _to_float(text)
    except (OverflowError, ValueError):
        return []
    if value is None or math.isnan(value):
        return []
    return [value, value / 100.0] if percent else [value]


def _split_list(text: str) -> list[str] | None:
    text = _clean(text)
    if len(text) >= 2 and text[0] in "[(" and text[-1] in "])":
        return [part for part in (p.strip() for p in text[1:-1].split(",")) if part] or None
    return None


def _word(text: str) -> str:
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", _clean(text))
    return re.sub(r"[\s()\[\].,:*\"']", "", text).lower()


class NumericChecker:
    """TheoremQA-style: numbers within a relative tolerance; bools, lists and options as described above."""

    name = "numeric"

    def __init__(self, rel_tol: float = 1e-2, abs_tol: float = 1e-8):
        self.rel_tol = rel_tol
        self.abs_tol = abs_tol

    def _close(self, answer: str, gold: str) -> bool:
        answers, golds = parse_number(answer), parse_number(gold)
        return any(
            math.isclose(a, g, rel_tol=self.rel_tol, abs_tol=self.abs_tol) for a in answers for g in golds
        )

    def normalize(self, answer: str) -> str:
        values = parse_number(answer)
        if values:
            return f"{values[0]:.6g}"
        items = _split_list(answer)
        if items is not None and all(parse_number(item) for item in items):
            return "[" + ",".join(f"{parse_number(item)[0]:.6g}" for item in items) + "]"
        return exact_normalize(answer)

    def is_correct(self, answer: str, gold: str) -> bool:
        if not answer.strip():
            return False
        gold_word = _word(gold)
        if gold_word in ("true", "false"):
            word = _word(answer)
            return (word in _TRUE) if gold_word == "true" else (word in _FALSE)
        gold_items = _split_list(gold)
        if gold_items is not None and all(parse_number(g) for g in gold_items):
            items = _split_list(answer)
            if items is None:
                items = [part.strip() for part in _clean(answer).split(",") if part.strip()]
            return len(items) == len(gold_items) and all(map(self._close, items, gold_items))
        if parse_number(gold):
            return self._close(answer, gold)
        return _word(answer) == gold_word and gold_word != ""
