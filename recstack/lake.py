"""The event lake: Parquet files partitioned by day, ``events/date=YYYY-MM-DD/part-*.parquet``.

Writes are idempotent on ``event_id``: a part file is named after its content's batch key, and
rewriting the same batch replaces the same file; readers de-duplicate on ``event_id``.

Partitions (or part files) judged unusable - outside the lake's plausible day range, unreadable,
of another schema - are never deleted: they move to ``quarantine/<tag>/events/date=.../``
(``tag`` = the pipeline run or the ``recstack lake check`` that moved them), with a
``quarantine.json`` saying why; moving them back under ``events/`` restores them.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from recstack.schemas import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA

EVENTS = "events"
QUARANTINE = "quarantine"
QUARANTINE_RECORD = "quarantine.json"
ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"  # the user profile (USER_SCHEMA); optional


def partition_dir(lake_dir: Path, day: dt.date) -> Path:
    return Path(lake_dir) / EVENTS / f"date={day.isoformat()}"


def quarantine_dir(lake_dir: Path, tag: str) -> Path:
    """Where ``tag``'s quarantined lake files go: ``<lake>/quarantine/<tag>``."""
    return Path(lake_dir) / QUARANTINE / tag


def quarantine(lake_dir: Path, path: Path, tag: str) -> Path:
    """Move ``path`` (a partition directory or a part file under ``<lake>/events``) to the same
    place under ``quarantine/<tag>/``; returns where it went. A rename: nothing is copied or lost.
    """
    relative = Path(path).resolve().relative_to(Path(lake_dir).resolve())
    target = quarantine_dir(lake_dir, tag) / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # the same tag quarantined this name before: keep both
        target = target.with_name(f"{target.name}.{len(list(target.parent.iterdir()))}")
    Path(path).replace(target)
    return target


def record_quarantine(lake_dir: Path, tag: str, entries: list[dict[str, Any]]) -> Path:
    """Append ``entries`` (what was moved and why) to ``quarantine/<tag>/quarantine.json``."""
    record = quarantine_dir(lake_dir, tag) / QUARANTINE_RECORD
    old = json.loads(record.read_text()) if record.exists() else []
    record.parent.mkdir(parents=True, exist_ok=True)
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps([*old, *entries], indent=2, default=str))
    tmp.replace(record)
    return record


def with_event_columns(table: pa.Table) -> pa.Table:
    """``table`` as EVENT_SCHEMA: missing nullable columns (e.g. ``arm`` outside experiments)
    are added as nulls, extra columns dropped, types cast."""
    for field in EVENT_SCHEMA:
        if field.name not in table.column_names:
            if not field.nullable:
                raise ValueError(f"event table lacks the required column {field.name!r}")
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(EVENT_SCHEMA.names).cast(EVENT_SCHEMA)


def write_events(table: pa.Table, lake_dir: Path, batch_key: str) -> list[Path]:
    """Write ``table`` (EVENT_SCHEMA) into its day partitions as ``part-<batch_key>.parquet``.

    Returns the files written. The same ``batch_key`` overwrites the same files, so a retried
    write does not duplicate events.
    """
    table = with_event_columns(table)
    days = pc.cast(pc.cast(table["ts"], pa.timestamp("us")), pa.date32())
    written = []
    for day in pc.unique(days).to_pylist():
        part = table.filter(pc.equal(days, pa.scalar(day, pa.date32())))
        out = partition_dir(lake_dir, day)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"part-{batch_key}.parquet"
        tmp = path.with_suffix(".tmp")
        pq.write_table(part, tmp, compression="zstd")
        tmp.replace(path)  # atomic: readers never see half a file
        written.append(path)
    return written


def list_days(lake_dir: Path) -> list[dt.date]:
    """The days that have a partition, oldest first."""
    root = Path(lake_dir) / EVENTS
    if not root.exists():
        return []
    return sorted(
        dt.date.fromisoformat(p.name.removeprefix("date="))
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith("date=")
    )


def partition_files(lake_dir: Path, days: list[dt.date] | None = None) -> list[Path]:
    """Parquet files of the given days (all days when None)."""
    days = list_days(lake_dir) if days is None else days
    files: list[Path] = []
    for day in days:
        files.extend(sorted(partition_dir(lake_dir, day).glob("part-*.parquet")))
    return files


def read_events(lake_dir: Path, days: list[dt.date] | None = None) -> pa.Table:
    """All events of the given days, de-duplicated on ``event_id``."""
    files = partition_files(lake_dir, days)
    if not files:
        return EVENT_SCHEMA.empty_table()
    table = ds.dataset([str(f) for f in files], format="parquet", schema=EVENT_SCHEMA).to_table()
    if table.num_rows == 0:
        return table
    return table.take(_first_occurrences(table["event_id"]))


def _first_occurrences(column: pa.ChunkedArray) -> pa.Array:
    """Indices of the first row of each distinct value, in row order."""
    rows = pa.array(np.arange(len(column), dtype=np.int64))
    firsts = (
        pa.table({"k": column, "i": rows})
        .group_by("k", use_threads=False)
        .aggregate([("i", "min")])["i_min"]
    )
    return pa.array(np.sort(firsts.to_numpy()))


def _write_side_table(table: pa.Table, path: Path, schema: pa.Schema) -> Path:
    """Write a table beside the events (atomically: a temporary file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    pq.write_table(table.select(schema.names).cast(schema), tmp)
    tmp.replace(path)
    return path


def _read_side_table(path: Path, schema: pa.Schema) -> pa.Table:
    return pq.read_table(path) if path.exists() else schema.empty_table()


def write_items(table: pa.Table, lake_dir: Path) -> Path:
    """Write the item catalogue (ITEM_SCHEMA) next to the events."""
    return _write_side_table(table, Path(lake_dir) / ITEMS_FILE, ITEM_SCHEMA)


def read_items(lake_dir: Path) -> pa.Table:
    return _read_side_table(Path(lake_dir) / ITEMS_FILE, ITEM_SCHEMA)


def write_users(table: pa.Table, lake_dir: Path) -> Path:
    """Write the user profile (USER_SCHEMA) next to the events."""
    return _write_side_table(table, Path(lake_dir) / USERS_FILE, USER_SCHEMA)


def read_users(lake_dir: Path) -> pa.Table:
    """The user profile, or an empty table when the lake has none (e.g. an import)."""
    return _read_side_table(Path(lake_dir) / USERS_FILE, USER_SCHEMA)
