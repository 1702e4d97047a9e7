"""``GET /recommendations/{user_id}``: the two-stage recommendation."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from recstack.schemas import MAX_ID
from serving.arms import Experiment, ShadowJob
from serving.deps import ExperimentDep, MetricsDep, RecommenderDep, SettingsDep, TuningDep
from serving.errors import InvalidRequest, error_responses
from serving.metrics import ServingMetrics
from serving.recommender import Recommendation, Recommender
from serving.responses import JSON

logger = logging.getLogger(__name__)
router = APIRouter(tags=["recommendations"])
ARM_UNAVAILABLE = "arm_unavailable"  # the arm's models are not loaded: served by the champion
ARM_FAILED = "arm_failed"  # the arm's recommender raised: served by the champion


# In-process mode the whole path is ~1 ms of CPU (faiss, numpy, LightGBM) plus one Redis HMGET
# of ~0.1 ms (50 ms socket timeout behind the breaker): it runs inline on the event loop. A
# threadpool hop per request (queue, wake-up, GIL hand-offs between the loop and the worker)
# made the stages wait under load: profiled, ~38% of the GIL time went to the hand-off and the
# Redis reply waited 10-50 ms for the GIL. Split mode waits on two HTTP calls: those run in
# the threadpool, so the loop stays free. In-flight requests are bounded by
# ConcurrencyLimitMiddleware (max_in_flight) either way.
_ITEM = {"type": "object", "required": ["item_id", "score", "source"],
         "properties": {"item_id": {"type": "integer"}, "score": {"type": "number"},
                        "source": {"type": "string"}}}
RECOMMENDATION_RESPONSES = {
    200: {"description": "the top k items", "content": {"application/json": {"schema": {
        "type": "object",
        "required": ["request_id", "user_id", "items", "model", "degraded", "cold_start"],
        "properties": {
            "request_id": {"type": "string"}, "user_id": {"type": "integer"},
            "items": {"type": "array", "items": _ITEM},
            "model": {"type": "object", "additionalProperties": {"type": "string"}},
            "arm": {"type": ["string", "null"]},
            "degraded": {"type": "array", "items": {"type": "string"}},
            "cold_start": {"type": "boolean"}}}}}},
    **error_responses(422, 503),
}


@router.get("/recommendations/{user_id}", responses=RECOMMENDATION_RESPONSES)  # type: ignore[arg-type]
async def get_recommendations(
    user_id: Annotated[int, Path(ge=0, le=MAX_ID, description="an integer user id, 0..2^63-1")],
    recommender: RecommenderDep,
    settings: SettingsDep,
    metrics: MetricsDep,
    tuning: TuningDep,
    experiment: ExperimentDep,
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
    arm = None
    waits_on_http = getattr(recommender.candidate_source, "remote", False)
    call = run_in_threadpool if waits_on_http else _inline
    if experiment is None:
        rec = await call(recommender.recommend, user_id, k, deadline_ms / 1000)
        served_by = recommender
    else:
        arm = experiment.choose(user_id).name
        rec, served_by = await call(_recommend_arm, experiment, arm, recommender, metrics,
                                    user_id, k, deadline_ms / 1000)

    t = time.perf_counter()
    payload = {
        "request_id": x_request_id or uuid.uuid4().hex,
        "user_id": user_id,
        "items": [{"item_id": i.item_id, "score": i.score, "source": i.source} for i in rec.items],
        "model": served_by.versions,
        "arm": arm,
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


async def _inline(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _recommend_arm(
    experiment: Experiment, name: str, champion: Recommender, metrics: ServingMetrics,
    user_id: int, k: int, deadline_s: float,
) -> tuple[Recommendation, Any]:
    """The recommendation of the user's arm (the champion's while the arm is not loaded, or if
    it raised); its latency and outcome go to the arm's metrics and canary guard, and in shadow
    mode the shadow arm is queued to score the same request."""
    arm = experiment.arm(name)
    served_by: Any = champion if arm.main or arm.recommender is None else arm.recommender
    t = time.perf_counter()
    ok = True
    try:
        rec = served_by.recommend(user_id, k, deadline_s)
    except Exception:
        if served_by is champion:
            raise
        logger.warning("arm %s failed; serving the champion", name, exc_info=True)
        ok, served_by = False, champion
        rec = champion.recommend(user_id, k, deadline_s)
        rec.degraded.append(ARM_FAILED)
    seconds = time.perf_counter() - t
    if served_by is champion and not arm.main and ok:
        rec.degraded.append(ARM_UNAVAILABLE)
    elif ok:
        ok = not any(reason.endswith("_unavailable") for reason in rec.degraded)
    metrics.arm_requests.labels(arm=name).inc()
    metrics.arm_duration.labels(arm=name).observe(seconds)
    if not ok:
        metrics.arm_errors.labels(arm=name).inc()
    experiment.record(name, ok, seconds)
    if experiment.shadow is not None:
        experiment.shadow.submit(
            ShadowJob(user_id, k, deadline_s, [i.item_id for i in rec.items]))
    return rec, served_by
