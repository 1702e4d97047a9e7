"""The merged candidate set: ANN + fresh + popular, de-duplicated, labelled."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from training.sources import fresh_items, merge_candidates, slot_counts


def test_merge_reserves_slots_dedupes_and_labels() -> None:
    ann = list(range(100, 150))
    popular = [100, 1, 2, 3, 4, 5]  # 100 is also an ANN hit: listed once, as ann
    fresh = [7, 8, 9]
    assert slot_counts(40) == (4, 2)
    ids, src = merge_candidates(ann, popular, fresh, k=40)
    assert len(ids) == len(set(ids)) == 40
    assert ids[:34] == ann[:34] and src[:34] == ["ann"] * 34
    assert ids[34:36] == [7, 8] and src[34:36] == ["fresh", "fresh"]
    assert ids[36:40] == [1, 2, 3, 4] and src[36:40] == ["popular"] * 4


def test_short_ann_is_topped_up_and_padding_skipped() -> None:
    ids, src = merge_candidates([5, -1, -1], [1, 2, 3], [9], k=6)
    assert ids == [5, 9, 1, 2, 3] and src == ["ann", "fresh", "popular", "popular", "popular"]


def test_fresh_items_never_from_the_future() -> None:
    t = dt.datetime(2026, 1, 4, tzinfo=dt.UTC)
    items = pd.DataFrame({"item_id": [1, 2, 3, 4], "created_at": pd.to_datetime(
        ["2026-01-03T10:00Z", "2026-01-04T01:00Z", "2025-12-01T00:00Z", "2026-01-01T00:00Z"])})
    assert fresh_items(items, t, window_days=7) == [1, 4]
