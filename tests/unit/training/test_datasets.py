"""The training set on DataFrames: validation, negative sampling, time split, the feature join."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from recstack.schemas import DEAD_LETTER_DIR, ITEM_FEATURES, LABELS_FILE, USER_FEATURES
from tests.unit.training.synthetic import daily_features, make_events, make_labels, write_world
from training.datasets import (
    DEAD_LETTER_FILE,
    TrainingDataError,
    build_ranker_dataset,
    downsample_negatives,
    read_labels,
    time_split,
    validate_labels,
)


def test_validate_labels_routes_bad_rows() -> None:
    labels = pd.DataFrame({
        "user_id": [1, None, 3, 4], "item_id": [1, 2, 3, 4],
        "event_timestamp": ["2026-01-01T10:00:00Z", "2026-01-01T10:00:00Z", "not a time",
                            "2026-01-02T10:00:00Z"],
        "label": [1, 0, 0, 7], "request_id": ["a", "b", "c", "d"], "position": [0, 1, 2, 3],
    })
    good, bad = validate_labels(labels)
    assert good["user_id"].tolist() == [1] and good["day"].tolist() == [dt.date(2026, 1, 1)]
    assert len(bad) == 3


def test_read_labels_missing_file_is_a_clear_error(settings) -> None:
    with pytest.raises(TrainingDataError, match="recstack pipeline"):
        read_labels(settings)


def test_read_labels_writes_dead_letter(settings) -> None:
    labels = make_labels(make_events(n_users=5, n_items=10, days=1))
    labels.loc[0, "label"] = 3
    settings.features_dir.mkdir(parents=True)
    labels.to_parquet(settings.features_dir / LABELS_FILE)
    good = read_labels(settings)
    assert good.attrs["n_dead"] == 1 and len(good) == len(labels) - 1
    dead = pd.read_parquet(settings.features_dir / DEAD_LETTER_DIR / DEAD_LETTER_FILE)
    assert dead["label"].tolist() == [3]


def test_downsample_keeps_positives_and_hits_the_ratio() -> None:
    df = pd.DataFrame({"label": [1] * 100 + [0] * 9900})
    out, rate = downsample_negatives(df, negatives_per_positive=4, seed=0)
    assert rate == pytest.approx(400 / 9900)
    assert (out["label"] == 1).sum() == 100
    assert 300 < (out["label"] == 0).sum() < 500
    assert downsample_negatives(df, 0)[1] == 1.0


def test_time_split_holds_out_the_last_day() -> None:
    df = pd.DataFrame({"day": [dt.date(2026, 1, d) for d in (1, 2, 2, 3)], "x": range(4)})
    train, valid = time_split(df)
    assert train["x"].tolist() == [0, 1, 2] and valid["x"].tolist() == [3]
    with pytest.raises(TrainingDataError, match="holdout"):
        time_split(df[df["day"] == dt.date(2026, 1, 3)])


def test_build_ranker_dataset_joins_point_in_time_features(settings) -> None:
    store = write_world(settings, n_users=20, n_items=15, days=3)
    store.services_asked = []
    df = build_ranker_dataset(settings, store)
    assert store.services_asked == [settings.feast.feature_service]
    holdout_day = df.attrs["holdout_day"]
    assert holdout_day == dt.date(2026, 1, 3) and 0 < df.attrs["negative_rate"] <= 1
    labels = pd.read_parquet(settings.features_dir / LABELS_FILE)
    last = pd.to_datetime(labels["event_timestamp"], utc=True).dt.date == holdout_day
    assert (df["day"] == holdout_day).sum() == last.sum()  # the holdout is never sampled
    later = df[df["day"] > dt.date(2026, 1, 1)]
    assert later[USER_FEATURES + ITEM_FEATURES].notna().all().all()
    # Row alignment survives the store's shuffling: each row has its own user's snapshot.
    events = make_events(n_users=20, n_items=15, days=3)
    snap = daily_features(events, "user_id", USER_FEATURES)
    day2 = snap[snap["event_timestamp"] == pd.Timestamp("2026-01-03", tz="UTC")]
    expected = day2.set_index("user_id")["user_impressions_7d"]
    rows = df[df["day"] == holdout_day]
    assert np.array_equal(rows["user_impressions_7d"].to_numpy(),
                          expected.reindex(rows["user_id"]).to_numpy())
    # Day-1 rows have no earlier snapshot: missing (NaN), as serving passes them.
    assert df.loc[df["day"] == dt.date(2026, 1, 1), "user_clicks_7d"].isna().all()


def test_ranker_v2_joins_the_row_of_the_items_category(settings) -> None:
    from recstack.schemas import RANKER_V2_USER_CATEGORY_FEATURES
    from tests.unit.training.synthetic import daily_user_category

    s = settings.model_copy(update={"feast": settings.feast.model_copy(
        update={"feature_service": "ranker_v2"})})
    store = write_world(s, n_users=20, n_items=15, days=3)
    df = build_ranker_dataset(s, store)
    assert df.attrs["stored_features"] == (USER_FEATURES + ITEM_FEATURES
                                           + RANKER_V2_USER_CATEGORY_FEATURES)
    # The category comes from the lake's catalogue (synthetic: item_id % 3).
    assert (df["category"] == df["item_id"] % 3).all()
    events = make_events(n_users=20, n_items=15, days=3)
    snap = daily_user_category(events)
    at = snap[snap["event_timestamp"] == pd.Timestamp("2026-01-03", tz="UTC")]
    expected = at.set_index(["user_id", "category"])["user_category_clicks_28d"]
    rows = df[df["day"] == df.attrs["holdout_day"]]
    want = expected.reindex(pd.MultiIndex.from_arrays([rows["user_id"], rows["category"]]))
    np.testing.assert_array_equal(rows["user_category_clicks_28d"].to_numpy(), want.to_numpy())
    assert rows["user_category_clicks_28d"].notna().any() and want.isna().any()
