"""The rollout-row schema: validate, read (errors name file:line:field), write atomically, append for resume.

Conventions, fixed here for every reader and writer of the kit:

- A file is JSON Lines in UTF-8, one row (a JSON object) per line. A UTF-8 byte-order mark before line 1 is
  ignored. Blank (whitespace-only) lines are skipped by readers, and line numbers in messages are physical
  line numbers, so they match what an editor shows.
- NaN, Infinity and numbers too large for a float are not JSON: readers reject them, the writer never emits
  them.
- The writer emits ``json.dumps(row, ensure_ascii=False)`` plus ``\\n`` per row: keys in insertion order,
  ``", "`` and ``": "`` separators (the release's own layout), so output is deterministic.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from drift_lite.errors import UserError
from drift_lite.files import atomic_writer, check_output_path

PathLike = str | os.PathLike[str]

_BOM = b"\xef\xbb\xbf"
_MAX_INT = 10**300  # beyond this an int no longer converts to a finite float after weighting


class _Bad(Exception):
    """A schema violation inside one row: the field path and what is wrong with it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(field, problem)
        self.field = field
        self.problem = problem


# ---------------------------------------------------------------------------------------------------------
# Small type helpers


def json_type(value: object) -> str:
    """The JSON name of a Python value's type, for error messages (`list`, `object`, `string`, ...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float" if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "an empty list" if not value else "list"
    if isinstance(value, dict):
        return "an empty object" if not value else "object"
    return type(value).__name__


def _short(key: object) -> str:
    """A key quoted on one line and cut to a readable length."""
    text = repr(key)
    return text if len(text) <= 40 else text[:37] + "..."


def is_finite_number(value: object) -> bool:
    """True for an int or float (not a bool) that is finite."""
    if type(value) is float:
        return value - value == 0.0  # false for inf and nan; cheaper than math.isfinite's call
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, int) and not isinstance(value, bool) and -_MAX_INT < value < _MAX_INT


_TURN_CACHE: dict[str, int] = {}


def turn_index(key: object) -> int | None:
    """k for a turn key `t<k>` (k >= 1, no leading zero), else None."""
    cached = _TURN_CACHE.get(key)  # dict keys are always hashable, so no type check is needed first
    if cached is not None:
        return cached
    if not isinstance(key, str) or len(key) < 2 or key[0] != "t":
        return None
    digits = key[1:]
    if not (digits.isascii() and digits.isdigit()) or digits[0] == "0":
        return None
    k = int(digits)
    if k <= 1000:
        _TURN_CACHE[key] = k
    return k


# ---------------------------------------------------------------------------------------------------------
# Field checks: each raises _Bad(field, problem) or returns None


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise _Bad(name, f"expected a string, got {json_type(value)}")


def _check_prompt_id(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        got = "an empty string" if value == "" else json_type(value)
        raise _Bad(name, f"expected a non-empty string, got {got}")


def _check_messages(name: str, value: object) -> None:
    if not isinstance(value, list) or not value:
        raise _Bad(name, f"expected a non-empty list of {{role, content}} objects, got {json_type(value)}")
    for i, message in enumerate(value):
        if type(message) is dict and type(message.get("role")) is str and type(message.get("content")) is str:
            continue  # the common case, checked cheaply; the slow path below names what is wrong
        if not isinstance(message, dict):
            raise _Bad(f"{name}[{i}]", f"expected an object with role and content, got {json_type(message)}")
        for key in ("role", "content"):
            if key not in message:
                raise _Bad(f"{name}[{i}].{key}", "missing")
            if not isinstance(message[key], str):
                raise _Bad(f"{name}[{i}].{key}", f"expected a string, got {json_type(message[key])}")


def _check_turn_map(
    name: str, value: object, items: str, item: str, item_ok: Callable[[object], bool]
) -> None:
    if not isinstance(value, dict) or not value:
        raise _Bad(name, f"expected an object of t1..tN {items}, got {json_type(value)}")
    for key, entry in value.items():
        if key not in _TURN_CACHE and turn_index(key) is None:
            raise _Bad(name, f"key {_short(key)} is not a turn key t<k> with k >= 1")
        if not item_ok(entry):
            raise _Bad(f"{name}.{key}", f"expected {item}, got {json_type(entry)}")


def _check_turn_rewards(name: str, value: object) -> None:
    if type(value) is dict and value:
        for key, entry in value.items():  # fast path for the usual t<k>: float map; the slow one explains
            if key not in _TURN_CACHE or type(entry) is not float or entry - entry != 0.0:
                break
        else:
            return
    _check_turn_map(name, value, "numbers", "a finite number", is_finite_number)


def _is_bit(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value in (0, 1)


def _check_verifier(name: str, value: object) -> None:
    if type(value) is dict and value:
        for key, entry in value.items():  # fast path, as for turn_rewards
            if key not in _TURN_CACHE or type(entry) is not int or (entry != 0 and entry != 1):
                break
        else:
            return
    _check_turn_map(name, value, "0|1 values", "0 or 1", _is_bit)


def _check_t_star(name: str, value: object) -> None:
    if value is None:
        return
    if not isinstance(value, int) or isinstance(value, bool):
        raise _Bad(name, f"expected an int >= 1 or null, got {json_type(value)}")
    if value < 1:
        raise _Bad(name, f"expected an int >= 1 or null, got {value}")


def _check_answer_norms(name: str, value: object) -> None:
    if not isinstance(value, list):
        raise _Bad(name, f"expected a list of strings, got {json_type(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _Bad(f"{name}[{i}]", f"expected a string, got {json_type(item)}")


def _check_format_penalty(name: str, value: object) -> None:
    if not is_finite_number(value):
        raise _Bad(name, f"expected a finite number <= 0, got {json_type(value)}")
    if value > 0:  # type: ignore[operator]
        raise _Bad(name, f"expected a finite number <= 0, got {value}")


def _check_object(name: str, value: object) -> None:
    if not isinstance(value, dict):
        raise _Bad(name, f"expected an object, got {json_type(value)}")


_REQUIRED: tuple[tuple[str, Callable[[str, object], None]], ...] = (
    ("prompt_id", _check_prompt_id),
    ("messages", _check_messages),
    ("turn_rewards", _check_turn_rewards),
)
_OPTIONAL: tuple[tuple[str, Callable[[str, object], None]], ...] = (
    ("gold", _check_str),
    ("verifier", _check_verifier),
    ("t_star", _check_t_star),
    ("answer_norms", _check_answer_norms),
    ("format_penalty", _check_format_penalty),
    ("reward_details", _check_object),
)


def validate_row(row: object, where: str) -> dict:
    """Check one rollout row against the release schema; return it, or raise UserError naming `where`."""
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {json_type(row)}")
    try:
        for name, check in _REQUIRED:
            if name not in row:
                raise _Bad(name, "missing")
            check(name, row[name])
        for name, check in _OPTIONAL:
            if name in row:
                check(name, row[name])
    except _Bad as bad:
        raise UserError(f"{where}: field '{bad.field}': {bad.problem}") from None
    return row


# ---------------------------------------------------------------------------------------------------------
# Reading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _finite_float(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf (nan cannot come from a number literal)
        raise ValueError(f"number {text[:40]} is out of range")
    return value


# One decoder for all lines: json.loads with keyword arguments would build a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_JSON_SPACE = " \t\r\n"


def _decode(text: str) -> object:
    start = 0
    if text[:1] in _JSON_SPACE:
        start = len(text) - len(text.lstrip(_JSON_SPACE))
    value, end = _DECODER.raw_decode(text, start)
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise json.JSONDecodeError("Extra data", text, end)
    return value


def parse_json_line(raw: bytes | str, where: str) -> object:
    """Parse one JSON line strictly (no NaN/Infinity, no out-of-range floats); errors name `where`."""
    # orjson is the fast path (2-3x the stdlib here, and it refuses NaN, Infinity and overflowing numbers by
    # itself); a line it refuses goes through the stdlib decoder below, which accepts what it accepts and
    # words the error the user sees.
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError as exc:
        raise UserError(f"{where}: not valid UTF-8 (bad byte at offset {exc.start})") from None
    try:
        return _decode(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:
        raise UserError(f"{where}: not valid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"{where}: not valid JSON (nested too deeply)") from None


def open_for_reading(path: PathLike) -> IO[bytes]:
    """Open a file in binary mode; a missing, unreadable or directory path is a one-line UserError."""
    name = os.fspath(path)
    try:
        return open(name, "rb")  # noqa: SIM115 - the caller owns the handle
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{name}: is a directory, expected a JSONL file") from None
    except PermissionError:
        raise UserError(f"{name}: permission denied") from None
    except OSError as exc:
        raise UserError(f"{name}: cannot open ({exc.strerror or exc})") from None


def iter_raw_lines(handle: IO[bytes]) -> Iterator[tuple[int, bytes]]:
    """Yield (line number, raw bytes) for each non-blank line of a binary file; strips a leading BOM."""
    first = handle.readline()
    if first.startswith(_BOM):
        first = first[len(_BOM) :]
    if first and not first.isspace():
        yield 1, first
    for lineno, raw in enumerate(handle, 2):
        if not raw.isspace():
            yield lineno, raw


def iter_rows(path: PathLike) -> Iterator[dict]:
    """Stream validated rows of a JSONL file; UserError on the first bad line, or `path: no rows` if empty."""
    name = os.fspath(path)
    count = 0
    with open_for_reading(path) as handle:
        for lineno, raw in iter_raw_lines(handle):
            where = f"{name}:{lineno}"
            yield validate_row(parse_json_line(raw, where), where)
            count += 1
    if count == 0:
        raise UserError(f"{name}: no rows")


# ---------------------------------------------------------------------------------------------------------
# Writing


def dumps_row(row: dict) -> str:
    """One row as one JSON line (with the trailing newline), in the kit's fixed serialization."""
    return json.dumps(row, ensure_ascii=False, allow_nan=False) + "\n"


def write_rows_atomic(path: PathLike, rows: Iterable[dict]) -> int:
    """Write rows as JSONL through a temp file + fsync + rename; return the number written."""
    count = 0
    with atomic_writer(path) as handle:
        for row in rows:
            handle.write(dumps_row(row).encode("utf-8"))
            count += 1
    return count


class RowAppender:
    """Append rows to a JSONL file group by group, each group durable before the next (for resumable runs).

    The file is opened (created if missing) at construction; use it as a context manager or call close().
    """

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        self.rows_written = 0
        check_output_path(self.path)
        if os.path.exists(self.path) and not _ends_with_newline(self.path):
            raise UserError(f"{self.path}: last line is incomplete; resume with read_complete_groups first")
        self._handle: IO[bytes] | None = open(self.path, "ab")  # noqa: SIM115 - closed by close()

    def __enter__(self) -> RowAppender:
        return self

    def append_group(self, rows: Iterable[dict]) -> None:
        """Write all rows of one group in one write call, then flush and fsync."""
        if self._handle is None:
            raise RuntimeError(f"{self.path}: RowAppender is closed")
        lines = [dumps_row(row) for row in rows]
        if not lines:
            return
        self._handle.write("".join(lines).encode("utf-8"))
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.rows_written += len(lines)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ends_with_newline(path: str) -> bool:
    """True for an empty file or one whose last byte is a newline."""
    with open_for_reading(path) as handle:
        if handle.seek(0, os.SEEK_END) == 0:
            return True
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) == b"\n"


def fingerprint_path(out_path: PathLike) -> Path:
    """Where the settings of a rollout file are stored."""
    out_path = Path(out_path)
    return out_path.with_name(out_path.name + ".settings.json")
