"""``POST /events``: validated events appended to the Redis Stream the lake sink consumes.

Each event is one stream entry whose fields are the Event's fields as strings (None omitted,
``ts`` ISO 8601), so a consumer rebuilds it with
``Event.model_validate({k.decode(): v.decode() for k, v in fields.items()})``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from recstack.schemas import EVENTS_STREAM, Event
from serving.errors import StreamUnavailable

logger = logging.getLogger(__name__)

MAX_BATCH = 1000


class EventBatch(BaseModel):
    """The body of ``POST /events``."""

    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


def event_fields(event: Event) -> dict[str, str]:
    """The stream entry of one event: every non-null field as a string."""
    return {k: str(v) for k, v in event.model_dump(mode="json").items() if v is not None}


def stream_client(url: str, timeout_s: float) -> Any:
    """An async redis client for the stream that fails fast: short timeouts and no retry
    back-off (redis-py's default waits seconds); a failed write is a 503 the client retries,
    which is what Retry-After is for."""
    import redis.asyncio as redis_asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis_asyncio.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=max(timeout_s, 0.2),
        retry=Retry(NoBackoff(), 0),
    )


class RedisStreamSink:
    """``EventSink`` over a ``redis.asyncio.Redis``: one pipelined XADD per event, no trimming

    (accepted events are never dropped before the sink reads them).
    """

    def __init__(self, client: Any, stream: str = EVENTS_STREAM) -> None:
        self.client = client
        self.stream = stream

    async def append(self, events: Sequence[Event]) -> int:
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(self.stream, event_fields(event))
                ids = await pipe.execute()
        except Exception as exc:  # redis errors, timeouts, refused connections
            logger.warning("event stream write failed: %s: %s", type(exc).__name__, exc)
            raise StreamUnavailable("the event stream is unavailable; nothing was stored") from exc
        return len(ids)
