"""``POST /events``: validated events appended to the Redis Stream the lake sink consumes.

Each event is one stream entry whose fields are the Event's fields as strings (None omitted,
``ts`` ISO 8601), so a consumer rebuilds it with
``Event.model_validate({k.decode(): v.decode() for k, v in fields.items()})``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as redis_asyncio
from pydantic import BaseModel, ConfigDict, Field
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from recstack.clock import stack_clock
from recstack.history import newest_per_user, queue_add, recorded_types
from recstack.schemas import EVENTS_STREAM, Event, event_problems
from recstack.settings import SeenSettings, Settings
from serving.errors import StreamBacklogFull, StreamUnavailable

logger = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_PROBLEMS_SHOWN = 10


class EventBatch(BaseModel):
    """The body of ``POST /events``."""

    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH)


@dataclass(frozen=True)
class EventRules:
    """``event_problems`` bound to the stack's clock and the settings' window."""

    now: Callable[[], dt.datetime]
    lateness: dt.timedelta
    skew: dt.timedelta

    @classmethod
    def of(cls, settings: Settings) -> EventRules:
        return cls(stack_clock(settings), settings.events.allowed_lateness,
                   settings.events.clock_skew)

    def problems(self, event: Event) -> list[str]:
        return event_problems(event, self.now(), self.lateness, self.skew)

    def batch_problems(self, events: Sequence[Event]) -> list[str]:
        """``["events.3.ts: ...", ...]`` for every unacceptable event of a batch."""
        now = self.now()
        return [f"events.{i}.{p}" for i, e in enumerate(events)
                for p in event_problems(e, now, self.lateness, self.skew)]


def event_fields(event: Event) -> dict[str, str]:
    """The stream entry of one event: every non-null field as a string."""
    return {k: str(v) for k, v in event.model_dump(mode="json").items() if v is not None}


def stream_client(url: str, timeout_s: float) -> Any:
    """An async redis client for the stream that fails fast: short timeouts and no retry
    back-off (redis-py's default waits seconds); a failed write is a 503 the client retries,
    which is what Retry-After is for."""
    return redis_asyncio.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=max(timeout_s, 0.2),
        retry=Retry(NoBackoff(), 0),
    )


class RedisStreamSink:
    """``EventSink`` over a ``redis.asyncio.Redis``: one pipelined XADD per event, and in the
    same round trip the users' seen history when ``seen.policy`` keeps one.

    No trimming here (accepted events are never dropped before the lake sink reads them; the
    lake sink trims what it acknowledged), but a bound: a batch that would take the stream past
    ``max_entries`` is refused with 503 (``StreamBacklogFull``), so a stopped sink fills the
    stream up to a known size instead of Redis's memory.
    """

    def __init__(self, client: Any, stream: str = EVENTS_STREAM,
                 max_entries: int | None = None, seen: SeenSettings | None = None) -> None:
        self.client = client
        self.stream = stream
        self.max_entries = max_entries
        self.seen = seen or SeenSettings()
        self.recorded = recorded_types(self.seen)

    async def _check_backlog(self, n: int) -> None:
        if self.max_entries is None:
            return
        length = await self.client.xlen(self.stream)
        if length + n > self.max_entries:
            raise StreamBacklogFull(
                f"the event stream holds {length} entries (limit {self.max_entries}): the lake "
                "sink is behind; nothing was stored, retry later")

    async def append(self, events: Sequence[Event]) -> int:
        try:
            await self._check_backlog(len(events))
            async with self.client.pipeline(transaction=False) as pipe:
                for event in events:
                    pipe.xadd(self.stream, event_fields(event))
                self._queue_history(pipe, events)
                ids = (await pipe.execute())[: len(events)]
        except StreamBacklogFull:
            raise
        except Exception as exc:  # redis errors, timeouts, refused connections
            logger.warning("event stream write failed: %s: %s", type(exc).__name__, exc)
            raise StreamUnavailable("the event stream is unavailable; nothing was stored") from exc
        return len(ids)

    def _queue_history(self, pipe: Any, events: Sequence[Event]) -> None:
        """The seen history the policy keeps, in the same round trip as the stream entries."""
        if not self.recorded:
            return
        rows = ((e.user_id, e.item_id, e.ts.timestamp()) for e in events
                if e.event_type in self.recorded)
        for user, items in newest_per_user(rows).items():
            queue_add(pipe, self.seen, user, items)
