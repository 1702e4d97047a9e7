"""The seen filter's reader: a user's seen items from the history ``POST /events`` and the
pipeline keep in Redis (layout: recstack/history.py; policy: ``settings.seen``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

import numpy as np

from recstack.history import history_key, item_ids, oldest_counted
from recstack.settings import SeenSettings
from serving.breaker import CircuitBreaker
from serving.onlinestore import guarded


class RedisSeenReader:
    """``SeenReader`` over a sync ``redis.Redis``: one ZRANGEBYSCORE per request, through the
    replica's Redis ``breaker`` (while it is open, no call is made and the read fails)."""

    def __init__(self, client: Any, seen: SeenSettings, now: Callable[[], dt.datetime],
                 breaker: CircuitBreaker | None = None) -> None:
        self.client = client
        self.settings = seen
        self.now = now
        self.breaker = breaker

    def seen(self, user_id: int) -> np.ndarray:
        key = history_key(self.settings.policy, user_id)
        since = oldest_counted(self.settings, self.now())
        members = guarded(self.breaker, "seen history",
                          lambda: self.client.zrangebyscore(key, since, "+inf"))
        return item_ids(members)
