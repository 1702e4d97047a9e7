"""The feature pipeline's transforms on hand-made PCollections (Beam TestPipeline)."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.transforms import (
    DailyCounts,
    DailySnapshots,
    DedupeEvents,
    ImpressionLabels,
    PopularItems,
    SpreadToSnapshots,
    epoch_day,
    smoothed_ctr,
    snapshot_days_of,
    snapshot_time,
)
from pipelines.validate import US_PER_DAY

UTC = dt.timezone.utc
D = epoch_day(dt.date(2026, 1, 10))
CREATED = dt.datetime(2026, 2, 1, tzinfo=UTC)


def ev(ts_us: int, user_id: int = 1, item_id: int = 10, event_type: str = "impression",
       request_id: str | None = "r1", position: int | None = 0, event_id: str | None = None) -> dict:
    return {"event_id": event_id or f"{ts_us}-{user_id}-{item_id}-{event_type}-{request_id}",
            "ts_us": ts_us, "day": ts_us // US_PER_DAY, "user_id": user_id, "item_id": item_id,
            "event_type": event_type, "request_id": request_id, "position": position}


def test_smoothed_ctr_shrinks_to_the_prior_and_stays_in_bounds() -> None:
    assert smoothed_ctr(0, 0, 0.05, 20) == pytest.approx(0.05)
    assert smoothed_ctr(1, 1, 0.05, 20) == pytest.approx(2 / 21)  # one lucky click is not 100%
    assert smoothed_ctr(500, 1000, 0.05, 20) == pytest.approx(501 / 1020)
    assert smoothed_ctr(50, 0, 0.05, 20) == 1.0  # clicks without impressions cannot exceed 1


def test_snapshot_days_cover_the_window_within_the_lake() -> None:
    assert list(snapshot_days_of(D, 7, D - 10, D + 10)) == list(range(D, D + 7))
    assert list(snapshot_days_of(D, 7, D + 3, D + 4)) == [D + 3, D + 4]
    assert list(snapshot_days_of(D, 1, D - 1, D + 1)) == [D]
    assert snapshot_time(D) == dt.datetime(2026, 1, 11, tzinfo=UTC)


def test_spread_emits_one_value_per_snapshot_then_a_zero_when_the_day_leaves_the_window() -> None:
    with BeamTestPipeline() as p:
        out = (p | beam.Create([((7, D), (3, 1))])
               | beam.ParDo(SpreadToSnapshots(window_days=3, first=D, last=D + 5)))
        assert_that(out, equal_to([
            ((7, D), (3, 1, 1, 1)),
            ((7, D + 1), (3, 1, 1, 0)),
            ((7, D + 2), (3, 1, 1, 0)),
            ((7, D + 3), (0, 0, 0, 0)),
        ]))


def _snapshots(events: list[dict], key: str, prefix: str, features: list[str], window: int,
               first: int, last: int):
    def build(p):
        return (p | beam.Create(events) | DailyCounts(key)
                | DailySnapshots(key, prefix, features, window_days=window, first=first,
                                 last=last, prior_ctr=0.1, prior_weight=10, created=CREATED))
    return build


def test_window_is_half_open_and_point_in_time_correct() -> None:
    """Snapshot T = end of day D sees events with T - 2d <= ts < T; an event at T is not in it."""
    t = D * US_PER_DAY
    end = (D + 1) * US_PER_DAY  # T of day D
    events = [
        ev(end - 2 * US_PER_DAY),  # first microsecond of the 2-day window: in
        ev(end - 2 * US_PER_DAY - 1),  # one microsecond before it: out
        ev(t + 5, event_type="click"),
        ev(end),  # exactly T: belongs to the next day's snapshot
    ]
    features = ["user_impressions_7d", "user_clicks_7d", "user_ctr_7d", "user_active_days_7d"]
    with BeamTestPipeline() as p:
        rows = _snapshots(events, "user_id", "user", features, window=2, first=D, last=D)(p)
        assert_that(rows, equal_to([{
            "user_id": 1, "user_impressions_7d": 1, "user_clicks_7d": 1,
            "user_ctr_7d": pytest.approx((1 + 1) / (1 + 10)), "user_active_days_7d": 2,
            "event_timestamp": snapshot_time(D), "created": CREATED,
        }]))


def test_item_snapshots_count_last_day_clicks_and_expire_to_zero() -> None:
    day = D * US_PER_DAY
    events = [ev(day + 1, item_id=5), ev(day + 2, item_id=5, event_type="click"),
              ev(day + US_PER_DAY + 1, item_id=5)]
    features = ["item_impressions_7d", "item_clicks_7d", "item_ctr_7d", "item_clicks_1d"]
    with BeamTestPipeline() as p:
        rows = (_snapshots(events, "item_id", "item", features, window=2, first=D, last=D + 3)(p)
                | beam.Map(lambda r: (r["event_timestamp"], r["item_impressions_7d"],
                                      r["item_clicks_7d"], r["item_clicks_1d"])))
        assert_that(rows, equal_to([
            (snapshot_time(D), 1, 1, 1),
            (snapshot_time(D + 1), 2, 1, 0),
            (snapshot_time(D + 2), 1, 0, 0),  # day D left the window
            (snapshot_time(D + 3), 0, 0, 0),  # everything left: an explicit zero row
        ]))


def test_dedupe_keeps_one_event_per_event_id() -> None:
    a = ev(100, event_id="same")
    with BeamTestPipeline() as p:
        out = (p | beam.Create([a, dict(a), ev(200, event_id="other")]) | DedupeEvents()
               | beam.Map(lambda e: e["event_id"]))
        assert_that(out, equal_to(["same", "other"]))


def test_popular_ranks_the_last_day_by_clicks_then_impressions_then_id() -> None:
    counts = [((1, D), (10, 2)), ((2, D), (10, 5)), ((3, D), (20, 2)), ((4, D), (10, 2)),
              ((5, D - 1), (99, 99))]  # an earlier day does not count
    with BeamTestPipeline() as p:
        out = p | beam.Create(counts) | PopularItems(day=D, size=3)
        assert_that(out, equal_to([
            {"item_id": 2, "clicks": 5, "rank": 1},
            {"item_id": 3, "clicks": 2, "rank": 2},
            {"item_id": 1, "clicks": 2, "rank": 3},
        ]))


def test_labels_join_clicks_on_user_request_and_item() -> None:
    t = D * US_PER_DAY
    events = [
        ev(t + 1, item_id=1, request_id="a", position=0),
        ev(t + 2, item_id=1, request_id="a", event_type="click"),
        ev(t + 3, item_id=1, request_id="a", event_type="click", event_id="double-click"),
        ev(t + 1, item_id=2, request_id="a", position=1),  # shown, not clicked
        ev(t + 4, item_id=2, request_id="b", event_type="click"),  # another request's click
        ev(t + 1, item_id=3, request_id=None, position=2),  # no request id: label 0
        ev(t + 5, user_id=2, item_id=1, request_id="a", event_type="click"),  # another user
        ev(t - US_PER_DAY, item_id=9, request_id="old"),  # before the first label day
    ]
    with BeamTestPipeline() as p:
        out = (p | beam.Create(events) | ImpressionLabels(first=D)
               | beam.Map(lambda r: (r["item_id"], r["label"], r["request_id"], r["position"],
                                     r["event_timestamp"])))
        ts = snapshot_time(D - 1) + dt.timedelta(microseconds=1)
        assert_that(out, equal_to([(1, 1, "a", 0, ts), (2, 0, "a", 1, ts), (3, 0, None, 2, ts)]))
