"""The fast Redis reader against Feast's own ``get_online_features`` on a real Redis, after a real
materialization; and the circuit breaker around it when that Redis stops and comes back."""

from __future__ import annotations

import datetime as dt
import subprocess
import time

import numpy as np
import pytest

from pipelines import run_all
from recstack.featurestore import open_store
from recstack.schemas import ITEM_FEATURE_VIEW, ITEM_FEATURES, USER_FEATURE_VIEW, USER_FEATURES
from recstack.settings import Settings
from serving.breaker import BreakerState, CircuitBreaker
from serving.errors import FeatureUnavailable
from serving.features import ITEM_KEY, USER_KEY
from serving.onlinestore import RedisFeatureReader, sync_redis_client
from serving.resources import materialization_stamp
from tests.conftest import free_port, need_binary, stop_process, wait_for_port
from tests.unit.pipelines.tinylake import DAY1, at, shown_and_clicked, write_lake

pytestmark = [pytest.mark.integration, pytest.mark.redis]

DAY2 = DAY1 + dt.timedelta(days=1)


def _on_port(settings: Settings, port: int, project: str) -> Settings:
    return settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"port": port}),
        "feast": settings.feast.model_copy(update={"project": project}),
    })


def _feast_values(store, view: str, names: list[str], key: str, ids: list[int]) -> np.ndarray:
    rows = store.get_online_features(
        features=[f"{view}:{n}" for n in names], entity_rows=[{key: i} for i in ids]
    ).to_dict()
    return np.array(
        [[np.nan if rows[n][r] is None else rows[n][r] for n in names] for r in range(len(ids))],
        dtype=np.float32,
    )


def test_fast_reader_equals_get_online_features(settings: Settings, redis_server: int) -> None:
    s = _on_port(settings, redis_server, "serving_fast")
    write_lake(s.lake_dir, [
        *shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True),
        *shown_and_clicked(at(DAY2, 9), 1, 101, "r2"),
        *shown_and_clicked(at(DAY2, 10), 2, 100, "r3", clicked=True),
        *shown_and_clicked(at(DAY2, 11), 3, 102, "r4", position=2),
    ])
    run_all(s)
    store = open_store(s)
    client = sync_redis_client(s.redis.url, 0.5)
    users = RedisFeatureReader(client, s.feast.project, USER_FEATURE_VIEW, USER_FEATURES, USER_KEY)
    items = RedisFeatureReader(client, s.feast.project, ITEM_FEATURE_VIEW, ITEM_FEATURES, ITEM_KEY)

    user_ids = [1, 2, 3, 424242]  # the last one was never materialized: all NaN
    expected = _feast_values(store, USER_FEATURE_VIEW, USER_FEATURES, USER_KEY, user_ids)
    assert np.isfinite(expected[:3]).all() and np.isnan(expected[3]).all()
    for row, uid in enumerate(user_ids):
        np.testing.assert_array_equal(users.read(uid), expected[row])
    np.testing.assert_array_equal(users.read_many(user_ids), expected)

    item_ids = [100, 101, 102, 999]
    expected = _feast_values(store, ITEM_FEATURE_VIEW, ITEM_FEATURES, ITEM_KEY, item_ids)
    np.testing.assert_array_equal(items.read_many(item_ids, chunk=3), expected)
    assert np.isfinite(expected[:3]).all()

    # Materialization leaves a stamp in the registry; a new run changes it.
    stamp = materialization_stamp(store, ITEM_FEATURE_VIEW)
    assert stamp is not None
    store.materialize_incremental(end_date=dt.datetime.now(dt.UTC),
                                  feature_views=[ITEM_FEATURE_VIEW])
    assert materialization_stamp(open_store(s), ITEM_FEATURE_VIEW) != stamp
    client.close()


def test_breaker_opens_on_a_dead_redis_and_recovers(tmp_path) -> None:
    binary = need_binary("redis-server")
    port = free_port()

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(tmp_path)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for_port(port, 10, proc)
        return proc

    proc = start()
    changes: list[BreakerState] = []
    breaker = CircuitBreaker(3, 0.3, on_change=lambda name, state: changes.append(state))
    client = sync_redis_client(f"redis://127.0.0.1:{port}/0", 0.05)
    reader = RedisFeatureReader(client, "p", USER_FEATURE_VIEW, USER_FEATURES, USER_KEY, breaker)
    try:
        assert np.isnan(reader.read(1)).all()  # reachable, nothing stored
        stop_process(proc)
        for _ in range(3):
            with pytest.raises(FeatureUnavailable):
                reader.read(1)
        assert breaker.state is BreakerState.OPEN
        # Open: no call reaches Redis, failures are immediate.
        t = time.perf_counter()
        for _ in range(100):
            with pytest.raises(FeatureUnavailable, match="circuit open"):
                reader.read(1)
        assert time.perf_counter() - t < 0.05

        proc = start()
        time.sleep(0.35)  # the cooldown: the next call is the half-open probe
        assert np.isnan(reader.read(1)).all()
        assert breaker.state is BreakerState.CLOSED
        assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    finally:
        client.close()
        stop_process(proc)
