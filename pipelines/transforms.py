"""Composite transforms of the feature pipeline: dedupe, daily snapshots, popular list, labels.

Point-in-time correctness: the snapshot for lake day ``d`` has ``event_timestamp`` T = midnight
UTC after ``d`` and aggregates only events with ``T - window <= ts < T``, i.e. days
``d - window + 1 .. d``. Events are first counted per (entity, day), then each daily count is
spread over the ``window`` snapshots that include it, so the fan-out is per entity-day, not per
event. An entity whose window empties gets one all-zero snapshot, so a point-in-time join (and
the online store) never keeps serving counts of events that have left the window.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from pipelines.tables import CREATED, EVENT_TIMESTAMP
from pipelines.validate import NAMESPACE

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

Counts = tuple[int, int]  # (impressions, clicks)
Stats = tuple[int, int, int, int]  # (impressions, clicks, active days, clicks on the last day)


def epoch_day(day: dt.date) -> int:
    return (day - EPOCH.date()).days


def from_epoch_day(day: int) -> dt.date:
    return EPOCH.date() + dt.timedelta(days=day)


def snapshot_time(day: int) -> dt.datetime:
    """T for the snapshot of epoch day ``day``: midnight UTC after it."""
    return EPOCH + dt.timedelta(days=day + 1)


def from_micros(ts_us: int) -> dt.datetime:
    return EPOCH + dt.timedelta(microseconds=ts_us)


def smoothed_ctr(clicks: int, impressions: int, prior_ctr: float, prior_weight: float) -> float:
    """(clicks + prior_ctr * prior_weight) / (impressions + prior_weight), within [0, 1].

    Entities with few impressions get the prior instead of a noisy 0 or 1.
    """
    ctr = (clicks + prior_ctr * prior_weight) / (impressions + prior_weight)
    return min(1.0, max(0.0, ctr))


def snapshot_days_of(day: int, window_days: int, first: int, last: int) -> Iterator[int]:
    """Snapshot days in [first, last] whose window contains events of ``day``."""
    yield from range(max(day, first), min(day + window_days - 1, last) + 1)


def _sum_tuples(rows: Iterable[tuple[int, ...]]) -> tuple[int, ...]:
    total: list[int] | None = None
    for row in rows:
        if total is None:
            total = list(row)
        else:
            for i, value in enumerate(row):
                total[i] += value
    return tuple(total or ())


_EVENT_FIELDS = ("event_id", "ts_us", "day", "user_id", "item_id", "event_type", "request_id",
                 "position")


def _pack(event: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    """(event_id, the event as a tuple): a tuple is much cheaper than a dict to encode."""
    return event["event_id"], tuple(event[f] for f in _EVENT_FIELDS)


def _unpack(kv: tuple[str, tuple[Any, ...]], counter: Any) -> dict[str, Any]:
    counter.inc()
    return dict(zip(_EVENT_FIELDS, kv[1]))


def _first_event(events: Iterable[tuple[Any, ...]]) -> tuple[Any, ...]:
    """One of the events sharing an event_id, chosen deterministically (the smallest)."""
    return min(events, key=lambda e: tuple("" if v is None else v for v in e))


class DedupeEvents(beam.PTransform):
    """Events -> events unique on ``event_id`` (the lake's writes are idempotent on it)."""

    def expand(self, events):
        return (
            events
            | "KeyByEventId" >> beam.Map(_pack)
            | "PickOne" >> beam.CombinePerKey(_first_event)
            | "Unpack" >> beam.Map(_unpack, Metrics.counter(NAMESPACE, "events_unique"))
        )


class DailyCounts(beam.PTransform):
    """Events -> ((key, day), (impressions, clicks)) for ``key`` = user_id or item_id."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key

    def expand(self, events):
        key = self.key
        return (
            events
            | "KeyByEntityDay" >> beam.Map(
                lambda e: ((e[key], e["day"]),
                           (1, 0) if e["event_type"] == "impression" else (0, 1)))
            | "SumPerEntityDay" >> beam.CombinePerKey(_sum_tuples)
        )


class SpreadToSnapshots(beam.DoFn):
    """((key, day), counts) -> ((key, snapshot day), stats) for each snapshot that sees ``day``.

    Also emits zeros for the first snapshot after ``day`` leaves the window (see module doc).
    """

    def __init__(self, window_days: int, first: int, last: int) -> None:
        self.window_days = window_days
        self.first = first
        self.last = last

    def process(self, element: tuple[tuple[int, int], Counts]) -> Iterator[tuple[Any, Stats]]:
        (key, day), (impressions, clicks) = element
        for snapshot in snapshot_days_of(day, self.window_days, self.first, self.last):
            yield (key, snapshot), (impressions, clicks, 1, clicks if snapshot == day else 0)
        expired = day + self.window_days
        if self.first <= expired <= self.last:
            yield (key, expired), (0, 0, 0, 0)


class FormatSnapshot(beam.DoFn):
    """((key, snapshot day), stats) -> a feature-table row with ``<prefix>_<stat>`` columns."""

    def __init__(
        self, key: str, prefix: str, features: list[str], prior_ctr: float, prior_weight: float,
        created: dt.datetime | None,
    ) -> None:
        self.key = key
        self.prefix = prefix
        self.features = list(features)
        self.prior_ctr = prior_ctr
        self.prior_weight = prior_weight
        self.created = created

    def process(self, element: tuple[tuple[int, int], Stats]) -> Iterator[dict[str, Any]]:
        (key, day), (impressions, clicks, active_days, clicks_1d) = element
        stats = {
            "impressions_7d": impressions,
            "clicks_7d": clicks,
            "ctr_7d": smoothed_ctr(clicks, impressions, self.prior_ctr, self.prior_weight),
            "active_days_7d": active_days,
            "clicks_1d": clicks_1d,
        }
        row: dict[str, Any] = {self.key: key}
        for name in self.features:
            row[name] = stats[name.removeprefix(f"{self.prefix}_")]
        row[EVENT_TIMESTAMP] = snapshot_time(day)
        row[CREATED] = self.created or row[EVENT_TIMESTAMP]  # None: deterministic, = T
        yield row


class DailySnapshots(beam.PTransform):
    """Daily counts of one entity -> one feature row per (entity, snapshot day).

    In: ((key, day), (impressions, clicks)). Out: dicts with the key column, ``features``,
    ``event_timestamp`` (T) and ``created``, for snapshot days ``first..last`` (epoch days).
    """

    def __init__(
        self, key: str, prefix: str, features: list[str], window_days: int, first: int,
        last: int, prior_ctr: float, prior_weight: float, created: dt.datetime | None,
    ) -> None:
        super().__init__()
        self.key, self.prefix, self.features = key, prefix, list(features)
        self.window_days, self.first, self.last = window_days, first, last
        self.prior_ctr, self.prior_weight, self.created = prior_ctr, prior_weight, created

    def expand(self, daily_counts):
        return (
            daily_counts
            | "Spread" >> beam.ParDo(SpreadToSnapshots(self.window_days, self.first, self.last))
            | "SumPerSnapshot" >> beam.CombinePerKey(_sum_tuples)
            | "Format" >> beam.ParDo(FormatSnapshot(
                self.key, self.prefix, self.features, self.prior_ctr, self.prior_weight,
                self.created))
        )


def _popularity(element: tuple[tuple[int, int], Counts]) -> tuple[int, int, int]:
    (item_id, _day), (impressions, clicks) = element
    return clicks, impressions, -item_id  # most clicks, then most shown, then lowest id


def _ranked(top: list[tuple[tuple[int, int], Counts]]) -> Iterator[dict[str, int]]:
    for rank, ((item_id, _day), (_impressions, clicks)) in enumerate(top, start=1):
        yield {"item_id": item_id, "clicks": clicks, "rank": rank}


class PopularItems(beam.PTransform):
    """Item daily counts -> the ``size`` most clicked items of epoch day ``day``, ranked from 1."""

    def __init__(self, day: int, size: int) -> None:
        super().__init__()
        self.day = day
        self.size = size

    def expand(self, item_daily_counts):
        day = self.day
        return (
            item_daily_counts
            | "OnlyLastDay" >> beam.Filter(lambda kv: kv[0][1] == day)
            | "Top" >> beam.combiners.Top.Of(self.size, key=_popularity)
            | "Rank" >> beam.FlatMap(_ranked)
        )


class RouteForLabels(beam.DoFn):
    """Event of day >= ``first`` (impressions: also <= ``last``) -> keyed impression (main output) or keyed click (``clicks``).

    One pass routes every event, instead of a filter per kind. Clicks without request_id cannot
    be attributed and are dropped; impressions without one group under request_id None and, with
    no click to match, get label 0.
    """

    CLICKS = "clicks"

    def __init__(self, first: int, last: int | None = None) -> None:
        self.first = first
        self.last = last

    def process(self, e: dict[str, Any]) -> Iterator[Any]:
        if e["day"] >= self.first:
            key = (e["user_id"], e["request_id"], e["item_id"])
            if e["event_type"] == "impression":
                # Impressions after ``last`` are read only for the clicks they may carry.
                if self.last is None or e["day"] <= self.last:
                    yield key, (e["ts_us"], e["position"])
            elif e["request_id"] is not None:
                yield beam.pvalue.TaggedOutput(self.CLICKS, (key, 1))


def _label_row(user_id: int, item_id: int, ts_us: int, label: int, request_id: str | None,
               position: int | None) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "item_id": item_id,
        EVENT_TIMESTAMP: from_micros(ts_us),
        "label": label,
        "request_id": request_id,
        "position": position,
    }


def _label_rows(element: tuple[Any, dict[str, list[Any]]]) -> Iterator[dict[str, Any]]:
    (user_id, request_id, item_id), groups = element
    label = 1 if groups["clicks"] else 0
    for ts_us, position in groups["impressions"]:
        yield _label_row(user_id, item_id, ts_us, label, request_id, position)


class ImpressionLabels(beam.PTransform):
    """Events -> one row per impression of epoch days ``first..last``, label 1 if it was clicked.

    A click matches an impression with the same user_id, request_id and item_id.
    """

    def __init__(self, first: int, last: int | None = None) -> None:
        super().__init__()
        self.first = first
        self.last = last

    def expand(self, events):
        routed = events | "Route" >> beam.ParDo(RouteForLabels(self.first, self.last)).with_outputs(
            RouteForLabels.CLICKS, main="impressions")
        return (
            {"impressions": routed.impressions, "clicks": routed[RouteForLabels.CLICKS]}
            | "JoinClicks" >> beam.CoGroupByKey()
            | "ToRows" >> beam.FlatMap(_label_rows)
        )
