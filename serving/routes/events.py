"""``POST /events``: a validated batch appended to the event stream, or nothing at all."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from serving.deps import EventSinkDep, MetricsDep
from serving.errors import InvalidRequest, StreamBacklogFull, error_responses
from serving.events import MAX_PROBLEMS_SHOWN, EventBatch, EventRules
from serving.responses import json_response

router = APIRouter(tags=["events"])

_ACCEPTED_BODY = {"content": {"application/json": {"schema": {
    "type": "object", "required": ["accepted"],
    "properties": {"accepted": {"type": "integer", "minimum": 1}}}}}}
EVENT_RESPONSES = {
    202: {"description": "every event of the batch is in the stream", **_ACCEPTED_BODY},
    **error_responses(413, 422, 503),
}


async def get_event_rules(request: Request) -> EventRules:
    """The replica's rules, made on first use: its stack clock starts with the replica."""
    state = request.app.state
    rules = getattr(state, "event_rules", None)
    if rules is None:
        rules = state.event_rules = EventRules.of(state.settings)
    return rules


EventRulesDep = Annotated[EventRules, Depends(get_event_rules)]


@router.post("/events", status_code=202, responses=EVENT_RESPONSES)  # type: ignore[arg-type]
async def post_events(batch: EventBatch, rules: EventRulesDep, sink: EventSinkDep,
                      metrics: MetricsDep) -> Response:
    """202 ``{"accepted": n}`` once every event is in the stream; 422 naming each implausible
    event (``events.3.ts: ...``) and storing none; 503 if the stream is down or full."""
    problems = rules.batch_problems(batch.events)
    if problems:
        metrics.events_rejected.labels(reason="implausible").inc()
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = "; ..." if len(problems) > len(shown) else ""
        raise InvalidRequest("; ".join(shown) + more)
    try:
        n = await sink.append(batch.events)
    except StreamBacklogFull:
        metrics.events_rejected.labels(reason="backlog_full").inc()
        raise
    metrics.events_accepted.inc(n)
    return json_response({"accepted": n}, status_code=202)
