"""Lake -> Beam -> Feast apply + materialize into a real Redis -> online and point-in-time reads."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pyarrow.parquet as pq
import pytest
import redis

from pipelines.run import run_all
from pipelines.materialize import FeatureTableError, apply_and_materialize
from recstack.clock import day_start
from recstack.featurestore import open_store
from recstack.schemas import USER_FEATURES_FILE
from recstack.settings import Settings
from tests.unit.pipelines.tinylake import DAY1, at, shown_and_clicked, write_lake

pytestmark = [pytest.mark.integration, pytest.mark.redis]

DAY2, DAY3 = DAY1 + dt.timedelta(days=1), DAY1 + dt.timedelta(days=2)


def _on_port(settings: Settings, port: int, project: str) -> Settings:
    """The fixture's settings on the test Redis, with a project of its own (Redis is shared).

    These lakes have no item catalogue, hence only ranker_v1's tables: its service is read.
    """
    return settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"port": port}),
        "feast": settings.feast.model_copy(update={"project": project,
                                                   "feature_service": "ranker_v1"}),
    })


def _lake(settings: Settings) -> None:
    write_lake(settings.lake_dir, [
        *shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True),
        *shown_and_clicked(at(DAY2, 9), 1, 100, "r2"),
        *shown_and_clicked(at(DAY2, 9), 2, 200, "r3", clicked=True),
        # The "future" as seen from DAY3 09:00: a click at 10:00 the same day.
        *shown_and_clicked(at(DAY3, 10), 1, 100, "r4", clicked=True),
    ])


def test_pipeline_materializes_the_latest_snapshot_and_history_is_point_in_time(
    settings: Settings, redis_server: int
) -> None:
    s = _on_port(settings, redis_server, "pipelines_it")
    _lake(s)
    result = run_all(s)
    assert result["materialized"] == {"user_features": 2, "item_features": 2}
    assert result["counters"]["rows_bad"] == 0 and result["tables"]["labels.parquet"] == 4

    store = open_store(s)
    service = store.get_feature_service(s.feast.feature_service)
    online = store.get_online_features(
        features=service, entity_rows=[{"user_id": 1, "item_id": 100}]).to_dict()
    # Latest snapshot (end of DAY3): every event of user 1 and item 100.
    assert online["user_impressions_7d"] == [3] and online["user_clicks_7d"] == [2]
    assert online["user_active_days_7d"] == [3]
    assert online["item_clicks_1d"] == [1] and online["item_impressions_7d"] == [3]
    assert 0 < online["user_ctr_7d"][0] < 1
    # The benchmark's stand-in of the serving fast path reads the same values from Redis.
    from pipelines.bench import LayoutReader
    from recstack.schemas import USER_FEATURES

    reader = LayoutReader(redis.Redis(port=redis_server), s.feast.project, "user_features",
                          USER_FEATURES, "user_id")
    assert reader.read(1) == [online[f][0] for f in USER_FEATURES]
    assert reader.read_many([1, 2, 99])[2] == [None] * len(USER_FEATURES)  # unknown user

    times = [at(DAY3, 9), at(DAY3, 12), day_start(DAY3 + dt.timedelta(days=1)), at(DAY1, 23)]
    entity_df = pd.DataFrame({"user_id": [1] * 4, "item_id": [100] * 4, "event_timestamp": times})
    history = store.get_historical_features(entity_df=entity_df, features=service).to_df()
    by_time = history.set_index("event_timestamp").sort_index()
    clicks = {t: by_time["user_clicks_7d"].get(pd.Timestamp(t)) for t in times}
    # At 09:00 and 12:00 on DAY3 the row is the snapshot of midnight: the 10:00 click of DAY3 is
    # in the lake but not visible, before or after it happened.
    assert clicks[times[0]] == 1 and clicks[times[1]] == 1
    # At the end of DAY3 the DAY3 snapshot (events strictly before it) is visible.
    assert clicks[times[2]] == 2
    # Before the first snapshot there is nothing to join (Feast 0.67's file store drops such
    # entity rows; other stores return nulls).
    assert clicks[times[3]] is None or pd.isna(clicks[times[3]])


def test_a_failed_check_materializes_nothing(settings: Settings, redis_server: int) -> None:
    s = _on_port(settings, redis_server, "pipelines_bad")
    _lake(s)
    from pipelines import features
    from pipelines.run import feature_argv

    features.run(feature_argv(s))
    path = sorted((s.features_dir / USER_FEATURES_FILE).glob("part-*.parquet"))[-1]
    table = pq.read_table(path)
    ctr = table.schema.get_field_index("user_ctr_7d")
    pq.write_table(table.set_column(ctr, table.schema.field(ctr),
                                    [[1.5] * table.num_rows]), path)
    client = redis.Redis(port=redis_server)
    keys_before = client.dbsize()
    with pytest.raises(FeatureTableError, match="user_ctr_7d outside"):
        apply_and_materialize(s)
    assert client.dbsize() == keys_before
    assert not (s.feast_dir / "registry.db").exists()  # not even applied


def test_bad_and_misfiled_rows_go_to_a_dead_letter_dataset_per_run(
    settings: Settings, redis_server: int
) -> None:
    import json

    import pyarrow as pa

    from recstack import lake
    from recstack.schemas import DEAD_LETTER_DIR, EVENT_SCHEMA
    from tests.unit.pipelines.tinylake import event

    s = _on_port(settings, redis_server, "pipelines_dead")
    _lake(s)
    write_lake(s.lake_dir, [event(at(DAY2, 9), -3, 100, event_id="neg")], batch_key="bad")
    # An event of DAY1 stored in DAY3's partition (a foreign writer): "late".
    pq.write_table(pa.Table.from_pylist([event(at(DAY1, 22), 5, 100, event_id="misfiled")],
                                        schema=EVENT_SCHEMA),
                   lake.partition_dir(s.lake_dir, DAY3) / "part-foreign.parquet")
    first = run_all(s)
    dead = first["dead_letter"]
    assert dead["rows"] == 2 and dead["by_reason"] == {"negative_user_id": 1, "late": 1}
    assert dead["by_step"] == {"validate": 1, "lateness": 1}
    assert dead["path"] == str(s.features_dir / DEAD_LETTER_DIR / "features" /
                               f"run={first['run_id']}")
    rows = pq.read_table(dead["path"]).to_pylist()
    assert {r["event_id"]: r["reason"] for r in rows} == {"neg": "negative_user_id",
                                                          "misfiled": "late"}
    assert json.loads(next(r["row"] for r in rows if r["event_id"] == "neg"))["user_id"] == -3
    assert first["materialized"]["user_features"] == 2  # users 1 and 2; not -3, not 5

    # The next day's run has its own dead-letter dataset; the first one is kept as it was.
    write_lake(s.lake_dir, [*shown_and_clicked(at(DAY3 + dt.timedelta(days=1), 9), 1, 100, "r5"),
                            event(at(DAY3 + dt.timedelta(days=1), 9), 1, 100, "purchase")],
               batch_key="d4")
    second = run_all(s, max_row_swing=None)
    assert second["run_id"] != first["run_id"]
    assert second["dead_letter"]["by_reason"] == {"unknown_event_type": 1}
    runs = sorted(p.name for p in (s.features_dir / DEAD_LETTER_DIR / "features").iterdir())
    assert runs == sorted(f"run={r['run_id']}" for r in (first, second))
    assert pq.read_table(dead["path"]).num_rows == 2
    manifest = json.loads((s.features_dir / "manifest.json").read_text())
    assert manifest["runs"][-1]["dead_letter"]["rows"] == 1
