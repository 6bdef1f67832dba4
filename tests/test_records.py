"""The rollout-row schema: validation messages, strict reading, atomic writes, append and resume."""

from __future__ import annotations

import copy
import errno
import json
import os
from pathlib import Path

import pytest

from drift_lite.errors import UserError
from drift_lite.records import (
    RowAppender,
    dumps_row,
    iter_rows,
    validate_row,
    write_rows_atomic,
)
from drift_lite.records_resume import read_complete_groups

DATA = Path(__file__).parent / "data"
FIXTURES = [DATA / "release_rows_full.jsonl", DATA / "release_rows_simple.jsonl"]


def good_row(prompt_id: str = "p0", **extra: object) -> dict:
    """A minimal valid row plus `extra` fields."""
    row = {
        "prompt_id": prompt_id,
        "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"}],
        "turn_rewards": {"t1": 1.0, "t2": 0.0},
    }
    row.update(extra)
    return row


def error_of(row: object) -> str:
    """The message validate_row raises for `row` (which must be invalid)."""
    with pytest.raises(UserError) as info:
        validate_row(row, "rollouts.jsonl:17")
    message = str(info.value)
    assert "\n" not in message
    return message


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------------------
# validate_row


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_release_fixtures_are_valid(fixture: Path) -> None:
    rows = list(iter_rows(fixture))
    assert len(rows) == 48
    assert len({row["prompt_id"] for row in rows}) == 12


def test_brief_examples_verbatim() -> None:
    assert error_of(good_row(turn_rewards=[1.0])) == (
        "rollouts.jsonl:17: field 'turn_rewards': expected an object of t1..tN numbers, got list"
    )
    row = good_row()
    del row["prompt_id"]
    assert error_of(row) == "rollouts.jsonl:17: field 'prompt_id': missing"
    assert error_of([1, 2]) == "rollouts.jsonl:17: expected a JSON object, got list"


@pytest.mark.parametrize("field", ["prompt_id", "messages", "turn_rewards"])
def test_required_fields(field: str) -> None:
    row = good_row()
    del row[field]
    assert error_of(row) == f"rollouts.jsonl:17: field '{field}': missing"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"prompt_id": 3}, "field 'prompt_id': expected a non-empty string, got int"),
        ({"prompt_id": ""}, "field 'prompt_id': expected a non-empty string, got an empty string"),
        (
            {"messages": []},
            "field 'messages': expected a non-empty list of {role, content} objects, got an empty list",
        ),
        (
            {"messages": "hi"},
            "field 'messages': expected a non-empty list of {role, content} objects, got string",
        ),
        ({"messages": ["hi"]}, "field 'messages[0]': expected an object with role and content, got string"),
        ({"messages": [{"role": "user"}]}, "field 'messages[0].content': missing"),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "field 'messages[0].content': expected a string, got int",
        ),
        (
            {"messages": [{"role": None, "content": ""}]},
            "field 'messages[0].role': expected a string, got null",
        ),
        (
            {"turn_rewards": {}},
            "field 'turn_rewards': expected an object of t1..tN numbers, got an empty object",
        ),
        ({"turn_rewards": {"x1": 1.0}}, "field 'turn_rewards': key 'x1' is not a turn key t<k> with k >= 1"),
        ({"turn_rewards": {"t0": 1.0}}, "field 'turn_rewards': key 't0' is not a turn key t<k> with k >= 1"),
        (
            {"turn_rewards": {"t01": 1.0}},
            "field 'turn_rewards': key 't01' is not a turn key t<k> with k >= 1",
        ),
        ({"turn_rewards": {"t1": "1"}}, "field 'turn_rewards.t1': expected a finite number, got string"),
        ({"turn_rewards": {"t1": True}}, "field 'turn_rewards.t1': expected a finite number, got bool"),
        (
            {"turn_rewards": {"t1": float("nan")}},
            "field 'turn_rewards.t1': expected a finite number, got nan",
        ),
        (
            {"turn_rewards": {"t1": float("inf")}},
            "field 'turn_rewards.t1': expected a finite number, got inf",
        ),
        ({"gold": 12}, "field 'gold': expected a string, got int"),
        ({"verifier": {"t1": 2}}, "field 'verifier.t1': expected 0 or 1, got int"),
        ({"verifier": {"t1": True}}, "field 'verifier.t1': expected 0 or 1, got bool"),
        ({"verifier": [0]}, "field 'verifier': expected an object of t1..tN 0|1 values, got list"),
        ({"t_star": 0}, "field 't_star': expected an int >= 1 or null, got 0"),
        ({"t_star": "2"}, "field 't_star': expected an int >= 1 or null, got string"),
        ({"t_star": 2.0}, "field 't_star': expected an int >= 1 or null, got float"),
        ({"answer_norms": "12"}, "field 'answer_norms': expected a list of strings, got string"),
        ({"answer_norms": ["1", 2]}, "field 'answer_norms[1]': expected a string, got int"),
        ({"format_penalty": 0.1}, "field 'format_penalty': expected a finite number <= 0, got 0.1"),
        ({"format_penalty": None}, "field 'format_penalty': expected a finite number <= 0, got null"),
        ({"reward_details": []}, "field 'reward_details': expected an object, got an empty list"),
    ],
)
def test_wrong_types(changes: dict, expected: str) -> None:
    assert error_of(good_row(**changes)) == f"rollouts.jsonl:17: {expected}"


def test_optional_fields_and_extras_accepted() -> None:
    row = good_row(
        gold="2",
        verifier={"t1": 1, "t2": 0},
        t_star=None,
        answer_norms=[],
        format_penalty=0,
        reward_details={},
        task="toy",
        traj_idx=3,
    )
    assert validate_row(row, "x") is row
    assert validate_row(good_row(turn_rewards={"t10": 1, "t9": -0.5}, t_star=10), "x")


# ---------------------------------------------------------------------------------------------------------
# iter_rows


def write_text(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def read_error(path: Path | str) -> str:
    with pytest.raises(UserError) as info:
        list(iter_rows(path))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_iter_rows_skips_blank_lines_and_counts_physical_lines(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    line = json.dumps(good_row())
    write_text(tmp_path / "r.jsonl", f"\ufeff{line}\n\n   \n{line}\r\n")
    assert len(list(iter_rows("r.jsonl"))) == 2
    write_text(tmp_path / "r.jsonl", f'{line}\n\n{{"prompt_id": 1}}\n')
    assert read_error("r.jsonl") == "r.jsonl:3: field 'prompt_id': expected a non-empty string, got int"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"prompt_id": "p",\n',
            "r.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes",
        ),
        ("[1, 2]\n", "r.jsonl:2: expected a JSON object, got list"),
        ('{"a": NaN}\n', "r.jsonl:2: not valid JSON (NaN is not allowed)"),
        ('{"a": Infinity}\n', "r.jsonl:2: not valid JSON (Infinity is not allowed)"),
        ('{"a": -Infinity}\n', "r.jsonl:2: not valid JSON (-Infinity is not allowed)"),
        ('{"a": 1e999}\n', "r.jsonl:2: not valid JSON (number 1e999 is out of range)"),
    ],
)
def test_iter_rows_bad_lines(tmp_path: Path, monkeypatch, text: str, expected: str) -> None:
    monkeypatch.chdir(tmp_path)
    write_text(tmp_path / "r.jsonl", json.dumps(good_row()) + "\n" + text)
    assert read_error("r.jsonl").startswith(expected)


def test_iter_rows_not_utf8(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.jsonl").write_bytes(b'{"prompt_id": "\xff"}\n')
    assert read_error("r.jsonl").startswith("r.jsonl:1: not valid UTF-8")


def test_iter_rows_empty_missing_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_text(tmp_path / "empty.jsonl", "")
    write_text(tmp_path / "blank.jsonl", "\n \n")
    (tmp_path / "folder").mkdir()
    assert read_error("empty.jsonl") == "empty.jsonl: no rows"
    assert read_error("blank.jsonl") == "blank.jsonl: no rows"
    assert read_error("nope.jsonl") == "nope.jsonl: no such file"
    assert read_error("folder") == "folder: is a directory, expected a JSONL file"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_iter_rows_permission_denied(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_text(tmp_path / "r.jsonl", json.dumps(good_row()) + "\n")
    path.chmod(0)
    assert read_error("r.jsonl") == "r.jsonl: permission denied"


# ---------------------------------------------------------------------------------------------------------
# Writing


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda p: p.name)
def test_writer_reproduces_release_bytes(tmp_path: Path, fixture: Path) -> None:
    rows = list(iter_rows(fixture))
    out = tmp_path / "copy.jsonl"
    assert write_rows_atomic(out, rows) == 48
    assert out.read_bytes() == fixture.read_bytes()


def test_dumps_row_is_utf8_insertion_order() -> None:
    row = {"b": "é ≠ 😀", "a": [1, 2.5], "c": None}
    assert dumps_row(row) == '{"b": "é ≠ 😀", "a": [1, 2.5], "c": null}\n'
    with pytest.raises(ValueError):
        dumps_row({"x": float("nan")})


def test_atomic_write_failure_leaves_target_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("sentinel\n")

    def rows():
        yield good_row()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_rows_atomic(target, rows())
    with pytest.raises(ValueError):
        write_rows_atomic(target, [good_row(x=float("nan"))])
    assert target.read_text() == "sentinel\n"
    assert files_in(tmp_path) == ["out.jsonl"]


def test_atomic_write_missing_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^missing/out\.jsonl: folder 'missing' does not exist$"):
        write_rows_atomic("missing/out.jsonl", [good_row()])
    assert files_in(tmp_path) == []


def test_atomic_write_replaces_and_keeps_normal_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("old\n")
    write_rows_atomic(target, [good_row("a"), good_row("b")])
    assert [row["prompt_id"] for row in iter_rows(target)] == ["a", "b"]
    assert target.stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert files_in(tmp_path) == ["out.jsonl"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------------------------------
# Append and resume


def groups(n_groups: int, size: int, start: int = 0) -> list[list[dict]]:
    return [[good_row(f"p{g}", traj_idx=i) for i in range(size)] for g in range(start, start + n_groups)]


def test_appender_writes_whole_groups(tmp_path: Path) -> None:
    path = tmp_path / "roll.jsonl"
    with RowAppender(path) as appender:
        for group in groups(3, 2):
            appender.append_group(group)
        appender.append_group([])
        assert appender.rows_written == 6
    assert [r["prompt_id"] for r in iter_rows(path)] == ["p0", "p0", "p1", "p1", "p2", "p2"]


def test_appender_refuses_torn_file(tmp_path: Path) -> None:
    path = tmp_path / "roll.jsonl"
    path.write_text('{"prompt_id": "p0", "mess')
    with pytest.raises(UserError, match="last line is incomplete"):
        RowAppender(path)
    assert path.read_text() == '{"prompt_id": "p0", "mess'


def test_read_complete_groups_drops_torn_line_and_incomplete_group(tmp_path: Path) -> None:
    path = tmp_path / "roll.jsonl"
    with RowAppender(path) as appender:
        for group in groups(2, 3):
            appender.append_group(group)
    clean = path.read_bytes()
    partial = "".join(dumps_row(row) for row in groups(1, 3, start=2)[0][:2])
    path.write_bytes(clean + partial.encode() + b'{"prompt_id": "p2", "messages": [{"ro')
    kept = read_complete_groups(path, 3)
    assert [row["prompt_id"] for row in kept] == ["p0"] * 3 + ["p1"] * 3
    assert path.read_bytes() == clean
    with RowAppender(path) as appender:  # resuming appends cleanly after the truncation
        appender.append_group(groups(1, 3, start=2)[0])
    assert len(read_complete_groups(path, 3)) == 9


def test_read_complete_groups_torn_line_only_and_unparsable_tail(tmp_path: Path) -> None:
    path = tmp_path / "roll.jsonl"
    full = "".join(dumps_row(row) for group in groups(2, 2) for row in group)
    path.write_text(full + '{"prompt_id": "p2"')
    assert len(read_complete_groups(path, 2)) == 4
    assert path.read_text() == full
    path.write_text(full + "{not json}\n")  # a garbled but terminated last line is dropped too
    assert len(read_complete_groups(path, 2)) == 4
    assert path.read_text() == full
    assert read_complete_groups(path, 2) == [row for group in groups(2, 2) for row in group]
    assert path.read_text() == full


def test_read_complete_groups_missing_and_empty(tmp_path: Path) -> None:
    assert read_complete_groups(tmp_path / "none.jsonl", 4) == []
    assert not (tmp_path / "none.jsonl").exists()
    (tmp_path / "empty.jsonl").write_text("")
    assert read_complete_groups(tmp_path / "empty.jsonl", 4) == []


def test_read_complete_groups_rejects_foreign_layouts(tmp_path: Path) -> None:
    path = tmp_path / "roll.jsonl"
    rows = [good_row("a"), good_row("b"), good_row("b"), good_row("b")]
    path.write_text("".join(dumps_row(row) for row in rows))
    with pytest.raises(UserError, match=r"roll\.jsonl:2: group 'a' has 1 rows, expected 2$"):
        read_complete_groups(path, 2)
    rows = [good_row("a"), good_row("a"), good_row("a"), good_row("a")]
    path.write_text("".join(dumps_row(row) for row in rows))
    with pytest.raises(UserError, match=r"roll\.jsonl:3: prompt 'a' appears in two groups$"):
        read_complete_groups(path, 2)
    before = path.read_bytes()
    path.write_bytes(b"{bad\n" + before)
    with pytest.raises(UserError, match=r"roll\.jsonl:1: not valid JSON"):
        read_complete_groups(path, 2)
    assert path.read_bytes() == b"{bad\n" + before
    with pytest.raises(ValueError):
        read_complete_groups(path, 0)


def test_validate_row_does_not_modify(tmp_path: Path) -> None:
    row = good_row(format_penalty=-0.1)
    before = copy.deepcopy(row)
    validate_row(row, "x")
    assert row == before


def test_atomic_write_disk_full_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "out.jsonl"
    target.write_text("sentinel\n")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(UserError, match=r"out\.jsonl: No space left on device \(nothing written\)$"):
        write_rows_atomic(target, [good_row()])
    assert target.read_text() == "sentinel\n"
    assert files_in(tmp_path) == ["out.jsonl"]


def test_atomic_write_cannot_create_temp(tmp_path: Path, monkeypatch) -> None:
    real_open = os.open

    def refuse_temp(path, flags, mode=0o777, **kwargs):
        if str(path).endswith(".tmp"):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, mode, **kwargs)

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(os, "open", refuse_temp)
    with pytest.raises(UserError, match=r"^out\.jsonl: cannot create a file in '\.' \(Permission denied\)$"):
        write_rows_atomic("out.jsonl", [good_row()])
    assert files_in(tmp_path) == []
