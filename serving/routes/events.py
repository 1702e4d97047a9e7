"""``POST /events``: a validated batch appended to the event stream, or nothing at all."""

from __future__ import annotations

from fastapi import APIRouter, Response

from serving.deps import EventSinkDep, MetricsDep
from serving.events import EventBatch
from serving.responses import json_response

router = APIRouter(tags=["events"])


@router.post("/events", status_code=202)
async def post_events(batch: EventBatch, sink: EventSinkDep, metrics: MetricsDep) -> Response:
    """202 ``{"accepted": n}`` once every event is in the stream; 503 if the stream is down."""
    n = await sink.append(batch.events)
    metrics.events_accepted.inc(n)
    return json_response({"accepted": n}, status_code=202)
