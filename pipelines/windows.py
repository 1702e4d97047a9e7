"""Multi-window snapshots for the ``ranker_v2`` feature set (1/7/28-day windows, recency, trend,
age, per-category affinity) and the fresh candidate list.

Where ``transforms.DailySnapshots`` spreads each day's counts onto the snapshots that see it
(cheap for one 7-day window), these transforms group one entity's daily counts together and
compute every window of every snapshot from that short list (an entity has at most one entry
per lake day read): one shuffle for all windows instead of one per window.

Rows follow the v1 rules: a snapshot row for day s aggregates events of days ``s-w+1..s`` (T =
midnight after s, so nothing at or after T); an entity gets a row on each day its longest
window holds an event, and one all-zero row the day that window empties.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam

from pipelines.tables import CREATED, EVENT_TIMESTAMP
from pipelines.transforms import from_epoch_day, smoothed_ctr, snapshot_time
from recstack.schemas import NO_CATEGORY, NO_PROFILE_CODE, profile_code

LONG_DAYS = 28  # the longest window; a daily run reads this many days back
NO_CLICK_DAYS = LONG_DAYS + 1  # days_since_click when there is no click in the long window
FRESH_AGE_DAYS = 7  # an item at most this old (days) may enter the fresh list
TREND_EPS = 0.1  # clicks/day added to both rates of the trend ratio (no division by 0)

DayCounts = tuple[int, int, int]  # (day, impressions, clicks)


def active_snapshots(days: Iterable[int], first: int, last: int) -> Iterator[tuple[int, bool]]:
    """(snapshot day, empty) for each day in ``first..last`` whose long window holds one of
    ``days`` (empty=False), or that is the first day after the window emptied (empty=True)."""
    ordered = sorted(set(days))
    for s in range(first, last + 1):
        in_window = [d for d in ordered if s - LONG_DAYS < d <= s]
        if in_window:
            yield s, False
        elif any(d + LONG_DAYS == s for d in ordered):
            yield s, True


def window_stats(counts: list[DayCounts], s: int) -> dict[str, int]:
    """Impressions and clicks over the 1/7/28 days ending with day ``s``, and the days since the
    last click within the long window (``NO_CLICK_DAYS`` when none)."""
    out = {f"{k}_{w}d": 0 for w in (1, 7, LONG_DAYS) for k in ("impressions", "clicks")}
    since = NO_CLICK_DAYS
    for day, impressions, clicks in counts:
        age = s - day
        if not 0 <= age < LONG_DAYS:
            continue
        for w in (1, 7, LONG_DAYS):
            if age < w:
                out[f"impressions_{w}d"] += impressions
                out[f"clicks_{w}d"] += clicks
        if clicks:
            since = min(since, age)
    out["days_since_click"] = since
    return out


def _by_entity(element: tuple[tuple[Any, int], tuple[int, int]]) -> tuple[Any, DayCounts]:
    (key, day), (impressions, clicks) = element
    return key, (day, impressions, clicks)


class UserV2Rows(beam.DoFn):
    """(user_id, [(day, impressions, clicks)]) -> ``user_features_v2`` rows, one per snapshot."""

    def __init__(self, first: int, last: int, prior_ctr: float, prior_weight: float) -> None:
        self.first, self.last = first, last
        self.prior_ctr, self.prior_weight = prior_ctr, prior_weight

    def process(self, element: tuple[int, Iterable[DayCounts]],
                profiles: dict[int, tuple[int, int]] | None = None) -> Iterator[dict[str, Any]]:
        user_id, counts = element
        counts = list(counts)
        country, device = (profiles or {}).get(user_id, (NO_PROFILE_CODE, NO_PROFILE_CODE))
        for s, _empty in active_snapshots((c[0] for c in counts), self.first, self.last):
            w = window_stats(counts, s)
            t = snapshot_time(s)
            yield {
                "user_id": user_id,
                "user_impressions_1d": w["impressions_1d"],
                "user_clicks_1d": w["clicks_1d"],
                "user_ctr_1d": smoothed_ctr(w["clicks_1d"], w["impressions_1d"],
                                            self.prior_ctr, self.prior_weight),
                "user_impressions_28d": w["impressions_28d"],
                "user_clicks_28d": w["clicks_28d"],
                "user_ctr_28d": smoothed_ctr(w["clicks_28d"], w["impressions_28d"],
                                             self.prior_ctr, self.prior_weight),
                "user_days_since_click": w["days_since_click"],
                "user_country_code": country,
                "user_device_code": device,
                EVENT_TIMESTAMP: t,
                CREATED: t,
            }


def trend(clicks_7d: int, clicks_28d: int) -> float:
    """Short/long click-rate ratio: > 1 when the last week beats the 4-week average."""
    return (clicks_7d / 7 + TREND_EPS) / (clicks_28d / LONG_DAYS + TREND_EPS)


class ItemV2Rows(beam.DoFn):
    """(item_id, [(day, impressions, clicks)]) + side input {item_id: (category, created day)}
    -> ``item_features_v2`` rows, one per snapshot."""

    def __init__(self, first: int, last: int, prior_ctr: float, prior_weight: float) -> None:
        self.first, self.last = first, last
        self.prior_ctr, self.prior_weight = prior_ctr, prior_weight

    def process(self, element: tuple[int, Iterable[DayCounts]],
                catalogue: dict[int, tuple[int, int]]) -> Iterator[dict[str, Any]]:
        item_id, counts = element
        counts = list(counts)
        category, created_day = catalogue.get(item_id, (NO_CATEGORY, None))
        for s, _empty in active_snapshots((c[0] for c in counts), self.first, self.last):
            w = window_stats(counts, s)
            t = snapshot_time(s)
            # Unknown items (not in the catalogue) count from their first event in view.
            born = created_day if created_day is not None else min(c[0] for c in counts)
            yield {
                "item_id": item_id,
                "item_impressions_1d": w["impressions_1d"],
                "item_impressions_28d": w["impressions_28d"],
                "item_clicks_28d": w["clicks_28d"],
                "item_ctr_28d": smoothed_ctr(w["clicks_28d"], w["impressions_28d"],
                                             self.prior_ctr, self.prior_weight),
                "item_trend_7d_28d": trend(w["clicks_7d"], w["clicks_28d"]),
                "item_age_days": max(0, s - born),
                "item_category": category,
                EVENT_TIMESTAMP: t,
                CREATED: t,
            }


def _user_category_day(event: dict[str, Any], catalogue: dict[int, tuple[int, int]]
                       ) -> tuple[tuple[int, int, int], tuple[int, int]]:
    category = catalogue.get(event["item_id"], (0, None))[0]
    is_click = event["event_type"] != "impression"
    return (event["user_id"], category, event["day"]), (0 if is_click else 1, 1 if is_click else 0)


class UserCategoryRows(beam.DoFn):
    """(user_id, [(category, day, impressions, clicks)]) -> ``user_category_features`` rows:
    per (user, category, snapshot day) with a click in the category within 28 days (and one
    zero row the day the last one leaves the window), the user's clicks in the category and
    their share of the user's clicks. No row = no click there in 28 days (read it as 0)."""

    def process(self, element: tuple[int, Iterable[tuple[int, int, int, int]]],
                first: int, last: int) -> Iterator[dict[str, Any]]:
        user_id, rows = element
        per_category: dict[int, list[DayCounts]] = {}
        for category, day, impressions, clicks in rows:
            if clicks:  # only clicks make an affinity; impressions alone would make most rows
                per_category.setdefault(category, []).append((day, impressions, clicks))
        all_counts = [c for counts in per_category.values() for c in counts]
        for s, _ in active_snapshots((c[0] for c in all_counts), first, last):
            total = window_stats(all_counts, s)["clicks_28d"]
            t = snapshot_time(s)
            for category, counts in sorted(per_category.items()):
                days = [c[0] for c in counts]
                in_window = any(s - LONG_DAYS < d <= s for d in days)
                expired = not in_window and any(d + LONG_DAYS == s for d in days)
                if not (in_window or expired):
                    continue
                clicks = window_stats(counts, s)["clicks_28d"]
                yield {
                    "user_id": user_id,
                    "category": category,
                    "user_category_clicks_28d": clicks,
                    "user_category_share_28d": clicks / total if total else 0.0,
                    EVENT_TIMESTAMP: t,
                    CREATED: t,
                }


def _regroup_user(kv: tuple[tuple[int, int, int], tuple[int, int]]
                  ) -> tuple[int, tuple[int, int, int, int]]:
    (user_id, category, day), (impressions, clicks) = kv
    return user_id, (category, day, impressions, clicks)


def _sum_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    impressions = clicks = 0
    for a, b in pairs:
        impressions += a
        clicks += b
    return impressions, clicks


class UserCategorySnapshots(beam.PTransform):
    """Events + catalogue side input -> ``user_category_features`` rows (see UserCategoryRows)."""

    def __init__(self, catalogue, first: int, last: int) -> None:
        super().__init__()
        self.catalogue, self.first, self.last = catalogue, first, last

    def expand(self, events):
        return (
            events
            | "KeyUserCategoryDay" >> beam.Map(_user_category_day, self.catalogue)
            | "SumPerUserCategoryDay" >> beam.CombinePerKey(_sum_pairs)
            | "ByUser" >> beam.Map(_regroup_user)
            | "GroupByUser" >> beam.GroupByKey()
            | "Rows" >> beam.ParDo(UserCategoryRows(), self.first, self.last)
        )


class EntitySnapshotsV2(beam.PTransform):
    """((key, day), (impressions, clicks)) -> v2 rows through ``row_fn`` (a DoFn taking
    (key, [(day, impressions, clicks)]) and the side inputs)."""

    def __init__(self, row_fn: beam.DoFn, *side_inputs: Any) -> None:
        super().__init__()
        self.row_fn, self.side_inputs = row_fn, side_inputs

    def expand(self, daily_counts):
        return (
            daily_counts
            | "ByEntity" >> beam.Map(_by_entity)
            | "GroupByEntity" >> beam.GroupByKey()
            | "Rows" >> beam.ParDo(self.row_fn, *self.side_inputs)
        )


def _fresh_score(row: dict[str, Any]) -> tuple[float, int, int]:
    return row["item_ctr_28d"], row["item_impressions_28d"], -row["item_id"]


def _fresh_ranked(top: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for rank, row in enumerate(top, start=1):
        yield {"item_id": row["item_id"], "age_days": row["item_age_days"],
               "clicks": row["item_clicks_28d"], "ctr": row["item_ctr_28d"], "rank": rank}


class FreshItems(beam.PTransform):
    """item_features_v2 rows -> the newest items with early traction on snapshot day ``day``:
    at most ``FRESH_AGE_DAYS`` old, at least one click, best smoothed CTR first, ``size`` kept."""

    def __init__(self, day: int, size: int) -> None:
        super().__init__()
        self.t = snapshot_time(day)
        self.size = size

    def expand(self, item_rows):
        t = self.t
        return (
            item_rows
            | "NewWithClicks" >> beam.Filter(
                lambda r: r[EVENT_TIMESTAMP] == t and r["item_age_days"] <= FRESH_AGE_DAYS
                and r["item_clicks_28d"] > 0)
            | "Top" >> beam.combiners.Top.Of(self.size, key=_fresh_score)
            | "Rank" >> beam.FlatMap(_fresh_ranked)
        )


def profile_entry(row: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    """A users.parquet row -> (user_id, (country code, device code)) (schemas.profile_code)."""
    return int(row["user_id"]), (profile_code(row.get("country")), profile_code(row.get("device")))


def catalogue_entry(row: dict[str, Any]) -> tuple[int, tuple[int, int]]:
    """An items.parquet row -> (item_id, (category, epoch day of created_at))."""
    created: dt.datetime = row["created_at"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=dt.timezone.utc)
    day = (created.astimezone(dt.timezone.utc).date() - from_epoch_day(0)).days
    return int(row["item_id"]), (int(row["category"]), day)
