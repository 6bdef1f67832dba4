"""files.check_writable_dir and files.os_error_line (the additions for one-line write failures)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from drift_lite.errors import UserError
from drift_lite.files import check_writable_dir, os_error_line


def test_a_writable_folder_or_a_creatable_one_passes_and_nothing_is_left(tmp_path: Path):
    check_writable_dir(tmp_path)
    check_writable_dir(tmp_path / "new" / "deeper")
    assert list(tmp_path.iterdir()) == []  # no probe left, and the missing folders were not created


def test_a_path_through_a_plain_file_is_refused(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"x/y: '.*file' is not a folder$"):
        check_writable_dir(tmp_path / "file" / "x" / "y")
    with pytest.raises(UserError, match="exists and is not a folder"):
        check_writable_dir(tmp_path / "file")


# Tests run as root, which ignores chmod: an unwritable folder is simulated by an os.open refusing (EACCES).
def test_an_unwritable_folder_is_refused_with_the_reason(tmp_path: Path, monkeypatch):
    real_open = os.open

    def denied(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(UserError, match=r"out: cannot write in '.*' \(Permission denied\)$"):
        check_writable_dir(tmp_path / "out")


def test_a_full_disk_is_refused_and_the_probe_removed(tmp_path: Path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(UserError, match=r"No space left on device"):
        check_writable_dir(tmp_path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_os_error_line_names_the_paths_and_the_reason():
    assert os_error_line(OSError(errno.EROFS, "Read-only file system", "a/b")) == "a/b: Read-only file system"
    assert (
        os_error_line(OSError(errno.EXDEV, "Cross-device link", "a", None, "b"))
        == "a -> b: Cross-device link"
    )
    assert os_error_line(OSError("two\nlines")) == "two lines"


def test_the_message_can_name_the_file_the_folder_is_checked_for(tmp_path: Path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match=r"^out.jsonl: '.*file' is not a folder$"):
        check_writable_dir(tmp_path / "file", shown="out.jsonl")
