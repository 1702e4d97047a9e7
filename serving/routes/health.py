"""``/healthz`` (the process is alive), ``/readyz`` (it can serve), ``/metrics``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from serving.deps import MetricsDep, ResourcesDep
from serving.responses import json_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    return json_response({"status": "alive"})


@router.get("/readyz")
async def readyz(resources: ResourcesDep) -> Response:
    """200 with the model versions when this replica's own state can serve (models loaded, an
    item table with values, the event stream connected); else 503 naming what is missing.

    The shared Redis is reported in ``dependencies`` but never makes a replica unready: its
    outage is served degraded (``user_features_unavailable``) by every replica alike, and a
    503 here would take them all out of the balancer at once.
    """
    missing = resources.missing()
    recommender = resources.recommender  # read once: the maintainer swaps it from a thread
    if recommender is None and not missing:  # parts loaded, the recommender not composed yet
        missing.append("recommender (being composed)")
    body: dict[str, Any] = {
        "dependencies": {"redis": "ok" if await resources.redis_ok() else "unreachable"}}
    counts = resources.item_feature_counts()
    if counts is not None:
        body["item_features"] = {"items": counts[0], "with_values": counts[1],
                                 "share": round(resources.item_feature_share(), 4)}
    if missing:
        body = {"status": "not_ready", "missing": missing, "last_error": resources.last_error,
                **body}
        return json_response(body, status_code=503, headers={"Retry-After": "1"})
    assert recommender is not None
    return json_response({"status": "ready", "model": recommender.versions, **body})


@router.get("/metrics")
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST)
