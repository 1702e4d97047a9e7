"""ranker_v2: the new views materialize next to ranker_v1, online and point in time."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow as pa
import pytest

from pipelines import run_all
from recstack import lake
from recstack.clock import day_start
from recstack.featurestore import open_store
from recstack.settings import Settings
from tests.unit.pipelines.tinylake import DAY1, at, shown_and_clicked, write_lake

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
