"""The drift monitor against a real Redis stream: CTR drift alerts and retrains once per
cool-down; an upstream data bug holds retraining; the gauges are served on /metrics."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import redis as redis_lib

from monitoring.events import EVENTS_STREAM
from monitoring.monitor import DriftMonitor
from monitoring.references import ChampionReference
from recstack.settings import Settings
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def client(redis_server: int) -> Iterator[redis_lib.Redis]:
    c = redis_lib.Redis(port=redis_server)
    c.delete(EVENTS_STREAM)
    yield c
    c.delete(EVENTS_STREAM)


def _post(client: redis_lib.Redis, n_requests: int, ctr: float, seed: int,
          first_position: int = 0, version: str = "candidates=1,ranker=1") -> None:
    """What serving's POST /events appends: one entry per event, fields as strings."""
    rng = np.random.default_rng(seed)
    ts = dt.datetime(2026, 1, 5, tzinfo=dt.UTC).isoformat()
    pipe = client.pipeline(transaction=False)
    for r in range(n_requests):
        for p in range(10):
            fields = {"event_id": f"{seed}-{r}-{p}", "ts": ts, "user_id": str(r % 97),
                      "item_id": str((r * 7 + p) % 400), "request_id": f"{seed}-{r}",
                      "position": str(p + first_position), "model_version": version}
            pipe.xadd(EVENTS_STREAM, {**fields, "event_type": "impression"})
            if rng.random() < ctr:
                pipe.xadd(EVENTS_STREAM, {**fields, "event_id": fields["event_id"] + "c",
                                          "event_type": "click"})
    pipe.execute()


def _monitor(settings: Settings, client: redis_lib.Redis, calls: list[str],
             now: dict[str, float]) -> DriftMonitor:
    s = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={
        "ctr_baseline_impressions": 3000, "ctr_window_impressions": 2000, "ctr_z": 3.0,
        "consecutive": 2, "cooldown_s": 3600.0})})
    ref = ChampionReference({"candidates": "1", "ranker": "1"}, {"candidates": 1e9,
                                                                 "ranker": 1e9})
    return DriftMonitor(s, redis=client, retrainer=lambda cause: calls.append(cause) or 0,
                        clock=lambda: now["t"], background_retrain=False,
                        reference_loader=lambda: ref)


def test_ctr_drop_alerts_and_retrains_once_per_cooldown(settings: Settings,
                                                        client: redis_lib.Redis) -> None:
    calls: list[str] = []
    now = {"t": 0.0}
    monitor = _monitor(settings, client, calls, now)
    for i in range(6):  # 6 checks of 1,000 impressions at 10% CTR
        _post(client, 100, 0.10, seed=i)
        result = monitor.check()
        assert result.alerting == [], result.values
        now["t"] += 600
    for i in range(6):  # CTR halves
        _post(client, 100, 0.05, seed=100 + i)
        monitor.check()
        now["t"] += 600
    results = monitor.history[6:]
    assert any("online_ctr_ratio" in r.alerting for r in results)
    assert len(calls) == 1, calls  # more alerting checks, but one cool-down
    assert "online_ctr_ratio" in calls[0]
    assert [r.retrain_cause for r in results].count(None) == len(results) - 1
    now["t"] += 3600  # after the cool-down, a further drop retrains again
    for i in range(3):
        _post(client, 100, 0.015, seed=200 + i)
        monitor.check()
        now["t"] += 600
    assert len(calls) == 2


def test_upstream_bug_holds_retraining(settings: Settings, client: redis_lib.Redis) -> None:
    calls: list[str] = []
    monitor = _monitor(settings, client, calls, {"t": 0.0})
    _post(client, 50, 0.1, seed=1)
    assert monitor.check().alerting == []
    for i in range(2):  # 1-based positions and no model version
        _post(client, 50, 0.1, seed=10 + i, first_position=1, version="")
        result = monitor.check()
    assert set(result.alerting) == {"events_without_top_position", "events_null_model_version"}
    assert result.held_cause and calls == []
    hold = json.loads(monitor.hold_path.read_text())
    assert "events_without_top_position" in hold["cause"]
    _post(client, 50, 0.1, seed=20)  # fixed upstream
    assert monitor.check().alerting == []
    assert not monitor.hold_path.exists()


def test_gauges_on_metrics_endpoint(settings: Settings, client: redis_lib.Redis) -> None:
    from prometheus_client import start_http_server

    monitor = _monitor(settings, client, [], {"t": 0.0})
    _post(client, 100, 0.1, seed=3)
    monitor.check()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=monitor.metrics.registry)
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        server.shutdown()
        thread.join(timeout=5)
    assert "recstack_monitor_checks_total 1.0" in text
    assert 'recstack_model_created_timestamp_seconds{alias="champion",model="ranker",version="1"}' in text
    assert "recstack_events_requests_without_top_ratio 0.0" in text
    assert "recstack_catalogue_coverage_ratio" in text
