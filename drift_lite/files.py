"""Files written safely: one atomic writer (temp file, fsync, rename), JSON documents, settings hashes.

Every file the kit writes goes through `atomic_writer`, so a killed process leaves the old file or the new
one, never half of one; `settings_hash` is the one fingerprint of the settings a step's outputs depend on.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from drift_lite.errors import UserError

PathLike = str | os.PathLike[str]


def settings_hash(data: object) -> str:
    """A short, stable hash of JSON-able settings (sorted keys): what a step's outputs depend on."""
    text = json.dumps(data, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_json(path: PathLike) -> object | None:
    """The JSON document at `path`, or None when it is missing or unreadable (a step then reruns)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _parent_of(path: PathLike) -> str:
    return os.path.dirname(os.path.abspath(os.fspath(path)))


def check_output_path(path: PathLike) -> None:
    """Raise UserError unless `path` could be written: its folder exists and it is not a directory."""
    name = os.fspath(path)
    parent = os.path.dirname(name) or "."
    if not os.path.isdir(parent):
        raise UserError(f"{name}: folder '{parent}' does not exist")
    if os.path.isdir(name):
        raise UserError(f"{name}: is a directory, expected a file path")


def _create_temp(target: str) -> tuple[int, str]:
    """Create an exclusive temp file beside `target` (mode from the umask, like a normal new file)."""
    folder, base = os.path.split(os.path.abspath(target))
    while True:
        temp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp
        except FileExistsError:
            continue
        except OSError as exc:
            shown = os.path.dirname(target) or "."
            raise UserError(f"{target}: cannot create a file in '{shown}' ({exc.strerror or exc})") from None


def _fsync_folder(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a directory; the rename itself already happened
    finally:
        os.close(fd)


@contextmanager
def atomic_writer(path: PathLike) -> Iterator[IO[bytes]]:
    """Yield a binary handle on a temp file beside `path`; on success fsync and rename it over `path`.

    On any exception the temp file is removed and `path` is left untouched.
    """
    check_output_path(path)
    target = os.fspath(path)
    fd, temp = _create_temp(target)
    try:
        with os.fdopen(fd, "wb", buffering=1 << 20) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, target)
    except BaseException as exc:
        with suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"{target}: {exc.strerror} (nothing written)") from None
        raise
    _fsync_folder(_parent_of(target))


def write_json_atomic(path: PathLike, data: object) -> None:
    """Write one JSON document (indented, finite numbers only) atomically."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, indent=2) + "\n"
    with atomic_writer(path) as handle:
        handle.write(text.encode("utf-8"))


@contextmanager
def exclusive_lock(target: PathLike, what: str = "run folder") -> Iterator[None]:
    """Hold an exclusive lock on `target` (a folder, or a file's path) for one writer; refuse a second one.

    The lock is an OS advisory lock (`flock`) on `<folder>/.drift-lite.lock` or `<file>.lock`: the OS drops it
    when the process dies, kill -9 included, so a stale lock file never blocks a rerun.
    """
    name = os.fspath(target)
    lock_path = os.path.join(name, ".drift-lite.lock") if os.path.isdir(name) else name + ".lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise UserError(f"{name}: cannot create the lock file {lock_path} ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(
                f"{name}: another drift-lite process (pid {holder}) is writing this {what}; "
                "wait for it to finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temps(folder: PathLike) -> int:
    """Delete temp files (`.NAME.XXXXXXXX.tmp`) a killed writer left in `folder`; return how many.

    Call it only while holding the folder's lock: then no live writer of the kit owns one.
    """
    removed = 0
    with suppress(OSError):
        for entry in os.scandir(folder):
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file():
                with suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def _nearest_existing(path: str) -> str:
    """`path` itself if it exists, else its nearest ancestor that does (a component may be a plain file)."""
    probe = os.path.normpath(path)  # in the user's own spelling (relative stays relative), for messages
    while not os.path.lexists(probe):
        parent = os.path.dirname(probe) or "."
        if parent == probe:
            break
        probe = parent
    return probe


def check_writable_dir(path: PathLike, shown: PathLike | None = None) -> None:
    """Raise UserError (naming `shown`, default `path`, and the reason) unless `path` is, or could be made, a
    writable folder.

    Nothing is left behind: a missing folder is not created; the nearest existing folder on its way gets a
    one-byte probe file (created, written, fsynced and removed), which is what catches a read-only file
    system, a folder without write permission and a full disk, for root as well as anyone else.
    """
    folder = os.fspath(path)
    name = os.fspath(shown) if shown is not None else folder
    existing = _nearest_existing(folder)
    if not os.path.isdir(existing):
        if existing == os.path.normpath(folder) and shown is None:
            raise UserError(f"{name}: exists and is not a folder")
        raise UserError(f"{name}: '{existing}' is not a folder")
    # The probe is named like the atomic writer's temps, so a killed check is cleaned by remove_stale_temps.
    probe = os.path.join(existing, f".drift-lite-probe.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise UserError(f"{name}: cannot write in '{existing}' ({exc.strerror or exc})") from None
    try:
        os.write(fd, b"\n")
        os.fsync(fd)
    except OSError as exc:
        raise UserError(f"{name}: cannot write in '{existing}' ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
        with suppress(OSError):
            os.unlink(probe)


def os_error_line(exc: OSError) -> str:
    """One line for an OSError: the path(s) it names and the reason (`strerror`), without a traceback."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    line = f"{' -> '.join(paths)}: {reason}" if paths else reason
    return " ".join(line.split())


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested settings dicts, sorted."""
    keys = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            keys.append(f"{prefix}{k}")
    return keys
