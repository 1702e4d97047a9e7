"""The users' seen history from the lake into Redis (``settings.seen``; layout:
recstack/history.py), the last step of ``recstack pipeline`` when a seen policy is on.

``POST /events`` keeps the history current as events arrive; this step gives it the events that
never went through the API (an imported dataset, a simulated lake, a flushed Redis). Writes
never move an item's time backwards and keep each user's newest ``max_per_user`` items, so
running it again, or while events arrive, changes nothing that is already newer.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import redis

from recstack import lake
from recstack.clock import stack_clock
from recstack.history import newest_per_user, oldest_counted, queue_add, recorded_types
from recstack.settings import Settings

USERS_PER_ROUND_TRIP = 500


class SeenHistoryError(RuntimeError):
    """Redis did not take the history; the message names the server, never its password."""


def seen_rows(settings: Settings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, epoch seconds) of the lake's events the policy records, in its window."""
    table = lake.read_events(settings.lake_dir).select(["user_id", "item_id", "ts",
                                                        "event_type"])
    kinds = sorted(recorded_types(settings.seen))
    table = table.filter(pc.is_in(table["event_type"], value_set=pa.array(kinds, pa.string())))
    micros = pc.cast(table["ts"], pa.timestamp("us", tz="UTC")).cast(pa.int64())
    seconds = micros.to_numpy().astype(np.float64) / 1e6
    keep = seconds >= oldest_counted(settings.seen, stack_clock(settings)())
    return (table["user_id"].to_numpy()[keep], table["item_id"].to_numpy()[keep],
            seconds[keep])


def load_seen_history(settings: Settings, client: Any = None) -> dict[str, float]:
    """Writes the lake's seen history to Redis; ``{"users", "items", "seconds"}``."""
    start = time.perf_counter()
    if settings.seen.policy == "none":
        return {"users": 0, "items": 0, "seconds": 0.0}
    users, items, seconds = seen_rows(settings)
    history = newest_per_user(zip(users.tolist(), items.tolist(), seconds.tolist(), strict=True))
    client = client or redis.Redis.from_url(settings.redis.url, socket_timeout=10)
    limit = settings.seen.max_per_user
    try:
        batch = list(history.items())
        for at in range(0, len(batch), USERS_PER_ROUND_TRIP):
            with client.pipeline(transaction=False) as pipe:
                for user, user_items in batch[at : at + USERS_PER_ROUND_TRIP]:
                    newest = dict(sorted(user_items.items(), key=lambda kv: kv[1])[-limit:])
                    queue_add(pipe, settings.seen, user, newest)
                pipe.execute()
    except redis.exceptions.RedisError as exc:
        raise SeenHistoryError(f"cannot write the seen history to Redis at "
                               f"{settings.redis.address}: {type(exc).__name__}") from exc
    return {"users": len(history), "items": sum(len(v) for v in history.values()),
            "seconds": time.perf_counter() - start}
