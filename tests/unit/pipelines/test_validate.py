"""Row validation: bad rows go to the dead-letter output and are counted."""

from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.validate import (
    DEAD_LETTER,
    NAMESPACE,
    US_PER_DAY,
    ArrowBatchToRows,
    ValidateEvent,
    check_event,
)

TS = 1_767_225_600_000_000 + 3_600_000_000  # 2026-01-01 01:00 UTC, microseconds


def row(**changes) -> dict:
    good = {"event_id": "e1", "ts": TS, "user_id": 1, "item_id": 2, "event_type": "click",
            "request_id": "r", "position": 3, "model_version": "m"}
    return {**good, **changes}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"request_id": None, "position": None, "event_type": "impression"}, None),
        ({"event_id": None}, "missing_event_id"),
        ({"event_id": ""}, "missing_event_id"),
        ({"ts": None}, "null_ts"),
        ({"ts": "yesterday"}, "bad_ts"),
        ({"user_id": None}, "missing_user_id"),
        ({"item_id": None}, "missing_item_id"),
        ({"user_id": -1}, "negative_user_id"),
        ({"item_id": -5}, "negative_item_id"),
        ({"event_type": "purchase"}, "unknown_event_type"),
        ({"event_type": None}, "unknown_event_type"),
        ({"position": -1}, "negative_position"),
    ],
)
def test_check_event(changes: dict, reason: str | None) -> None:
    assert check_event(row(**changes)) == reason


def test_bad_rows_go_to_the_dead_letter_output_and_are_counted() -> None:
    rows = [row(event_id="ok"), row(event_id="bad1", user_id=-1), row(event_id="bad2", ts=None),
            row(event_id="bad3", user_id=-2)]
    p = BeamTestPipeline()
    out = p | beam.Create(rows) | beam.ParDo(ValidateEvent()).with_outputs(DEAD_LETTER,
                                                                          main="events")
    assert_that(out.events | "Ids" >> beam.Map(lambda e: (e["event_id"], e["ts_us"], e["day"])),
                equal_to([("ok", TS, TS // US_PER_DAY)]), label="valid")
    assert_that(out[DEAD_LETTER] | "Reasons" >> beam.Map(
        lambda d: (d["reason"], json.loads(d["row"])["event_id"])),
        equal_to([("negative_user_id", "bad1"), ("null_ts", "bad2"), ("negative_user_id", "bad3")]),
        label="dead letter")
    result = p.run()
    result.wait_until_finish()
    counters = {c.key.metric.name: c.committed for c in
                result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    assert counters == {"rows_read": 4, "rows_valid": 1, "rows_bad": 3,
                        "bad_negative_user_id": 2, "bad_null_ts": 1}


def test_arrow_batches_become_rows_with_utc_microseconds_and_missing_columns_as_none() -> None:
    naive = pa.table({
        "event_id": ["a"], "ts": pa.array([dt.datetime(2026, 1, 1, 1)], pa.timestamp("ms")),
        "user_id": [1], "item_id": [2], "event_type": ["click"],
    })  # no request_id, position, model_version; a naive millisecond timestamp
    text_ts = pa.table({"event_id": ["b"], "ts": ["2026-01-01"], "user_id": [1], "item_id": [2],
                        "event_type": ["click"]})
    rows = list(ArrowBatchToRows().process(naive)) + list(ArrowBatchToRows().process(text_ts))
    assert rows[0]["ts"] == TS
    assert rows[0]["request_id"] is None and rows[0]["position"] is None
    assert rows[1]["ts"] is None and check_event(rows[1]) == "null_ts"
