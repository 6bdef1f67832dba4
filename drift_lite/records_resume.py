"""Resuming an append-mode rollout file: keep its complete groups, drop a torn last line and a short group."""

from __future__ import annotations

import os

from drift_lite.errors import UserError
from drift_lite.files import PathLike
from drift_lite.records import open_for_reading, parse_json_line, validate_row


def read_complete_groups(path: PathLike, group_size: int) -> list[dict]:
    """Keep the complete groups of an append-mode file: drop a torn last line and a trailing short group.

    Rows must come in contiguous groups of `group_size` rows sharing a `prompt_id`, as RowAppender writes
    them. The file is truncated to the kept prefix. A missing file gives []. A bad line before the tail, a
    short group before the tail or a prompt in two groups is a UserError (the file was not written that way).
    """
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    name = os.fspath(path)
    if not os.path.exists(name):
        return []
    kept, clean_end = _scan_groups(name, group_size)
    if clean_end < os.path.getsize(name):
        with open(name, "r+b") as handle:
            handle.truncate(clean_end)
            handle.flush()
            os.fsync(handle.fileno())
    return kept


def _last_content_line(lines: list[bytes]) -> int:
    """1-based number of the last non-blank line (0 if none)."""
    for index in range(len(lines) - 1, -1, -1):
        if not lines[index].isspace():
            return index + 1
    return 0


def _is_whole_json_line(raw: bytes) -> bool:
    if not raw.endswith(b"\n"):
        return False
    try:
        parse_json_line(raw, "")
    except UserError:
        return False
    return True


def _scan_groups(name: str, group_size: int) -> tuple[list[dict], int]:
    """(rows of the complete groups, byte offset where they end)."""
    kept: list[dict] = []
    group: list[dict] = []
    done: set[str] = set()
    offset = clean_end = 0
    with open_for_reading(name) as handle:
        lines = handle.readlines()
    last = _last_content_line(lines)
    for lineno, raw in enumerate(lines, 1):
        offset += len(raw)
        if raw.isspace():
            continue
        where = f"{name}:{lineno}"
        if lineno == last and not _is_whole_json_line(raw):
            break  # torn by a kill during the last write
        row = validate_row(parse_json_line(raw, where), where)
        pid = row["prompt_id"]
        if group and pid != group[0]["prompt_id"]:
            raise UserError(
                f"{where}: group '{group[0]['prompt_id']}' has {len(group)} rows, expected {group_size}"
            )
        if pid in done:
            raise UserError(f"{where}: prompt '{pid}' appears in two groups")
        group.append(row)
        if len(group) == group_size:
            kept.extend(group)
            done.add(pid)
            group = []
            clean_end = offset
    return kept, clean_end
