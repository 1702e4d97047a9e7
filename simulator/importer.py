"""Real interaction data into the lake: CSV/TSV/Parquet rows of (user, item, timestamp[, rating]).

Each valid row becomes one request of one item shown at position 0: an ``impression`` event,
plus a ``click`` event at the same time when the interaction counts as positive. **Ratings**:
with a rating column, ``rating >= click_threshold`` is a click and a lower rating is an
impression without a click (a negative label); without a rating column every interaction is a
click. MovieLens (``--format movielens``: ``u.data``, tab-separated ``user item rating
timestamp``, no header, epoch seconds) uses threshold 4 of 5. ``request_id`` is
``import-<line>`` and ``model_version`` ``import:<file name>``, so every pipeline and training
step reads the result unchanged. The catalogue (``items.parquet``) lists every item with
category 0 (unknown) and ``created_at`` one second before its first interaction.

Bad rows (wrong column count, missing or non-integer ids, negative ids, unreadable timestamps
or ratings) are skipped, counted by reason, and written with their line number to a dead-letter
file (JSON lines), never silently dropped. Like ``recstack simulate``, an import **replaces the
lake** (and removes the simulated world, which would not describe these users); it is built in
a staging directory first, so a failed import leaves the old lake as it was.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import logging
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recstack import lake
from recstack.schemas import EVENT_SCHEMA, ITEM_SCHEMA, EventType
from recstack.settings import Settings
from simulator.generate import WORLD_DIR, clear_lake

logger = logging.getLogger(__name__)

FORMATS = ("auto", "csv", "tsv", "parquet", "movielens")
TS_UNITS = ("auto", "s", "ms", "us", "iso")
CHUNK_ROWS = 500_000  # valid rows per lake write: bounds memory for large files
_US = {"s": 1_000_000, "ms": 1_000, "us": 1}
_EXAMPLES = 5  # bad rows quoted in the summary


class ImportFailed(ValueError):
    """The file cannot be imported at all (missing, unreadable, no usable row)."""


@dataclass(frozen=True)
class ImportOptions:
    """How to read an interactions file. Columns are names, or 0-based indices without a header."""

    format: str = "auto"
    user_col: str = "user_id"
    item_col: str = "item_id"
    ts_col: str = "timestamp"
    rating_col: str | None = None
    header: bool = True
    delimiter: str | None = None  # default: "," for csv, tab for tsv
    ts_unit: str = "auto"  # integers: auto picks s/ms/us by magnitude; strings: ISO 8601
    click_threshold: float = 4.0

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ImportFailed(f"unknown format {self.format!r}; one of {', '.join(FORMATS)}")
        if self.ts_unit not in TS_UNITS:
            raise ImportFailed(f"unknown ts unit {self.ts_unit!r}; one of {', '.join(TS_UNITS)}")


MOVIELENS = ImportOptions(
    format="tsv", user_col="0", item_col="1", rating_col="2", ts_col="3", header=False,
    ts_unit="s", click_threshold=4.0,
)


# u.data's rows: user, item, rating, timestamp; tab-separated integers, no header.
_MOVIELENS_ROW = re.compile(r"\d+\t\d+\t\d+(\.\d+)?\t\d+")


def resolve_options(path: Path, options: ImportOptions) -> ImportOptions:
    """Apply the movielens preset (a MovieLens ``u.data`` is recognised by its first line for
    ``auto``) and guess csv/tsv/parquet from the suffix otherwise."""
    if options.format == "movielens" or (options.format == "auto" and looks_like_movielens(path)):
        return with_preset(MOVIELENS, options)
    if options.format != "auto":
        return options
    suffix = path.suffix.lower()
    fmt = "parquet" if suffix in (".parquet", ".pq") else "tsv" if suffix in (".tsv", ".tab") else "csv"
    return replace(options, format=fmt)


def with_preset(preset: ImportOptions, options: ImportOptions) -> ImportOptions:
    """``preset``, except where ``options`` differs from the defaults: what the user gave wins
    (``--format movielens --click-threshold 5`` keeps the 5)."""
    default = ImportOptions()
    given = {f.name: getattr(options, f.name) for f in fields(ImportOptions)
             if f.name != "format" and getattr(options, f.name) != getattr(default, f.name)}
    return replace(preset, **given)


def looks_like_movielens(path: Path) -> bool:
    """The first non-blank line is four tab-separated integers (the rating may be a decimal)."""
    if path.suffix.lower() in (".parquet", ".pq") or not path.is_file():
        return False
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                return _MOVIELENS_ROW.fullmatch(line.strip()) is not None
    return False


@dataclass
class ImportSummary:
    """What an import read, wrote and rejected."""

    source: Path
    rows_read: int = 0
    rows_imported: int = 0
    rows_bad: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)
    bad_examples: list[str] = field(default_factory=list)  # "line N: reason"
    impressions: int = 0
    clicks: int = 0
    n_users: int = 0
    n_items: int = 0
    first_day: dt.date | None = None
    last_day: dt.date | None = None
    dead_letter: Path | None = None
    files: list[Path] = field(default_factory=list)


def dead_letter_path(settings: Settings, source: Path) -> Path:
    """Where the bad rows of ``source`` are written: ``$RECSTACK_HOME/import/<name>.bad.jsonl``."""
    return settings.root / "import" / f"{source.name}.bad.jsonl"


def import_interactions(
    settings: Settings, source: Path, options: ImportOptions = ImportOptions()
) -> ImportSummary:
    """Import ``source`` into ``settings.lake_dir`` (replacing the lake); see the module docstring.

    In: an interactions file and how to read it. Out: day partitions
    ``events/date=.../part-import-<chunk>.parquet`` and ``items.parquet``; the bad rows in
    :func:`dead_letter_path`. Raises ImportFailed when the file is unusable or has no valid row.
    """
    source = Path(source)
    if not source.is_file():
        raise ImportFailed(f"no such file: {source}")
    opts = resolve_options(source, options)
    summary = ImportSummary(source=source)
    staging = settings.lake_dir.parent / f".{settings.lake_dir.name}-import"
    shutil.rmtree(staging, ignore_errors=True)
    bad_path = dead_letter_path(settings, source)
    bad_path.parent.mkdir(parents=True, exist_ok=True)
    reasons: Counter[str] = Counter()
    first_seen: dict[int, int] = {}  # item -> first interaction (epoch µs)
    users: set[int] = set()
    model_version = f"import:{source.name}"[:128]
    chunk: list[tuple[int, int, int, int, bool]] = []  # line, user, item, ts_us, click
    n_chunks = 0
    try:
        with bad_path.open("w") as bad:
            for line, raw, values in _rows(source, opts):
                summary.rows_read += 1
                parsed = _parse(values, opts) if isinstance(values, dict) else values
                if isinstance(parsed, str):
                    reasons[parsed] += 1
                    bad.write(json.dumps({"line": line, "reason": parsed, "row": raw}) + "\n")
                    if len(summary.bad_examples) < _EXAMPLES:
                        summary.bad_examples.append(f"line {line}: {parsed}: {raw[:80]}")
                    continue
                user, item, ts_us, click = parsed
                chunk.append((line, user, item, ts_us, click))
                users.add(user)
                if ts_us < first_seen.get(item, ts_us + 1):
                    first_seen[item] = ts_us
                if len(chunk) >= CHUNK_ROWS:
                    _write_chunk(chunk, staging, n_chunks, model_version, summary)
                    chunk, n_chunks = [], n_chunks + 1
            if chunk:
                _write_chunk(chunk, staging, n_chunks, model_version, summary)
        summary.rows_bad = sum(reasons.values())
        summary.bad_by_reason = dict(reasons.most_common())
        summary.dead_letter = bad_path if summary.rows_bad else None
        if not summary.rows_bad:
            bad_path.unlink()
        if summary.rows_imported == 0:
            examples = "; ".join(summary.bad_examples[:3])
            raise ImportFailed(
                f"{source}: no valid row among {summary.rows_read} ({examples or 'empty file'})"
            )
        lake.write_items(_items(first_seen), staging)
        _swap_into_place(staging, settings)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary.n_users, summary.n_items = len(users), len(first_seen)
    days = lake.list_days(settings.lake_dir)
    summary.first_day, summary.last_day = days[0], days[-1]
    summary.files = lake.partition_files(settings.lake_dir) + [settings.lake_dir / lake.ITEMS_FILE]
    logger.info(
        "imported %d of %d rows from %s (%d bad -> %s)",
        summary.rows_imported, summary.rows_read, source, summary.rows_bad, summary.dead_letter,
    )
    return summary


def _rows(source: Path, opts: ImportOptions) -> Iterator[tuple[int, str, dict[str, Any] | str]]:
    """(line number, raw text, {role: value} or a bad-row reason) for every data row."""
    roles = {"user": opts.user_col, "item": opts.item_col, "ts": opts.ts_col}
    if opts.rating_col is not None:
        roles["rating"] = opts.rating_col
    if opts.format == "parquet":
        yield from _parquet_rows(source, roles)
        return
    delimiter = opts.delimiter or ("\t" if opts.format == "tsv" else ",")
    with source.open(newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f, delimiter=delimiter)
        if opts.header:
            header = next(reader, None)
            if header is None:
                raise ImportFailed(f"{source}: empty file")
            index = _header_index(source, [h.strip() for h in header], roles,
                                  looks_like_movielens(source))
        else:
            index = _position_index(roles)
        width = max(index.values()) + 1
        for values in reader:
            raw = delimiter.join(values)
            if not values or (len(values) == 1 and not values[0].strip()):
                continue  # blank line
            if len(values) < width:
                yield reader.line_num, raw, "wrong_column_count"
                continue
            yield reader.line_num, raw, {role: values[i].strip() for role, i in index.items()}


def _header_index(source: Path, header: list[str], roles: dict[str, str],
                  movielens_like: bool = False) -> dict[str, int]:
    missing = [f"{col!r} ({role})" for role, col in roles.items() if col not in header]
    if missing:
        hint = ("; the file looks like a MovieLens u.data (user, item, rating, timestamp, "
                "tab-separated, no header): use --format movielens" if movielens_like else "")
        raise ImportFailed(
            f"{source}: no column {', '.join(missing)} in the header {header}; map columns with "
            f"--user-col/--item-col/--ts-col/--rating-col{hint}"
        )
    return {role: header.index(col) for role, col in roles.items()}


def _position_index(roles: dict[str, str]) -> dict[str, int]:
    try:
        return {role: int(col) for role, col in roles.items()}
    except ValueError as exc:
        raise ImportFailed(
            f"without a header, columns are 0-based indices (got {list(roles.values())})"
        ) from exc


def _parquet_rows(source: Path, roles: dict[str, str]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ImportFailed(f"{source}: not a readable Parquet file: {exc}") from exc
    names = pf.schema_arrow.names
    missing = [f"{col!r} ({role})" for role, col in roles.items() if col not in names]
    if missing:
        raise ImportFailed(f"{source}: no column {', '.join(missing)} among {names}")
    row = 0
    for batch in pf.iter_batches(columns=list(dict.fromkeys(roles.values())), batch_size=65_536):
        columns = {role: batch.column(col) for role, col in roles.items()}
        for role, column in columns.items():
            if pa.types.is_timestamp(column.type):  # as epoch µs, so one parser serves both
                ts = column if column.type.tz else pc.assume_timezone(column, "UTC")
                columns[role] = pc.cast(pc.cast(ts, pa.timestamp("us", tz="UTC")), pa.int64())
        lists = {role: column.to_pylist() for role, column in columns.items()}
        for values in zip(*lists.values()):
            row += 1
            record = dict(zip(lists.keys(), values))
            if "ts" in record and pa.types.is_timestamp(batch.schema.field(roles["ts"]).type):
                record["ts_us"] = record.pop("ts")
            yield row, json.dumps(record, default=str), record


def _parse(values: dict[str, Any], opts: ImportOptions) -> tuple[int, int, int, bool] | str:
    """(user, item, ts_us, click) of one row, or the reason it is bad."""
    user = _nonnegative_int(values.get("user"))
    if isinstance(user, str):
        return f"{user}_user"
    item = _nonnegative_int(values.get("item"))
    if isinstance(item, str):
        return f"{item}_item"
    ts_us = values["ts_us"] if "ts_us" in values else _ts_us(values.get("ts"), opts.ts_unit)
    if ts_us is None:
        return "bad_timestamp"
    click = True
    if "rating" in values:
        try:
            rating = float(values["rating"])
        except (TypeError, ValueError):
            return "bad_rating"
        if not np.isfinite(rating):
            return "bad_rating"
        click = rating >= opts.click_threshold
    return user, item, ts_us, click


def _nonnegative_int(value: Any) -> int | str:
    if value is None or value == "":
        return "missing"
    try:
        number = int(value) if not isinstance(value, float) else None
    except (TypeError, ValueError):
        number = None
    if number is None:
        if isinstance(value, float) and value.is_integer():
            number = int(value)
        else:
            return "non_integer"
    return number if number >= 0 else "negative"


_MIN_US = 0  # 1970-01-01
_MAX_US = 4_102_444_800 * 1_000_000  # 2100-01-01: later stamps are a unit mistake


def _ts_us(value: Any, unit: str) -> int | None:
    """Epoch microseconds of an integer stamp (s/ms/us) or an ISO 8601 string; None if bad."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    if unit != "iso":
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is not None:
            if unit == "auto":
                unit = "s" if abs(number) < 10**11 else "ms" if abs(number) < 10**14 else "us"
            us = number * _US[unit]
            return us if _MIN_US <= us < _MAX_US else None
        if unit != "auto":
            return None
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    us = int(round(when.timestamp() * 1_000_000))
    return us if _MIN_US <= us < _MAX_US else None


def _write_chunk(
    chunk: list[tuple[int, int, int, int, bool]],
    staging: Path,
    number: int,
    model_version: str,
    summary: ImportSummary,
) -> None:
    """Write one chunk's impression and click events into the staging lake."""
    line, user, item, ts, click = (np.array(c) for c in zip(*chunk))
    click = click.astype(bool)
    n_imp, n_clk = line.shape[0], int(click.sum())
    line_str = pc.cast(pa.array(np.concatenate([line, line[click]])), pa.string())
    request_id = pc.binary_join_element_wise("import-", line_str, "")
    kind = np.concatenate([np.full(n_imp, EventType.IMPRESSION.value), np.full(n_clk, EventType.CLICK.value)])
    kind_arr = pa.array(kind, pa.string())
    table = pa.table(
        {
            "event_id": pc.binary_join_element_wise(request_id, "00", kind_arr, "-"),
            "ts": pa.array(np.concatenate([ts, ts[click]]), pa.timestamp("us", tz="UTC")),
            "user_id": pa.array(np.concatenate([user, user[click]]), pa.int64()),
            "item_id": pa.array(np.concatenate([item, item[click]]), pa.int64()),
            "event_type": kind_arr,
            "request_id": request_id,
            "position": pa.array(np.zeros(n_imp + n_clk, np.int32)),
            "model_version": pa.repeat(pa.scalar(model_version, pa.string()), n_imp + n_clk),
            "arm": pa.nulls(n_imp + n_clk, pa.string()),
        },
        schema=EVENT_SCHEMA,
    )
    order = pc.sort_indices(table, [("ts", "ascending"), ("event_type", "descending")])
    lake.write_events(table.take(order), staging, batch_key=f"import-{number:04d}")
    summary.rows_imported += n_imp
    summary.impressions += n_imp
    summary.clicks += n_clk


def _items(first_seen: dict[int, int]) -> pa.Table:
    ids = np.fromiter(first_seen.keys(), dtype=np.int64, count=len(first_seen))
    created = np.fromiter(first_seen.values(), dtype=np.int64, count=len(first_seen)) - 1_000_000
    order = np.argsort(ids)
    return pa.table(
        {
            "item_id": pa.array(ids[order], pa.int64()),
            "category": pa.array(np.zeros(ids.shape[0], np.int32)),
            "created_at": pa.array(created[order], pa.timestamp("us", tz="UTC")),
        },
        schema=ITEM_SCHEMA,
    )


def _swap_into_place(staging: Path, settings: Settings) -> None:
    """Replace the lake's events and catalogue by the staged ones; drop the simulated world."""
    clear_lake(settings.lake_dir)
    settings.lake_dir.mkdir(parents=True, exist_ok=True)
    (staging / lake.EVENTS).rename(settings.lake_dir / lake.EVENTS)
    (staging / lake.ITEMS_FILE).replace(settings.lake_dir / lake.ITEMS_FILE)
    world = settings.root / WORLD_DIR
    if world.exists():
        shutil.rmtree(world)  # its ids do not describe the imported users and items
