"""Reading a task's rows from the hub or a local json / jsonl / csv / parquet file, with one-line errors.

A `source` that names an existing path, or ends in a known extension, is a local file, read with
`datasets.load_dataset("json" | "csv" | "parquet", data_files=path, split="train")`; anything else is a hub
dataset id, read with `datasets.load_dataset(id, config, split=...)`; with HF_HUB_OFFLINE set, or when the hub
does not answer a first probe, only the local `datasets` cache is read, so a missing dataset is a one-line
error at once rather than ~24 s of retries. CSV cells are read as strings, exactly
as written (no type guessing: `007` stays `007`, `NA` stays `NA`).

`limit` draws a seeded sample of N rows (kept in file order) from the rows that pass the task's filter, so
the same (file, limit, seed) always gives the same problems; `limit=None` keeps every row. Row indices in
errors and in ids are 0-based positions in the file (before filtering).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from drift_lite.errors import UserError
from drift_lite.tasks.base import Problem

LOG = logging.getLogger(__name__)

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class HubSpec:
    """Where a task lives on the hub: dataset id, split, and the config names to concatenate."""

    path: str
    split: str
    configs: tuple[str | None, ...] = (None,)
    all_configs: bool = False  # ask the hub for every config name (e.g. MMLU-Redux subjects)


@dataclass
class Table:
    """Rows read from one source: `label` names the source in errors, `configs` the hub config per row."""

    label: str
    data: Any  # datasets.Dataset
    configs: list[str | None]

    def __post_init__(self) -> None:
        self._first: dict[str | None, int] = {}
        for i, config in enumerate(self.configs):
            self._first.setdefault(config, i)

    def __len__(self) -> int:
        return len(self.data)

    def column(self, name: str) -> list:
        """The values of one column (all None when the column does not exist)."""
        if name not in self.data.column_names:
            return [None] * len(self.data)
        return list(self.data[name])

    def row(self, i: int) -> dict:
        """Row `i` as a dict."""
        return dict(self.data[i])

    def key(self, i: int) -> str:
        """A stable name for row `i`: its index, or `<config>-<index in config>` for multi-config hub data."""
        if not self.configs:
            return str(i)
        config = self.configs[i]
        return f"{config}-{i - self._first[config]}"


def is_local(source: str) -> bool:
    """True when `source` names a local file rather than a hub dataset id."""
    return os.path.exists(source) or os.path.splitext(source)[1].lower() in FORMATS


def open_source(source: str, hub: HubSpec) -> Table:
    """Read all rows of a local file (`source` is a path) or of a hub dataset (`source` is its id)."""
    if is_local(source):
        return Table(source, _load_local(source), [])
    return _load_hub(source, hub)


def _load_local(path: str) -> Any:
    import datasets

    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise UserError(f"{path}: unknown file type '{ext}' (use one of {', '.join(sorted(FORMATS))})")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file: no problems")
    kwargs: dict[str, Any] = {}
    if ext == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), None)
        if not header:
            raise UserError(f"{path}: empty CSV file (no header row)")
        kwargs = {
            "features": datasets.Features({name: datasets.Value("string") for name in header}),
            "keep_default_na": False,
            "na_filter": False,
        }
    # datasets pings the hub to count "downloads" of its json/csv/parquet builders, even for local files:
    # offline, that is a DNS wait of seconds per load. A local file has nothing to count.
    counts = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        data = datasets.load_dataset(FORMATS[ext], data_files=os.path.abspath(path), split="train", **kwargs)
    except Exception as exc:  # datasets wraps parse errors; the cause says what went wrong
        raise UserError(f"{path}: cannot read as {FORMATS[ext]}: {_one_line(exc)}") from exc
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = counts
    return _undecode_images(data)


def hub_offline() -> bool:
    """True when the environment asks for no hub access (HF_HUB_OFFLINE, or datasets' HF_DATASETS_OFFLINE).

    Read at call time: `datasets` and `huggingface_hub` read these variables once, when first imported.
    """
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(name, "0").strip().lower() not in ("0", "", "false", "no", "off"):
            return True
    return False


_REACHABLE: dict[str, bool] = {}  # hub endpoint -> answered a probe, once per process


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub endpoint answers one HEAD request (through huggingface_hub's client, so proxies and
    HF_ENDPOINT apply) within `timeout` seconds; the answer is kept for the rest of the process."""
    from huggingface_hub import constants, get_session

    endpoint = constants.ENDPOINT
    if endpoint not in _REACHABLE:
        try:
            get_session().head(endpoint, timeout=timeout)
            _REACHABLE[endpoint] = True
        except Exception:  # any transport failure (DNS, refused, timeout, proxy) means "not reachable"
            _REACHABLE[endpoint] = False
    return _REACHABLE[endpoint]


@contextlib.contextmanager
def _offline_mode(on: bool) -> Iterator[None]:
    """Make `datasets` read only its local cache while inside (its own flags were fixed at import)."""
    if not on:
        yield
        return
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _load_hub(dataset_id: str, hub: HubSpec) -> Table:
    import datasets
    from huggingface_hub import constants

    # Unreachable, the hub client retries each request for ~24 s before failing: decide once, up front, and
    # then read only the local cache (a dataset loaded before still works offline).
    why = None
    if hub_offline() or constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        why = "the hub cannot be reached"
    configs: list[str | None] = list(hub.configs)
    try:
        with _offline_mode(why is not None):
            if hub.all_configs:
                configs = list(datasets.get_dataset_config_names(dataset_id))
            parts = [datasets.load_dataset(dataset_id, config, split=hub.split) for config in configs]
    except Exception as exc:
        if why is not None and isinstance(exc, OSError):  # datasets: ConnectionError "Couldn't reach ..."
            raise UserError(
                f"{dataset_id}: hub dataset not in the local cache and {why}: give the task a local "
                "`source` file in the dataset's schema (small ones ship in data/fixtures/)"
            ) from exc
        raise UserError(f"{dataset_id}: cannot load from the hub: {_one_line(exc)}") from exc
    per_row: list[str | None] = []
    for config, part in zip(configs, parts):
        per_row.extend([config] * len(part))
    data = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return Table(dataset_id, _undecode_images(data), per_row if len(parts) > 1 else [])


def _undecode_images(data: Any) -> Any:
    """Keep image columns (TheoremQA's `Picture`) as raw bytes: decoding needs Pillow and costs time."""
    import datasets

    for name, feature in data.features.items():
        if isinstance(feature, datasets.Image) and feature.decode:
            data = data.cast_column(name, datasets.Image(decode=False))
    return data


def _one_line(exc: BaseException) -> str:
    while exc.__cause__ is not None and not str(exc).strip():
        exc = exc.__cause__
    if "An error occurred while generating the dataset" in str(exc) and exc.__cause__ is not None:
        exc = exc.__cause__
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


def require(label: str, i: int, row: dict, names: list[str]) -> list[Any]:
    """The values of `names` in `row`; a missing (absent, null or blank) one is a one-line UserError."""
    values = []
    for name in names:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            raise UserError(f"{label}: row {i}: field '{name}': missing")
        values.append(value)
    return values


def bad_field(label: str, i: int, name: str, why: str) -> UserError:
    """A one-line error about one field of one row."""
    return UserError(f"{label}: row {i}: field '{name}': {why}")


def collect(
    table: Table,
    keep: list[int],
    limit: int | None,
    seed: int,
    make: Callable[[int, dict], Problem | None],
) -> list[Problem]:
    """Problems from the rows `keep`: all of them, or a seeded sample of `limit`, in file order.

    `make(i, row)` builds one problem or returns None to skip a row whose answer cannot be extracted
    (logged); the sample draws further rows to make up for skipped ones.
    """
    if limit is not None and limit < 0:
        raise UserError(f"limit must be >= 0, got {limit}")
    order = list(keep)
    if limit is not None and limit < len(order):
        random.Random(seed).shuffle(order)
    made: list[tuple[int, Problem]] = []
    skipped = 0
    for i in order:
        if limit is not None and len(made) >= limit:
            break
        problem = make(i, table.row(i))
        if problem is None:
            skipped += 1
        else:
            made.append((i, problem))
    if skipped:
        LOG.warning("%s: skipped %d row(s) without an extractable answer", table.label, skipped)
    if keep and limit != 0 and not made:
        raise UserError(f"{table.label}: no usable rows ({skipped} without an extractable answer)")
    return [problem for _, problem in sorted(made, key=lambda pair: pair[0])]


def resolve(source: str | None, default: str | None, task: str) -> str:
    """The source to read: `source`, else the task's default hub id."""
    if source:
        return source
    if default is None:
        raise UserError(f"task '{task}' has no default hub dataset: pass a source file")
    return default
