"""``GET /recommendations/{user_id}``: the two-stage recommendation."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Path, Query, Response

from serving.deps import MetricsDep, RecommenderDep, SettingsDep, TuningDep
from serving.errors import InvalidRequest
from serving.responses import JSON

router = APIRouter(tags=["recommendations"])


# A sync endpoint on purpose: the path is CPU work in C (faiss, numpy, LightGBM, which release
# the GIL) plus one blocking Redis round trip (HMGET). In the threadpool that round trip does
# not stall the event loop, so /healthz, /readyz, /metrics and POST /events stay responsive,
# and on 2 cores two requests can overlap their C work. The threadpool's queue is bounded by
# ConcurrencyLimitMiddleware (max_in_flight).
@router.get("/recommendations/{user_id}")
def get_recommendations(
    user_id: Annotated[int, Path(ge=0, description="a non-negative integer user id")],
    recommender: RecommenderDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    tuning: TuningDep,
    k: Annotated[int | None, Query(description="list size, 1..serving.k_max")] = None,
    x_request_id: Annotated[str | None, Header(max_length=128)] = None,
    x_deadline_ms: Annotated[
        float | None, Header(description="shorter deadline for this request, in ms")
    ] = None,
) -> Response:
    """Top ``k`` items for ``user_id``; unknown users get the popular list (cold start).

    The request's deadline is ``serving.deadline_ms`` unless ``X-Deadline-Ms`` asks for another
    (bounded by ``max_deadline_ms``); stages that cannot finish in time are skipped and named in
    ``degraded``.
    """
    k = settings.serving.k_default if k is None else k
    if not 1 <= k <= settings.serving.k_max:
        k_max = settings.serving.k_max
        raise InvalidRequest(f"k must be an integer between 1 and {k_max} (got {k})")
    deadline_ms = settings.serving.deadline_ms if x_deadline_ms is None else x_deadline_ms
    if not 0 < deadline_ms <= tuning.max_deadline_ms:
        raise InvalidRequest(
            f"X-Deadline-Ms must be a number of milliseconds in (0, {tuning.max_deadline_ms:g}]"
            f" (got {x_deadline_ms:g})"
        )
    rec = recommender.recommend(user_id, k, deadline_ms / 1000)

    t = time.perf_counter()
    payload = {
        "request_id": x_request_id or uuid.uuid4().hex,
        "user_id": user_id,
        "items": [{"item_id": i.item_id, "score": i.score, "source": i.source} for i in rec.items],
        "model": recommender.versions,
        "degraded": rec.degraded,
        "cold_start": rec.cold_start,
    }
    body = orjson.dumps(payload)
    rec.stage_seconds["serialize"] = time.perf_counter() - t

    for stage, seconds in rec.stage_seconds.items():
        metrics.stage_duration.labels(stage=stage).observe(seconds)
    for reason in rec.degraded:
        metrics.degraded.labels(reason=reason).inc()
    if rec.cold_start:
        metrics.cold_start.inc()
    metrics.candidates_count.observe(rec.n_candidates)
    metrics.deadline.observe(deadline_ms / 1000)
    return Response(content=body, media_type=JSON)
