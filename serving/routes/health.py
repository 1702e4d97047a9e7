"""``/healthz`` (the process is alive), ``/readyz`` (it can serve), ``/metrics``."""

from __future__ import annotations

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
    """200 with the model versions when models, features and Redis are ready; else 503."""
    missing = resources.missing()
    recommender = resources.recommender  # read once: the maintainer swaps it from a thread
    if recommender is None and not missing:  # parts loaded, the recommender not composed yet
        missing.append("recommender (being composed)")
    if not await resources.redis_ok():
        missing.append("redis (no PING answer)")
    if missing:
        body = {"status": "not_ready", "missing": missing, "last_error": resources.last_error}
        return json_response(body, status_code=503, headers={"Retry-After": "1"})
    assert recommender is not None
    return json_response({"status": "ready", "model": recommender.versions})


@router.get("/metrics")
async def metrics_endpoint(metrics: MetricsDep) -> Response:
    return Response(content=metrics.render(), media_type=CONTENT_TYPE_LATEST)
