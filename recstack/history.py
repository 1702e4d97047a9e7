"""A user's seen items in Redis: the one layout that ``POST /events``, the lake backfill of
``recstack pipeline`` and the serving filter share (``settings.seen``).

One sorted set per user and policy, key ``recstack:seen:<policy>:<user_id>`` (a changed policy
starts from the lake, not from another policy's history): each member is an item id (ASCII
decimal), its score the epoch seconds of the newest recorded event of that item for that user
(the event's own time, so a simulated calendar works as a real one). Writes keep the newest
``max_per_user`` members, so a user's history is bounded however long they stay. Which events
are recorded depends on the policy: clicks for ``clicked``, impressions and clicks for
``shown``; nothing for ``none``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from recstack.settings import SeenSettings

KEY_PREFIX = "recstack:seen:"
RECORDED = {"none": frozenset(), "clicked": frozenset({"click"}),
            "shown": frozenset({"impression", "click"})}


def history_key(policy: str, user_id: int) -> str:
    return f"{KEY_PREFIX}{policy}:{int(user_id)}"


def recorded_types(seen: SeenSettings) -> frozenset[str]:
    """The event types the policy records (empty: keep no history)."""
    return RECORDED[seen.policy]


def queue_add(pipe: Any, seen: SeenSettings, user_id: int, items: Mapping[int, float]) -> None:
    """Queue on a redis pipeline: record ``items`` ({item id: epoch seconds}) for ``user_id``,
    never moving an item's time backwards (``GT``), then drop all but the newest
    ``seen.max_per_user`` members."""
    if not items:
        return
    key = history_key(seen.policy, user_id)
    max_per_user = seen.max_per_user
    pipe.zadd(key, {str(int(i)): float(t) for i, t in items.items()}, gt=True)
    pipe.zremrangebyrank(key, 0, -(max_per_user + 1))


def newest_per_user(rows: Iterable[tuple[int, int, float]]) -> dict[int, dict[int, float]]:
    """{user: {item: newest epoch seconds}} of (user, item, epoch seconds) rows."""
    out: dict[int, dict[int, float]] = {}
    for user, item, ts in rows:
        items = out.setdefault(int(user), {})
        if ts > items.get(int(item), float("-inf")):
            items[int(item)] = float(ts)
    return out


def oldest_counted(seen: SeenSettings, now: dt.datetime) -> float:
    """The earliest event time (epoch seconds) that still counts: any for ``clicked``, the last
    ``window_days`` for ``shown``."""
    if seen.policy != "shown":
        return float("-inf")
    return (now - dt.timedelta(days=seen.window_days)).timestamp()


def item_ids(members: Iterable[bytes | str]) -> np.ndarray:
    """The int64 item ids of sorted-set members."""
    return np.fromiter((int(m) for m in members), dtype=np.int64)
