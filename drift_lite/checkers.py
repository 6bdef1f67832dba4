"""Answer checkers by name: `exact` (the release's), `math-verify`, `letter`, `numeric`, `tools`.

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
- `letter`: the first standalone uppercase letter A-J (no letter or digit on either side, not followed by
  an apostrophe): "B", "(B)", "B.", "**B**", "The answer is B" give B; "AB" gives none. Lowercase counts only
  when the whole answer is one letter, bracketed or not ("b", "(c)"). "I think B" gives I: the answer
  tags should hold the letter only.
- `numeric` (TheoremQA): relative tolerance 1e-2 (absolute 1e-8 near zero); numbers may carry a sign,
  thousands commas, `1.2e-3`, `1.2 \\times 10^{-3}`, `10^{5}`, fractions, `\\sqrt`, `\\pi`, a leading `x =`,
  and trailing units after a space; an answer with `%` matches when either its value or value/100 does.
  Gold `True`/`False` accept true/false/yes/no; a gold list `[a, b]` needs the same length and each element
  within tolerance; anything else (options like `(b)`) is compared case-insensitively without brackets.
- `tools`: one call `name(param=value, ...)`; correct when the tool name is equal and the parameters are
  equal as parsed Python values (order irrelevant, `3 == 3.0`, `"3" != 3`, strings compared exactly after
  stripping). The gold `NO_TOOL` means no tool should be called: any non-empty answer without a call is
  correct. The release is more lenient (case-insensitive, gold parameters a subset of the answer's).
"""

from __future__ import annotations

import ast
import functools
import io
import json
import keyword
import math
import re
import threading
import tokenize
from typing import Any

from drift_lite.errors import UserError
from drift_lite.tasks.base import Checker, ExactChecker, exact_normalize

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


# ---------------------------------------------------------------------------------------------- tools

NO_TOOL = "(no tool call)"  # gold of a request that must be answered without calling a tool
_CALL_LIKE = re.compile(r"[A-Za-z_][\w.]*\s*\(")
_JSON_NAMES = {"true": True, "false": False, "null": None}


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _value(node: ast.AST) -> Any:
    if isinstance(node, ast.Name):  # JSON spellings, and unquoted words taken as strings
        return _JSON_NAMES.get(node.id, node.id)
    if isinstance(node, ast.List | ast.Tuple):
        return [_value(item) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {_value(k) if k is not None else None: _value(v) for k, v in zip(node.keys, node.values)}
    return ast.literal_eval(node)


def _rename_keywords(text: str) -> tuple[str, dict[str, str]]:
    """Rename parameters spelled as Python keywords (`from=`, `class=`) so that `ast` can parse the call."""
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)]
    except (tokenize.TokenError, SyntaxError):
        return text, {}
    renamed: dict[str, str] = {}
    out = []
    for k, tok in enumerate(tokens):
        after = tokens[k + 1] if k + 1 < len(tokens) else None
        before = tokens[k - 1] if k > 0 else None
        if (
            tok.type == tokenize.NAME
            and keyword.iskeyword(tok.string)
            and after is not None
            and after.string == "="
            and before is not None
            and before.string in ("(", ",")
        ):
            new = f"_kw_{tok.string}"
            renamed[new] = tok.string
            tok = tok._replace(string=new)
        out.append((tok.type, tok.string))
    return (tokenize.untokenize(out), renamed) if renamed else (text, {})


def parse_call(text: str) -> tuple[str, dict[str, Any]] | None:
    """`name(param=value, ...)` as (name, {param: value}); None when it is not exactly one such call."""
    text = text.strip().strip("`").strip()
    if not text:
        return None
    renamed: dict[str, str] = {}
    try:
        node = ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError):
        text, renamed = _rename_keywords(text)
        if not renamed:
            return None
        try:
            node = ast.parse(text, mode="eval").body
        except (SyntaxError, ValueError):
            return None
    if not isinstance(node, ast.Call) or node.args or any(kw.arg is None for kw in node.keywords):
        return None
    name = _dotted(node.func)
    if name is None:
        return None
    try:
        arguments = {renamed.get(kw.arg, kw.arg): _value(kw.value) for kw in node.keywords}
    except (ValueError, TypeError, SyntaxError):
        return None
    if len(arguments) != len(node.keywords):
        return None
    return name, arguments


def format_call(name: str, arguments: dict[str, Any]) -> str:
    """The gold spelling of a call: `name(param=<JSON value>, ...)` in the given parameter order."""
    inner = ", ".join(f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in arguments.items())
    return f"{name}({inner})"


def looks_like_call(text: str) -> bool:
    """True when `text` contains something shaped like a tool call (`word(`)."""
    return bool(_CALL_LIKE.search(text))


def _canon(value: Any) -> Any:
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, list | tuple):
        return [_canon(v) for v in value]
    if isinstance(value, dict):
        return {k: _canon(v) for k, v in value.items()}
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return _canon(a) == _canon(b)


class ToolChecker:
    """Tool calls: same tool name and the same parameters as parsed values, in any order."""

    name = "tools"

    def normalize(self, answer: str) -> str:
        call = parse_call(answer)
        if call is None:
            return exact_normalize(answer)
        name, arguments = call
        return name + json.dumps(_canon(arguments), sort_keys=True, ensure_ascii=False, default=str)

    def is_correct(self, answer: str, gold: str) -> bool:
        if gold.strip() == NO_TOOL:
            return bool(answer.strip()) and not looks_like_call(answer)
        expected, got = parse_call(gold), parse_call(answer)
        if expected is None or got is None or expected[0] != got[0]:
            return False
        want, have = expected[1], got[1]
        return want.keys() == have.keys() and all(_same(want[k], have[k]) for k in want)


# ---------------------------------------------------------------------------------------------- registry

CHECKERS: dict[str, type] = {
    "exact": ExactChecker,
    "math-verify": MathVerifyChecker,
    "letter": LetterChecker,
    "numeric": NumericChecker,
    "tools": ToolChecker,
}


def get_checker(name: str) -> Checker:
    """A checker by name; an unknown name is a UserError listing the known ones."""
    if name not in CHECKERS:
        raise UserError(f"unknown checker '{name}' (known: {', '.join(CHECKERS)})")
    return CHECKERS[name]()
