"""/healthz, /readyz and /metrics."""

from __future__ import annotations

from serving.resources import Resources
from tests.unit.serving.conftest import make_resources


async def _down() -> bool:
    raise ConnectionError("refused")


def test_healthz_is_200_even_when_nothing_is_loaded(client_for) -> None:
    resp = client_for(Resources()).get("/healthz")
    assert resp.status_code == 200 and resp.json() == {"status": "alive"}


def test_readyz_is_503_before_load_and_names_what_is_missing(client_for) -> None:
    resp = client_for(Resources()).get("/readyz")
    assert resp.status_code == 503
    missing = resp.json()["missing"]
    assert {"candidates model", "ranker model", "item features"} <= set(missing)
    assert resp.json()["dependencies"] == {"redis": "unreachable"}  # no ping configured


def test_readyz_names_a_silent_redis_but_stays_200(client_for) -> None:
    """Readiness is the replica's own state; a Redis outage is served degraded (see
    test_readiness.py), so it is reported in the body, not as a 503."""
    resp = client_for(make_resources(ping=_down)).get("/readyz")
    assert resp.status_code == 200
    assert resp.json()["dependencies"] == {"redis": "unreachable"}


def test_readyz_is_200_with_versions_when_loaded(client_for) -> None:
    resp = client_for().get("/readyz")
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "ready" and body["model"] == {"candidates": "3", "ranker": "7"}


def test_metrics_have_stage_histograms_and_route_templates(client_for) -> None:
    client = client_for()
    assert client.get("/recommendations/5", params={"k": 3}).status_code == 200
    assert client.get("/recommendations/1", params={"k": 0}).status_code == 422
    text = client.get("/metrics").text
    for stage in ("candidates", "user_features", "item_features", "ranking", "serialize"):
        assert f'recstack_stage_duration_seconds_count{{stage="{stage}"}} 1.0' in text, stage
    assert 'recstack_stage_duration_seconds_bucket{le="0.005",stage="ranking"}' in text
    assert (
        'recstack_requests_total{code="200",route="/recommendations/{user_id}"} 1.0' in text
    )
    assert 'recstack_requests_total{code="422",route="/recommendations/{user_id}"} 1.0' in text
    route = 'route="/recommendations/{user_id}"'
    assert f'recstack_request_duration_seconds_bucket{{le="0.1",{route}}}' in text
    assert 'recstack_model_info{model="ranker",version="7"} 1.0' in text
    assert "/recommendations/5" not in text  # never an id in a label


def test_two_apps_have_separate_registries(client_for) -> None:
    a, b = client_for(), client_for()
    a.get("/recommendations/5")
    assert 'recstack_requests_total{code="200",route="/recommendations/{user_id}"} 1.0' in a.get(
        "/metrics").text
    assert 'code="200",route="/recommendations/{user_id}"' not in b.get("/metrics").text
