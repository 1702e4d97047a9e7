"""The fast Redis reader against Feast's own ``get_online_features`` on a real Redis, after a real
materialization; the circuit breaker around it when that Redis stops and comes back; and a
flushed online store: named, counted, 503 while the item table is empty, ready once
materialized again."""

from __future__ import annotations

import datetime as dt
import subprocess
import time

import faiss
import lightgbm as lgb
import numpy as np
import pytest
from fastapi.testclient import TestClient

from pipelines.run import run_all
from pipelines.materialize import present_view_tables
from recstack.featurestore import open_store
from recstack.schemas import (
    ITEM_FEATURE_VIEW,
    ITEM_FEATURES,
    RANKER_FEATURES,
    USER_FEATURE_VIEW,
    USER_FEATURES,
)
from recstack.settings import Settings
from serving.app import create_app
from serving.breaker import BreakerState, CircuitBreaker
from serving.candidates import AnnCandidateSource, CandidateModel
from serving.errors import FeatureUnavailable
from serving.events import RedisStreamSink, stream_client
from serving.features import ITEM_KEY, USER_KEY
from serving.metrics import ServingMetrics
from serving.onlinestore import RedisFeatureReader, sync_redis_client
from serving.ranking import BoosterRanker
from serving.recommender import LocalScorer
from serving.resources import Maintainer, Resources, materialization_stamp
from tests.conftest import free_port, start_redis, stop_process
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
    port = free_port()

    def start() -> subprocess.Popen:
        return start_redis(port, tmp_path)

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


def _booster_ranker():
    """A real LightGBM ranker on RANKER_FEATURES that splits on user and item columns."""
    rng = np.random.default_rng(3)
    # Ranges like the tiny lake's: counts of a few, smoothed CTRs of a few percent.
    scale = np.array([0.2 if n.endswith("_ctr_7d") else 3.0 for n in RANKER_FEATURES])
    x = rng.random((400, len(RANKER_FEATURES))) * scale
    ctr = x[:, RANKER_FEATURES.index("item_ctr_7d")] + x[:, RANKER_FEATURES.index("user_ctr_7d")]
    y = (ctr + 0.02 * rng.random(400) > 0.15).astype(int)
    data = lgb.Dataset(x, y, feature_name=list(RANKER_FEATURES), params={"verbose": -1})
    booster = lgb.train({"objective": "binary", "num_leaves": 7, "min_data_in_leaf": 5,
                         "verbose": -1}, data, num_boost_round=20)
    return BoosterRanker(booster, version="1")


def _candidate_model(users: list[int], items: list[int]):
    rng = np.random.default_rng(5)
    item_vecs = rng.normal(size=(len(items), 4)).astype(np.float32)
    index = faiss.IndexFlatIP(4)
    index.add(item_vecs)
    return CandidateModel(
        np.array(items, dtype=np.int64), item_vecs, np.array(users, dtype=np.int64),
        rng.normal(size=(len(users), 4)).astype(np.float32), index,
        np.array(items, dtype=np.int64), {"dim": 4}, version="1")


def test_a_flushed_online_store_is_named_counted_then_503_until_rematerialized(
        settings: Settings, tmp_path) -> None:
    """A real Redis, materialized then flushed (a lost online store): the answer names the
    missing features and counts them; a replica whose item table was read from the empty store
    answers 503; a new materialization makes it ready again without a restart."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    s = _on_port(settings, port, "serving_flushed").model_copy(update={
        "serving": settings.serving.model_copy(update={
            "item_refresh_s": 3600.0, "deadline_ms": 1000.0, "candidates_budget_ms": 500.0,
            "user_features_budget_ms": 500.0, "ranking_budget_ms": 500.0})})
    items, users = [100, 101, 102, 103], [1, 2, 3]
    write_lake(s.lake_dir, [
        *shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True),
        *shown_and_clicked(at(DAY2, 9), 1, 101, "r2"),
        *shown_and_clicked(at(DAY2, 10), 2, 100, "r3", clicked=True),
        *shown_and_clicked(at(DAY2, 11), 3, 102, "r4", position=2),
        *shown_and_clicked(at(DAY2, 12), 2, 103, "r5", clicked=True),
        *shown_and_clicked(at(DAY2, 13), 3, 103, "r6"),
    ])
    features_client = sync_redis_client(s.redis.url, 0.5)
    events_client = stream_client(s.redis.url, 0.5)

    async def ping() -> bool:
        return bool(await events_client.ping())

    try:
        run_all(s)
        ranker = _booster_ranker()
        source = AnnCandidateSource(_candidate_model(users, items))
        resources = Resources(events=RedisStreamSink(events_client), ping=ping,
                              n_candidates=len(items))
        maintainer = Maintainer(s, resources, ServingMetrics(), features_client)
        maintainer.models_checked_at = time.monotonic()  # models of this test, not MLflow's
        resources.candidates, resources.ranker = source, ranker
        resources.user_features = maintainer._user_reader(ranker)
        resources.item_features = maintainer._item_table(source, ranker)
        maintainer.items_loaded = True
        resources.rebuild()

        with TestClient(create_app(s, resources)) as client:
            before = client.get("/recommendations/1", params={"k": 4})
            assert before.status_code == 200 and before.json()["degraded"] == [], before.text
            assert len({i["score"] for i in before.json()["items"]}) > 1  # really ranked
            assert "recstack_item_features_share 1.0" in client.get("/metrics").text

            features_client.flushall()  # the online store is lost (a Redis without its data)
            body = client.get("/recommendations/1", params={"k": 4}).json()
            assert body["degraded"] == ["user_features_missing"], body
            metrics = client.get("/metrics").text
            assert 'recstack_degraded_total{reason="user_features_missing"} 1.0' in metrics

            # What ranking on the flushed store alone gives: the booster's constant, never served.
            empty_table = maintainer._item_table(source, ranker)
            assert empty_table.n_with_values == 0
            scorer = LocalScorer(ranker, resources.user_features, empty_table, 1.0)
            cands = source.candidates(1, len(items))
            scored = scorer.rank(1, cands, 1.0)
            assert scored.scores is None
            assert set(scored.degraded) == {"user_features_missing", "item_features_missing",
                                            "ranker_no_features"}
            nan_rows = np.full((len(items), len(ranker.feature_names)), np.nan, np.float32)
            assert np.ptp(ranker.score(nan_rows)) == 0  # the silent failure this guards

            # A replica that read its item table after the loss (a restart): not ready, 503.
            resources.item_features = empty_table
            resources.rebuild()
            resp = client.get("/recommendations/1")
            assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
            assert resp.json()["error"] == "not_ready" and "item features" in resp.json()["detail"]
            assert "recstack_item_features_share 0.0" in client.get("/metrics").text
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["dependencies"] == {"redis": "ok"}

            # Materialized again: the next maintainer pass reloads the table; ready, no restart.
            open_store(s).materialize(
                start_date=dt.datetime.combine(DAY1, dt.time(), dt.UTC) - dt.timedelta(days=1),
                end_date=dt.datetime.now(dt.UTC),
                feature_views=list(present_view_tables(s.features_dir)))
            maintainer.step()
            assert client.get("/readyz").status_code == 200
            after = client.get("/recommendations/1", params={"k": 4})
            assert after.status_code == 200 and after.json()["degraded"] == [], after.text
            assert after.json()["items"] == before.json()["items"]  # the same service again
    finally:
        features_client.close()
        stop_process(proc)
