"""The stage services of split mode: ``GET /candidates/{user_id}`` and ``POST /rank/{user_id}``
(wire format in ``serving.remote``)."""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Header, Path, Query, Request, Response

from recstack.schemas import MAX_ID
from serving.deps import MetricsDep, RecommenderDep
from serving.errors import InvalidRequest, error_responses
from serving.recommender import LocalScorer
from serving.remote import OCTETS, decode_candidates, encode_candidates

candidates_router = APIRouter(tags=["stages"])
ranking_router = APIRouter(tags=["stages"])


# async, inline on the event loop: ~0.5 ms of faiss and numpy and no I/O; a threadpool hop
# per call cost more than the work (the candidate service's request p50 was 20x its stage p50).
@candidates_router.get("/candidates/{user_id}",
                       responses=error_responses(422, 503))  # type: ignore[arg-type]
async def get_candidates(
    user_id: Annotated[int, Path(ge=0, le=MAX_ID)],
    recommender: RecommenderDep,
    metrics: MetricsDep,
    n: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> Response:
    """Stage 1 for one user: ids and inner-product scores, ANN hits first."""
    t = time.perf_counter()
    cands = recommender.candidate_source.candidates(user_id, n)
    metrics.stage_duration.labels(stage="candidates").observe(time.perf_counter() - t)
    metrics.candidates_count.observe(len(cands))
    headers = {
        "x-n-ann": str(cands.n_ann), "x-cold-start": "1" if cands.cold_start else "0",
        "x-n-fresh": str(cands.n_fresh),
        "x-model-version": str(recommender.candidate_source.version),
    }
    return Response(encode_candidates(cands), media_type=OCTETS, headers=headers)


@ranking_router.post("/rank/{user_id}",
                     responses=error_responses(413, 422, 503))  # type: ignore[arg-type]
async def rank(
    user_id: Annotated[int, Path(ge=0, le=MAX_ID)],
    request: Request,
    recommender: RecommenderDep,
    metrics: MetricsDep,
    x_budget_ms: Annotated[float, Header(gt=0, le=10_000)] = 100.0,
) -> Response:
    """Stage 2 for one user's candidates: features + ranker (``LocalScorer``), within budget."""
    body = await request.body()
    if not body or len(body) % 12:
        raise InvalidRequest("the body must be n int64 item ids followed by n float32 scores")
    cands = decode_candidates(body, n_ann=0, cold_start=False)
    scorer = recommender.scorer
    assert isinstance(scorer, LocalScorer)
    # Inline: ~1 ms of CPU and one Redis HMGET (~0.1 ms, 50 ms socket timeout behind the
    # breaker); the threadpool hop cost more than the work.
    scored = scorer.rank(user_id, cands, x_budget_ms / 1000)
    for stage, seconds in scored.stage_seconds.items():
        metrics.stage_duration.labels(stage=stage).observe(seconds)
    for reason in scored.degraded:
        metrics.degraded.labels(reason=reason).inc()
    headers = {
        "x-degraded": ",".join(scored.degraded),
        "x-stage-seconds": ",".join(f"{k}={v:.6f}" for k, v in scored.stage_seconds.items()),
        "x-model-version": scorer.version,
    }
    content = b"" if scored.scores is None else np.asarray(scored.scores, np.float64).tobytes()
    return Response(content, media_type=OCTETS, headers=headers)
