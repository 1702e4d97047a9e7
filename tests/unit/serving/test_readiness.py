"""A replica that is not ready answers 503 on ``/recommendations`` (the balancer moves the request
to a ready one); readiness is the replica's own state, never a shared dependency's outage."""

from __future__ import annotations

import datetime as dt

import numpy as np
from fastapi.testclient import TestClient

from recstack.schemas import ITEM_FEATURES
from recstack.settings import Settings
from serving.app import create_app
from serving.features import ItemFeatureTable
from serving.metrics import ServingMetrics
from serving.onlinestore import RedisFeatureReader
from serving.resources import Resources
from tests.unit.serving.conftest import FakeSink, FakeUserFeatures, make_resources, tiny_model
from tests.unit.serving.test_maintainer import _with_registry, world  # noqa: F401 - fixture
from tests.unit.serving.test_missing_features import ROOMY, serving_settings  # noqa: F401


async def _down() -> bool:
    raise ConnectionError("refused")


def _empty_table() -> ItemFeatureTable:
    ids = tiny_model().item_ids
    return ItemFeatureTable(ids, np.full((len(ids), len(ITEM_FEATURES)), np.nan, dtype=np.float32))


def test_an_empty_online_store_is_503_with_retry_after_naming_what_is_missing(client_for) -> None:
    client = client_for(make_resources(item_features=_empty_table()))
    resp = client.get("/recommendations/4")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    body = resp.json()
    assert body["error"] == "not_ready"
    assert "item features" in body["detail"] and "0 of 800" in body["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert any(m.startswith("item features") for m in ready.json()["missing"])
    # Never a silently worse 200: nothing was served, nothing counted as served.
    assert 'recstack_requests_total{code="503",route="/recommendations/{user_id}"} 1.0' in (
        client.get("/metrics").text)


def test_redis_down_keeps_the_replica_ready_and_serving_degraded(client_for) -> None:
    """Redis is shared by every replica: its outage is answered in degraded mode (the breaker,
    ``user_features_unavailable``), so it must not take every replica out of the balancer."""
    resources = make_resources(ping=_down, user_features=FakeUserFeatures(fail=True))
    client = client_for(resources)
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["dependencies"] == {"redis": "unreachable"}
    resp = client.get("/recommendations/4", params={"k": 5})
    assert resp.status_code == 200
    assert resp.json()["degraded"] == ["user_features_unavailable"]


def test_readyz_reports_redis_when_it_answers(client_for) -> None:
    body = client_for().get("/readyz").json()
    assert body["status"] == "ready" and body["dependencies"] == {"redis": "ok"}


def test_the_event_stream_is_not_needed_to_recommend(client_for) -> None:
    client = client_for(make_resources(events=None))
    assert client.get("/readyz").status_code == 503  # /events cannot work
    assert client.get("/recommendations/4").status_code == 200


def _app_on(resources: Resources) -> TestClient:
    client = TestClient(create_app(Settings(serving=ROOMY), resources))
    client.__enter__()
    return client


def test_turns_ready_without_a_restart_when_a_materialization_lands(
        world, monkeypatch, tmp_path) -> None:  # noqa: F811 - the fixture
    empty = {"on": True}

    def online_store(self, entities, chunk=2000):
        if empty["on"]:
            return np.full((len(entities), len(self.features)), np.nan, dtype=np.float32)
        rows = np.arange(len(entities), dtype=np.float32)[:, None]  # values that rank
        return np.repeat(rows, len(self.features), axis=1)

    monkeypatch.setattr(RedisFeatureReader, "read_many", online_store)
    maintainer, resources, registry = _with_registry(tmp_path)
    maintainer.step()
    # The maintainer's Redis is a dummy here: user features from a fake that has them.
    resources.events, resources.user_features = FakeSink(), FakeUserFeatures()
    client = _app_on(resources)
    try:
        assert client.get("/recommendations/4").status_code == 503
        maintainer.step()  # nothing new in the store: still not ready
        assert client.get("/readyz").status_code == 503

        empty["on"] = False  # the re-materialization writes the rows and the registry
        world["store"].intervals.append((dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
                                         dt.datetime(2026, 1, 3, tzinfo=dt.UTC)))
        registry.write_bytes(b"materialized")
        maintainer.step()
        assert client.get("/readyz").status_code == 200
        resp = client.get("/recommendations/4")
        assert resp.status_code == 200 and resp.json()["degraded"] == []
    finally:
        client.__exit__(None, None, None)


def test_an_empty_table_is_read_again_even_without_a_new_materialization(
        world, monkeypatch, tmp_path) -> None:  # noqa: F811 - the fixture
    """Redis came back with its data (its append-only file) after the table was read empty:
    no materialization stamp changes, the replica still turns ready at the next poll."""
    empty = {"on": True, "reads": 0}

    def online_store(self, entities, chunk=2000):
        empty["reads"] += 1
        fill = np.nan if empty["on"] else 1.0
        return np.full((len(entities), len(self.features)), fill, dtype=np.float32)

    monkeypatch.setattr(RedisFeatureReader, "read_many", online_store)
    maintainer, resources, _ = _with_registry(tmp_path)
    maintainer.step()
    assert any(m.startswith("item features") for m in resources.missing())
    rebuilds = maintainer.rebuilds
    maintainer.step()  # still empty: read again, nothing swapped
    assert empty["reads"] == 2 and maintainer.rebuilds == rebuilds

    empty["on"] = False
    maintainer.step()
    assert resources.missing() == ["event stream"]
    reads = empty["reads"]
    maintainer.step()  # has values now: the steady state, no read
    assert empty["reads"] == reads


def test_the_share_gauge_follows_the_maintainers_table(world, monkeypatch,
                                                       tmp_path) -> None:  # noqa: F811
    monkeypatch.setattr(RedisFeatureReader, "read_many", lambda self, e, chunk=2000: np.ones(
        (len(e), len(self.features)), dtype=np.float32))
    maintainer, resources, _ = _with_registry(tmp_path)
    maintainer.step()
    metrics = ServingMetrics()
    metrics.track_item_feature_share(resources.item_feature_share)
    assert "recstack_item_features_share 1.0" in metrics.render().decode()
