"""Row validation: bad rows go to the dead-letter output and are counted."""

from __future__ import annotations

import datetime as dt
import json

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
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


def test_dead_letters_are_written_as_parquet_with_row_reason_and_step(tmp_path) -> None:
    """TestPipeline -> WriteDeadLetters -> a real Parquet file, and the counters."""
    from pipelines.features import WriteDeadLetters
    from pipelines.tables import DEAD_LETTER_SCHEMA
    from pipelines.validate import STEP_LATENESS, dead_letter_record

    records = [dead_letter_record(row(event_id="bad1", user_id=-1), "negative_user_id"),
               dead_letter_record({**row(event_id="late1"), "_source_file":
                                   "/lake/events/date=2026-01-02/part-x.parquet"},
                                  "late", STEP_LATENESS)]
    target = tmp_path / "dead_letter" / "features" / "run=r7"
    p = BeamTestPipeline()
    _ = p | beam.Create(records) | WriteDeadLetters(str(target), "r7")
    result = p.run()
    result.wait_until_finish()

    files = sorted(target.glob("part-*.parquet"))
    assert [f.name for f in files] == ["part-00000-of-00001.parquet"]
    table = pq.read_table(files[0])
    assert table.schema.remove_metadata().equals(DEAD_LETTER_SCHEMA)
    got = {r["event_id"]: r for r in table.to_pylist()}
    assert got["bad1"]["reason"] == "negative_user_id" and got["bad1"]["step"] == "validate"
    assert json.loads(got["bad1"]["row"])["user_id"] == -1
    assert got["bad1"]["source_file"] is None and got["bad1"]["run_id"] == "r7"
    assert got["late1"]["step"] == "lateness"
    assert got["late1"]["source_file"].endswith("date=2026-01-02/part-x.parquet")
    assert json.loads(got["late1"]["row"])["ts"] == "2026-01-01T01:00:00+00:00"
    counters = {c.key.metric.name: c.committed for c in result.metrics().query(
        MetricsFilter().with_namespace(NAMESPACE))["counters"]}
    assert counters["rows_dead_letter"] == 2
    assert counters["dead_letter_validate"] == 1 and counters["dead_letter_lateness"] == 1


@pytest.mark.parametrize(
    ("ts", "path", "reason"),
    [
        (TS, "/l/events/date=2026-01-01/part-a.parquet", None),
        (TS, "/l/events/date=2026-01-02/part-a.parquet", "late"),
        (TS, "/l/events/date=2025-12-31/part-a.parquet", "ahead_of_partition"),
        (TS, "gs://b/l/events/date=2026-01-02/part-a.parquet", "late"),
        (TS, "/not/a/lake/file.parquet", None),
        (TS, None, None),
    ],
)
def test_lateness_compares_ts_with_the_partition_day(ts, path, reason) -> None:
    from pipelines.validate import check_lateness, partition_day

    assert check_lateness(ts, partition_day(path)) == reason
