"""The training job's pieces that need no MLflow: leakage-free candidate scores, inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recstack.schemas import CANDIDATE_SCORE_FEATURE, POPULAR_FILE
from tests.unit.training.synthetic import FakeStore, daily_features, make_events
from training.candidates import fit_candidate_model
from training.datasets import TrainingDataError
from training.train import add_candidate_scores, load_events, read_popular, training_rows


def test_candidate_scores_only_use_earlier_days() -> None:
    events = make_events(n_users=12, n_items=12, days=3)
    events["day"] = pd.to_datetime(events["ts"], utc=True).dt.date
    days = sorted(events["day"].unique())
    rows = events[events["event_type"] == "impression"][["user_id", "item_id", "day"]]
    scored, models = add_candidate_scores(rows, events, np.arange(12), dim=3, seed=0)
    assert list(models) == days
    # Day 1 has no past: every score is 0, like a user the served model never saw.
    assert (scored.loc[scored["day"] == days[0], CANDIDATE_SCORE_FEATURE] == 0).all()
    # Day 3 is scored by a model fit on days 1-2 only: changing day 3's clicks changes nothing.
    last = scored["day"] == days[2]
    expected = fit_candidate_model(events[events["day"] < days[2]], np.arange(12), 3, 0).score(
        scored.loc[last, "user_id"].to_numpy(), scored.loc[last, "item_id"].to_numpy())
    np.testing.assert_allclose(scored.loc[last, CANDIDATE_SCORE_FEATURE], expected, rtol=1e-6)
    tampered = events.copy()
    tampered.loc[tampered["day"] == days[2], "event_type"] = "click"
    again, _ = add_candidate_scores(rows, tampered, np.arange(12), dim=3, seed=0)
    np.testing.assert_allclose(again[CANDIDATE_SCORE_FEATURE], scored[CANDIDATE_SCORE_FEATURE])


def test_read_popular_most_popular_first(settings) -> None:
    settings.features_dir.mkdir(parents=True)
    pd.DataFrame({"item_id": [5, 9, 7], "clicks": [3, 10, 6], "rank": [3, 1, 2]}).to_parquet(
        settings.features_dir / POPULAR_FILE)
    assert read_popular(settings) == [9, 7, 5]


def test_missing_inputs_are_clear_errors(settings) -> None:
    with pytest.raises(TrainingDataError, match="recstack simulate"):
        load_events(settings)
    with pytest.raises(TrainingDataError, match="recstack pipeline"):
        read_popular(settings)


def test_training_rows_drop_the_first_day_without_history() -> None:
    import datetime as dt

    days = [dt.date(2026, 1, d) for d in (1, 1, 2, 3)]
    train = pd.DataFrame({"day": days, "label": [0, 1, 0, 1]})
    kept = training_rows(train)
    assert kept["day"].tolist() == days[2:]
    single = train[train["day"] == days[0]]
    assert len(training_rows(single)) == 2  # one day only: better than nothing


def test_features_as_of_reads_the_snapshot_of_that_midnight() -> None:
    import datetime as dt

    from recstack.clock import day_start
    from recstack.schemas import ITEM_FEATURES, RANKER_V2_USER_CATEGORY_FEATURES, USER_FEATURES
    from training.datasets import features_as_of

    from .synthetic import daily_user_category

    events = make_events(n_users=6, n_items=12, days=3)
    store = FakeStore(daily_features(events, "user_id", USER_FEATURES),
                      daily_features(events, "item_id", ITEM_FEATURES),
                      user_category=daily_user_category(events))
    snap = features_as_of(store, "ranker_v2", np.array([0, 1, 99]), np.arange(12),
                          day_start(dt.date(2026, 1, 3)), categories=np.array([0, 1, 2]))
    users, items = snap.users, snap.items
    assert list(users.columns) == USER_FEATURES and list(items.columns) == ITEM_FEATURES
    assert list(snap.user_category.columns) == RANKER_V2_USER_CATEGORY_FEATURES
    day1 = events[pd.to_datetime(events["ts"], utc=True).dt.date < dt.date(2026, 1, 3)]
    expected = (day1[(day1.user_id == 0) & (day1.event_type == "impression")]).shape[0]
    assert users.loc[0, "user_impressions_7d"] == expected
    clicks = day1[(day1.user_id == 1) & (day1.event_type == "click")]
    own = int((clicks.item_id % 3 == 1).sum())
    assert own > 0
    # A pair's user x category value is the row of the item's category (item 4 -> category 1).
    x = snap.for_pairs(["user_category_clicks_28d", "item_impressions_7d"], np.array([1, 99]),
                       np.array([4, 4]), np.array([1, 1]))
    assert x[0, 0] == own and np.isnan(x[1, 0])
    assert x[0, 1] == x[1, 1] == items.loc[4, "item_impressions_7d"]
    assert np.isnan(users.loc[99]).all()  # unknown user: NaN, as at serving


def test_feature_reference_summarises_each_feature() -> None:
    from training.train import feature_reference

    rows = pd.DataFrame({"a": [1.0, 2.0, 3.0, np.nan], "b": [0.5] * 4})
    ref = feature_reference(rows, ["a", "b"])
    assert ref["a"]["n"] == 4 and ref["a"]["nan_share"] == 0.25
    assert ref["a"]["mean"] == 2.0 and ref["a"]["q50"] == 2.0
    assert ref["b"]["std"] == 0.0 and ref["b"]["q99"] == 0.5


def test_feature_reference_counts_each_item_once() -> None:
    from training.train import feature_reference

    # Item 1 was shown three times, item 2 once: per impression the median would be 10.
    rows = pd.DataFrame({"item_id": [1, 1, 1, 2], "user_x": [1.0, 2.0, 3.0, 4.0],
                         "item_clicks_7d": [10.0, 10.0, 10.0, 0.0]})
    ref = feature_reference(rows, ["user_x", "item_clicks_7d"])
    assert ref["user_x"]["n"] == 4 and ref["item_clicks_7d"]["n"] == 2
    assert ref["item_clicks_7d"]["mean"] == 5.0


def test_crosses_join_the_feature_list_only_with_both_parts_and_match_serving() -> None:
    from recstack.schemas import cross_code
    from training.train import add_cross_features, ranker_feature_names

    assert ranker_feature_names(["user_country_code", "item_category", "x"]) == [
        "user_country_code", "item_category", "x", "user_country_x_item_category", "cand_score"]
    assert ranker_feature_names(["user_country_code", "x"]) == [
        "user_country_code", "x", "cand_score"]  # ranker_v1-like: no cross without its parts
    rows = pd.DataFrame({"user_country_code": [338.0, -1.0, np.nan, 12.0],
                         "item_category": [2.0, 2.0, 3.0, np.nan]})
    got = add_cross_features(rows)["user_country_x_item_category"].to_numpy()
    np.testing.assert_array_equal(got, [338_002, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(got, cross_code(rows["user_country_code"], rows["item_category"]))
