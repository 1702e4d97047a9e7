"""Reading lake Parquet batches into rows and validating each row.

Valid rows continue as compact event dicts (``ts_us`` = microseconds since the epoch, UTC;
``day`` = days since the epoch); invalid rows go to the ``dead_letter`` tagged output with the
reason, and both are counted with Beam metrics (``rows_read``, ``rows_valid``, ``rows_bad``,
``bad_<reason>``).
"""

from __future__ import annotations

import json
import logging
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
_EVENT_TYPES = frozenset(t.value for t in EventType)
_TS_TYPE = pa.timestamp("us", tz="UTC")


class ArrowBatchToRows(beam.DoFn):
    """A Parquet record batch (pyarrow Table) -> one dict per row with every EVENT column.

    Columns a file lacks come out as None (the validator rejects such rows); ``ts`` becomes
    integer microseconds since the epoch, or None when a value cannot be read as a timestamp.
    The conversion is columnar, so it costs little per row.
    """

    def process(self, table: pa.Table) -> Iterator[dict[str, Any]]:
        columns: dict[str, list[Any]] = {}
        for name in EVENT_COLUMNS:
            if name not in table.column_names:
                columns[name] = [None] * table.num_rows
            elif name == "ts":
                columns[name] = _ts_micros(table[name])
            else:
                columns[name] = table[name].to_pylist()
        for values in zip(*(columns[name] for name in EVENT_COLUMNS)):
            yield dict(zip(EVENT_COLUMNS, values))


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


class ValidateEvent(beam.DoFn):
    """Raw row -> event dict (main output) or dead-letter record (``DEAD_LETTER`` output)."""

    def __init__(self) -> None:
        self.rows_read = Metrics.counter(NAMESPACE, "rows_read")
        self.rows_valid = Metrics.counter(NAMESPACE, "rows_valid")
        self.rows_bad = Metrics.counter(NAMESPACE, "rows_bad")

    def process(self, row: dict[str, Any]) -> Iterator[Any]:
        self.rows_read.inc()
        reason = check_event(row)
        if reason is not None:
            self.rows_bad.inc()
            Metrics.counter(NAMESPACE, f"bad_{reason}").inc()
            yield beam.pvalue.TaggedOutput(DEAD_LETTER, dead_letter_record(row, reason))
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


def dead_letter_record(row: dict[str, Any], reason: str) -> dict[str, str]:
    """What the dead-letter file keeps of a bad row: why, and the row as JSON."""
    return {"reason": reason, "row": json.dumps(row, default=str, sort_keys=True)}
