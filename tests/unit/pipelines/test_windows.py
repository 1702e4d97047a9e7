"""ranker_v2 windows: 1/7/28-day counts, recency, age, trend, category affinity, fresh list."""

from __future__ import annotations

import datetime as dt
import zlib

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipelines.transforms import snapshot_time
from recstack.schemas import NO_PROFILE_CODE, profile_code
from pipelines.windows import (
    NO_CLICK_DAYS,
    EntitySnapshotsV2,
    FreshItems,
    ItemV2Rows,
    UserCategorySnapshots,
    UserV2Rows,
    active_snapshots,
    catalogue_entry,
    profile_entry,
    trend,
    window_stats,
)

D = 20_000  # an epoch day


def test_window_stats_count_each_window_and_the_days_since_the_last_click() -> None:
    counts = [(D, 4, 1), (D - 3, 2, 0), (D - 10, 5, 2), (D - 28, 100, 100)]  # the last: outside
    w = window_stats(counts, D)
    assert (w["impressions_1d"], w["clicks_1d"]) == (4, 1)
    assert (w["impressions_7d"], w["clicks_7d"]) == (6, 1)
    assert (w["impressions_28d"], w["clicks_28d"]) == (11, 3)
    assert w["days_since_click"] == 0
    assert window_stats(counts, D + 5)["days_since_click"] == 5
    assert window_stats([(D, 3, 0)], D)["days_since_click"] == NO_CLICK_DAYS
    # At D - 1, day D is in the future (unseen) and day D - 28 is back in the window.
    assert window_stats(counts, D - 1)["impressions_28d"] == 2 + 5 + 100


def test_active_snapshots_follow_the_long_window_then_one_empty_day() -> None:
    got = list(active_snapshots([D], D - 2, D + 30))
    assert got[0] == (D, False) and got[-1] == (D + 28, True)
    assert [s for s, _ in got] == list(range(D, D + 29))


def test_trend_is_above_one_when_the_last_week_beats_the_month() -> None:
    assert trend(14, 14) > 1 > trend(0, 28)
    assert trend(0, 0) == pytest.approx(1.0)


def test_v2_rows_users_items_categories_and_fresh_list() -> None:
    t = snapshot_time(D)
    created = dt.datetime(2024, 10, 6, tzinfo=dt.timezone.utc)  # epoch day 20_002
    catalogue = [catalogue_entry({"item_id": 7, "category": 3, "created_at": created}),
                 catalogue_entry({"item_id": 8, "category": 4,
                                  "created_at": created - dt.timedelta(days=100)})]
    assert catalogue[0] == (7, (3, 20_002))
    days = D + 2  # the snapshot day of the item checks
    events = [
        {"user_id": 1, "item_id": 7, "event_type": "impression", "day": D},
        {"user_id": 1, "item_id": 7, "event_type": "click", "day": D},
        {"user_id": 1, "item_id": 8, "event_type": "click", "day": D},
        {"user_id": 1, "item_id": 8, "event_type": "click", "day": D - 1},
    ]
    with BeamTestPipeline() as p:
        side = beam.pvalue.AsDict(p | "Cat" >> beam.Create(catalogue))
        users = (p | "UserDays" >> beam.Create([((1, D), (1, 1)), ((1, D - 1), (0, 1))])
                 | "UserV2" >> EntitySnapshotsV2(UserV2Rows(D, D, 0.1, 10))
                 | "UserOut" >> beam.Map(lambda r: (r["user_clicks_1d"], r["user_clicks_28d"],
                                                    r["user_days_since_click"])))
        assert_that(users, equal_to([(1, 2, 0)]), label="users")
        # The profile's codes, per user; a user the profile lacks gets NO_PROFILE_CODE.
        profiles = beam.pvalue.AsDict(p | "Profiles" >> beam.Create(
            [profile_entry({"user_id": 1, "country": "us", "device": "mobile"})]))
        coded = (p | "CodedDays" >> beam.Create([((1, D), (1, 1)), ((2, D), (3, 0))])
                 | "CodedV2" >> EntitySnapshotsV2(UserV2Rows(D, D, 0.1, 10), profiles)
                 | "CodedOut" >> beam.Map(lambda r: (r["user_id"], r["user_country_code"],
                                                     r["user_device_code"])))
        assert_that(coded, equal_to([(1, profile_code("us"), profile_code("mobile")),
                                     (2, NO_PROFILE_CODE, NO_PROFILE_CODE)]), label="profiles")
        items = (p | "ItemDays" >> beam.Create([((7, days), (10, 3)), ((8, days), (10, 1)),
                                                ((9, days), (10, 1))])
                 | "ItemV2" >> EntitySnapshotsV2(ItemV2Rows(days, days, 0.1, 10), side))
        assert_that(items | "ItemOut" >> beam.Map(lambda r: (r["item_id"], r["item_age_days"],
                                                              r["item_category"])),
                    equal_to([(7, 0, 3), (8, 100, 4), (9, 0, NO_PROFILE_CODE)]),
                    label="items")
        fresh = items | FreshItems(day=days, size=5) | "FreshOut" >> beam.Map(
            lambda r: (r["item_id"], r["rank"]))
        # item 8 is 100 days old; item 9 (not in the catalogue) counts from its first event
        assert_that(fresh, equal_to([(7, 1), (9, 2)]), label="fresh")
        shares = (p | "Events" >> beam.Create(events) | UserCategorySnapshots(side, D, D)
                  | "ShareOut" >> beam.Map(lambda r: (r["category"], r["user_category_clicks_28d"],
                                                      r["user_category_share_28d"],
                                                      r["event_timestamp"])))
        assert_that(shares, equal_to([(3, 1, pytest.approx(1 / 3), t),
                                      (4, 2, pytest.approx(2 / 3), t)]), label="shares")


def test_profile_codes_are_stable_distinct_and_ignore_case() -> None:
    codes = {c: profile_code(c) for c in ("us", "in", "br", "de", "gb", "fr")}
    assert len(set(codes.values())) == len(codes)  # no collision among the simulator's
    assert all(0 <= v < 1000 for v in codes.values())
    assert profile_code(" US ") == codes["us"] == zlib.crc32(b"us") % 1000  # any process
    assert profile_code(None) == profile_code("") == NO_PROFILE_CODE
    assert profile_entry({"user_id": 5, "country": None, "device": "tablet"}) == (
        5, (NO_PROFILE_CODE, profile_code("tablet")))
