"""Reading lake Parquet batches into rows and validating each row.

Valid rows continue as compact event dicts (``ts_us`` = microseconds since the epoch, UTC;
``day`` = days since the epoch); invalid rows go to the ``dead_letter`` tagged output as a
record with the original row, the reason and the step that rejected it, and both are counted
with Beam metrics (``rows_read``, ``rows_valid``, ``rows_bad``, ``bad_<reason>``).

Two steps reject rows: ``validate`` (a field is missing, negative, of the wrong type or an
unknown event type) and ``lateness``: an event whose ``ts`` falls on another day than the lake
partition it is stored in (``late``: before it, i.e. written after its own day's partition;
``ahead_of_partition``: after it). The lake's writers partition by ``ts``, so such a row came
from a foreign writer; it cannot be processed consistently either, because an incremental run
recomputes the snapshots from the first changed *partition* day and would never revisit the
event's own day.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from recstack.schemas import EVENT_COLUMNS, EventType

logger = logging.getLogger(__name__)

NAMESPACE = "recstack.pipelines"
DEAD_LETTER = "dead_letter"
US_PER_DAY = 86_400_000_000
SOURCE_FILE = "_source_file"  # the lake file a raw row came from (not an event column)
STEP_VALIDATE = "validate"
STEP_LATENESS = "lateness"
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_PARTITION_DAY = re.compile(r"date=(\d{4}-\d{2}-\d{2})[/\\]")
_EVENT_TYPES = frozenset(t.value for t in EventType)
_TS_TYPE = pa.timestamp("us", tz="UTC")


class ArrowBatchToRows(beam.DoFn):
    """A Parquet record batch (pyarrow Table, or (file name, Table) as read with
    ``with_filename=True``) -> one dict per row with every EVENT column (and ``SOURCE_FILE``
    when the file is known).

    Columns a file lacks come out as None (the validator rejects such rows unless the column is
    nullable, as ``arm`` in lakes written before it existed); ``ts`` becomes integer
    microseconds since the epoch, or None when a value cannot be read as a timestamp. The
    conversion is columnar, so it costs little per row.
    """

    def process(self, element: pa.Table | tuple[str, pa.Table]) -> Iterator[dict[str, Any]]:
        source, table = element if isinstance(element, tuple) else (None, element)
        columns: dict[str, list[Any]] = {}
        for name in EVENT_COLUMNS:
            if name not in table.column_names:
                columns[name] = [None] * table.num_rows
            elif name == "ts":
                columns[name] = _ts_micros(table[name])
            else:
                columns[name] = table[name].to_pylist()
        for values in zip(*(columns[name] for name in EVENT_COLUMNS)):
            row = dict(zip(EVENT_COLUMNS, values))
            if source is not None:
                row[SOURCE_FILE] = source
            yield row


def _ts_micros(column: pa.ChunkedArray) -> list[int | None]:
    """A timestamp column of any unit (naive = UTC) as epoch microseconds; None if unreadable."""
    try:
        if not pa.types.is_timestamp(column.type):
            raise TypeError(column.type)
        ts = column if column.type.tz is not None else pc.assume_timezone(column, "UTC")
        return pc.cast(pc.cast(ts, _TS_TYPE), pa.int64()).to_pylist()
    except (TypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return [None] * len(column)


def check_event(row: dict[str, Any]) -> str | None:
    """The reason ``row`` is not a usable event, or None when it is."""
    event_id = row.get("event_id")
    if not isinstance(event_id, str) or not event_id:
        return "missing_event_id"
    ts = row.get("ts")
    if ts is None:
        return "null_ts"
    if not isinstance(ts, int) or isinstance(ts, bool):
        return "bad_ts"
    for key in ("user_id", "item_id"):
        value = row.get(key)
        if value is None:
            return f"missing_{key}"
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"negative_{key}"
    if row.get("event_type") not in _EVENT_TYPES:
        return "unknown_event_type"
    position = row.get("position")
    if position is not None and (not isinstance(position, int) or position < 0):
        return "negative_position"
    request_id = row.get("request_id")
    if request_id is not None and not isinstance(request_id, str):
        return "bad_request_id"
    return None


def partition_day(path: str | None) -> int | None:
    """The epoch day of the lake partition (``.../date=YYYY-MM-DD/part-*``) holding ``path``."""
    m = _PARTITION_DAY.search(path or "")
    if m is None:
        return None
    return (dt.date.fromisoformat(m.group(1)) - _EPOCH.date()).days


def check_lateness(ts_us: int, partition: int | None) -> str | None:
    """``late`` / ``ahead_of_partition`` when ``ts`` is not on the partition's day."""
    if partition is None:
        return None
    day = ts_us // US_PER_DAY
    if day < partition:
        return "late"
    if day > partition:
        return "ahead_of_partition"
    return None


class ValidateEvent(beam.DoFn):
    """Raw row -> event dict (main output) or dead-letter record (``DEAD_LETTER`` output).

    ``report_from`` (epoch day): a bad row of a partition *before* that day is dropped and
    counted as ``rows_bad_reread`` only. A run re-reads earlier, unchanged partitions for its
    windows; the run that first processed them has dead-lettered their bad rows already, so a
    bad row is reported once, not once per run whose window covers it.
    """

    def __init__(self, report_from: int | None = None) -> None:
        self.report_from = report_from
        self.rows_read = Metrics.counter(NAMESPACE, "rows_read")
        self.rows_valid = Metrics.counter(NAMESPACE, "rows_valid")
        self.rows_bad = Metrics.counter(NAMESPACE, "rows_bad")
        self.rows_bad_reread = Metrics.counter(NAMESPACE, "rows_bad_reread")
        self._days: dict[str | None, int | None] = {}  # file -> partition day, per instance

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        self.rows_read.inc()
        source = row.get(SOURCE_FILE)
        if source not in self._days:
            self._days[source] = partition_day(source)
        day = self._days[source]
        step, reason = STEP_VALIDATE, check_event(row)
        if reason is None:
            step, reason = STEP_LATENESS, check_lateness(row["ts"], day)
        if reason is not None:
            if self.report_from is not None and day is not None and day < self.report_from:
                self.rows_bad_reread.inc()
                return
            self.rows_bad.inc()
            Metrics.counter(NAMESPACE, f"bad_{reason}").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter_record(row, reason, step))
            return
        self.rows_valid.inc()
        ts_us = row["ts"]
        yield {
            "event_id": row["event_id"],
            "ts_us": ts_us,
            "day": ts_us // US_PER_DAY,
            "user_id": row["user_id"],
            "item_id": row["item_id"],
            "event_type": row["event_type"],
            "request_id": row.get("request_id"),
            "position": row.get("position"),
        }


def dead_letter_record(row: dict[str, Any], reason: str, step: str = STEP_VALIDATE
                       ) -> dict[str, str | None]:
    """What the dead-letter output keeps of a bad row: the step that rejected it, why, the lake
    file it came from, its event_id (when a string) and the original row as JSON (``ts`` as an
    ISO time when it could be read)."""
    original = {k: v for k, v in row.items() if k != SOURCE_FILE}
    ts = original.get("ts")
    if isinstance(ts, int) and not isinstance(ts, bool):
        try:
            original["ts"] = (_EPOCH + dt.timedelta(microseconds=ts)).isoformat()
        except OverflowError:  # beyond datetime's range: keep the microseconds
            pass
    event_id = original.get("event_id")
    return {
        "step": step,
        "reason": reason,
        "source_file": row.get(SOURCE_FILE),
        "event_id": event_id if isinstance(event_id, str) else None,
        "row": json.dumps(original, default=str, sort_keys=True),
    }
