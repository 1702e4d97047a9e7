"""ranker_v2: the new views materialize next to ranker_v1, online and point in time."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from pipelines.run import run_all
from recstack import lake
from recstack.clock import day_start
from recstack.featurestore import open_store
from recstack.settings import Settings
from tests.unit.pipelines.tinylake import DAY1, at, shown_and_clicked, write_lake
from training.pitjoin import AsOfStore

pytestmark = [pytest.mark.integration, pytest.mark.redis]

DAY2, DAY3 = DAY1 + dt.timedelta(days=1), DAY1 + dt.timedelta(days=2)


def test_ranker_v2_online_and_point_in_time(settings: Settings, redis_server: int) -> None:
    s = settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"port": redis_server}),
        "feast": settings.feast.model_copy(update={"project": "ranker_v2_it"}),
    })
    write_lake(s.lake_dir, [
        *shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True),
        *shown_and_clicked(at(DAY2, 9), 1, 200, "r2", clicked=True),
        *shown_and_clicked(at(DAY2, 9), 2, 200, "r3"),
        # The planted future: a click at 10:00 on DAY3, after the 09:00 label below.
        *shown_and_clicked(at(DAY3, 10), 1, 100, "r4", clicked=True),
    ])
    lake.write_items(pa.table({
        "item_id": [100, 200], "category": pa.array([5, 6], pa.int32()),
        "created_at": pa.array([day_start(DAY1), day_start(DAY2)], pa.timestamp("us", tz="UTC")),
    }), s.lake_dir)
    result = run_all(s)
    assert result["materialized"] == {"user_features": 2, "item_features": 2,
                                      "user_features_v2": 2, "item_features_v2": 2,
                                      "user_category_features": 1}  # user 2 never clicked

    store = open_store(s)
    v1 = store.get_online_features(features=store.get_feature_service("ranker_v1"),
                                   entity_rows=[{"user_id": 1, "item_id": 100}]).to_dict()
    assert v1["user_clicks_7d"] == [3] and "user_clicks_28d" not in v1
    v2 = store.get_online_features(
        features=store.get_feature_service("ranker_v2"),
        entity_rows=[{"user_id": 1, "item_id": 100, "category": 5}]).to_dict()
    assert v2["user_clicks_7d"] == [3] and v2["user_clicks_28d"] == [3]
    assert v2["user_days_since_click"] == [0] and v2["item_age_days"] == [2]
    assert v2["user_category_clicks_28d"] == [2]
    assert v2["user_category_share_28d"][0] == pytest.approx(2 / 3)

    times = [at(DAY3, 9), day_start(DAY3 + dt.timedelta(days=1))]
    entity_df = pd.DataFrame({"user_id": [1, 1], "category": [5, 5], "event_timestamp": times})
    history = store.get_historical_features(entity_df=entity_df, features=[
        "user_features_v2:user_clicks_28d", "user_features_v2:user_days_since_click",
        "user_category_features:user_category_clicks_28d"]).to_df()
    by_time = history.set_index("event_timestamp").sort_index()
    # At DAY3 09:00 the DAY2 snapshot: two clicks (one in category 5), the last one on the
    # snapshot's day; the 10:00 click of DAY3 is in the lake but not visible.
    first = by_time.loc[pd.Timestamp(times[0])]
    assert (first["user_clicks_28d"], first["user_days_since_click"],
            first["user_category_clicks_28d"]) == (2, 0, 1)
    last = by_time.loc[pd.Timestamp(times[1])]
    assert (last["user_clicks_28d"], last["user_category_clicks_28d"]) == (3, 2)
    # Training's as-of join sees the same past and no more of the planted future.
    ours = AsOfStore(store).get_historical_features(entity_df=entity_df, features=[
        "user_features_v2:user_clicks_28d", "user_features_v2:user_days_since_click",
        "user_category_features:user_category_clicks_28d"]).to_df()
    assert ours[["user_clicks_28d", "user_days_since_click",
                 "user_category_clicks_28d"]].astype(int).values.tolist() == [[2, 0, 1], [3, 0, 2]]


def test_fast_reader_v2_equals_get_online_features(settings: Settings, redis_server: int) -> None:
    """Serving's one-round-trip reader (user views + user x category rows) and its item reads
    give exactly what Feast's get_online_features gives, on a real Redis after materialize."""
    import numpy as np

    from recstack.schemas import (
        ITEM_FEATURE_VIEW_V2,
        ITEM_FEATURES_V2,
        RANKER_V2_USER_CATEGORY_FEATURES,
        USER_CATEGORY_FEATURE_VIEW,
        USER_FEATURE_VIEW,
        USER_FEATURE_VIEW_V2,
        USER_FEATURES,
        USER_FEATURES_V2,
    )
    from serving.onlinestore import RedisFeatureReader, RedisUserContextReader, sync_redis_client

    s = settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"port": redis_server}),
        "feast": settings.feast.model_copy(update={"project": "ranker_v2_fast"}),
    })
    write_lake(s.lake_dir, [
        *shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True),
        *shown_and_clicked(at(DAY2, 9), 1, 200, "r2", clicked=True),
        *shown_and_clicked(at(DAY2, 10), 1, 300, "r3", clicked=True),
        *shown_and_clicked(at(DAY2, 11), 2, 200, "r4", clicked=True),
        *shown_and_clicked(at(DAY2, 12), 3, 300, "r5"),
    ])
    lake.write_items(pa.table({
        "item_id": [100, 200, 300], "category": pa.array([5, 6, 5], pa.int32()),
        "created_at": pa.array([day_start(DAY1)] * 3, pa.timestamp("us", tz="UTC")),
    }), s.lake_dir)
    run_all(s)
    store = open_store(s)
    client = sync_redis_client(s.redis.url, 0.5)
    user_views = [(USER_FEATURE_VIEW, USER_FEATURES), (USER_FEATURE_VIEW_V2, USER_FEATURES_V2)]
    reader = RedisUserContextReader(
        client, s.feast.project, user_views,
        (USER_CATEGORY_FEATURE_VIEW, RANKER_V2_USER_CATEGORY_FEATURES))

    def feast(features: list[str], rows: list[dict]) -> np.ndarray:
        got = store.get_online_features(features=features, entity_rows=rows).to_dict()
        names = [f.split(":")[1] for f in features]
        return np.array([[np.nan if got[n][r] is None else got[n][r] for n in names]
                         for r in range(len(rows))], dtype=np.float32)

    user_refs = [f"{v}:{n}" for v, names in user_views for n in names]
    cat_refs = [f"{USER_CATEGORY_FEATURE_VIEW}:{n}" for n in RANKER_V2_USER_CATEGORY_FEATURES]
    categories = [5, 6, 7]  # 7: nobody clicked it
    checked_values = 0
    for user_id in (1, 2, 3, 4242):  # 3 never clicked, 4242 was never materialized
        vec, by_cat = reader.read_with_categories(user_id, categories)
        expected_user = feast(user_refs, [{"user_id": user_id}])[0]
        expected_cat = feast(cat_refs, [{"user_id": user_id, "category": c}
                                        for c in categories])
        np.testing.assert_array_equal(vec, expected_user)
        np.testing.assert_array_equal(by_cat, expected_cat)
        np.testing.assert_array_equal(reader.read(user_id), expected_user)
        checked_values += int(np.isfinite(by_cat).sum())
    assert checked_values >= 4  # user 1 in categories 5 and 6, user 2 in 6: real values
    assert np.isnan(reader.read(4242)).all()

    items = RedisFeatureReader(client, s.feast.project, ITEM_FEATURE_VIEW_V2, ITEM_FEATURES_V2,
                               "item_id")
    ids = [100, 200, 300, 999]
    expected = feast([f"{ITEM_FEATURE_VIEW_V2}:{n}" for n in ITEM_FEATURES_V2],
                     [{"item_id": i} for i in ids])
    np.testing.assert_array_equal(items.read_many(ids), expected)
    assert np.isfinite(expected[:3]).all()
    client.close()
