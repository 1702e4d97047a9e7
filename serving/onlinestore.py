"""A fast reader of Feast's Redis online layout: one HMGET per user, no Feast on the hot path.

The layout (keys, hash fields, value bytes) is the kernel codec's, ``recstack.feastlayout``.
``get_online_features`` wraps the same HMGET in registry look-ups, protobuf objects and a
response builder; for 4 numbers per request that wrapping is most of its cost. The readers are
checked against ``get_online_features`` in tests/integration/test_serving_features.py.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from recstack.feastlayout import (
    composite_key_prefixes,
    decode_value,
    entity_key_prefix,
    field_key,
    int64_value,
    pack_int64,
    ts_field,
)
from serving.breaker import CircuitBreaker
from serving.errors import FeatureUnavailable

logger = logging.getLogger(__name__)


class RedisFeatureReader:
    """Reads one feature view's numeric features for int64 entities straight from Redis.

    ``client`` is a sync ``redis.Redis`` (thread-safe through its pool; short socket timeouts).
    ``read`` is one HMGET; ``read_many`` one pipeline of HMGETs. Both go through ``breaker``
    when given: while it is open they raise ``FeatureUnavailable`` without touching Redis.
    """

    def __init__(
        self,
        client: Any,
        project: str,
        view: str,
        features: Sequence[str],
        join_key: str,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.client = client
        self.project = project.encode()
        self.view = view
        self.features = list(features)
        self.breaker = breaker
        self._prefix = entity_key_prefix(join_key)
        self._fields = [field_key(view, f) for f in self.features] + [ts_field(view)]

    def key(self, entity: int) -> bytes:
        return self._prefix + pack_int64(entity) + self.project

    def read(self, entity: int) -> np.ndarray:
        """Features of one entity, float32 in ``features`` order (NaN where missing)."""
        values = self._guarded(lambda: self.client.hmget(self.key(entity), self._fields))
        return np.array([decode_value(v) for v in values[:-1]], dtype=np.float32)

    def read_many(self, entities: Sequence[int], chunk: int = 2000) -> np.ndarray:
        """Features of many entities, ``[len(entities), n_features]`` float32 (NaN = missing)."""
        out = np.full((len(entities), len(self.features)), np.nan, dtype=np.float32)
        for start in range(0, len(entities), chunk):
            part = entities[start : start + chunk]

            def fetch(part: Sequence[int] = part) -> list:
                with self.client.pipeline(transaction=False) as pipe:
                    for e in part:
                        pipe.hmget(self.key(int(e)), self._fields)
                    return pipe.execute()

            for i, values in enumerate(self._guarded(fetch)):
                out[start + i] = [decode_value(v) for v in values[:-1]]
        return out

    def _guarded(self, call: Any) -> Any:
        return guarded(self.breaker, self.view, call)


def guarded(breaker: CircuitBreaker | None, what: str, call: Any) -> Any:
    """``call()`` through ``breaker``: while it is open no call is made; any failure (timeouts,
    refused connections, protocol errors) counts against it and raises ``FeatureUnavailable``
    naming ``what``."""
    if breaker is not None and not breaker.allow():
        raise FeatureUnavailable(f"{what}: circuit open")
    try:
        result = call()
    except Exception as exc:
        if breaker is not None:
            breaker.record(ok=False)
        raise FeatureUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
    if breaker is not None:
        breaker.record(ok=True)
    return result


def sync_redis_client(url: str, timeout_s: float, max_connections: int = 64) -> Any:
    """A sync redis-py client that fails fast: short timeouts, no retries, bounded pool."""
    pool = redis.BlockingConnectionPool.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=max(timeout_s, 0.2),
        max_connections=max_connections, timeout=timeout_s,
    )
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


class RedisUserContextReader:
    """A user's features of several views plus the user x category rows of some categories,
    in ONE Redis round trip (a pipeline of HMGETs: the user's hash, one hash per category).

    Views keyed by user_id share one Redis hash per user (Feast writes every view of an entity
    into the entity's hash), so all user features are one HMGET. ``names`` are the user
    features in the order given; ``category_names`` the user x category features.
    ``read`` (user features only) satisfies ``UserFeatureReader``; ``read_with_categories``
    adds a ``[len(categories), len(category_names)]`` matrix (NaN: no row, e.g. a category the
    user never clicked).
    """

    def __init__(
        self,
        client: Any,
        project: str,
        user_views: Sequence[tuple[str, Sequence[str]]],
        category_view: tuple[str, Sequence[str]] | None = None,
        breaker: CircuitBreaker | None = None,
        user_key: str = "user_id",
        category_key: str = "category",
    ) -> None:
        self.client = client
        self.project = project.encode()
        self.breaker = breaker
        self.names = [n for _, names in user_views for n in names]
        self._user_fields = [field_key(v, n) for v, names in user_views for n in names]
        self._user_prefix = entity_key_prefix(user_key)
        self.category_names = list(category_view[1]) if category_view else []
        self._cat_fields = ([field_key(category_view[0], n) for n in category_view[1]]
                            if category_view else [])
        prefix, order = composite_key_prefixes([user_key, category_key])
        self._cat_prefix, self._user_first = prefix, order[0] == user_key
        self.label = ",".join(v for v, _ in user_views) or "user features"

    def user_key(self, user_id: int) -> bytes:
        return self._user_prefix + pack_int64(user_id) + self.project

    def category_key(self, user_id: int, category: int) -> bytes:
        u, c = int64_value(user_id), int64_value(category)
        return self._cat_prefix + (u + c if self._user_first else c + u) + self.project

    def read(self, user_id: int) -> np.ndarray:
        return self.read_with_categories(user_id, ())[0]

    def read_with_categories(
        self, user_id: int, categories: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        cats = [int(c) for c in categories] if self._cat_fields else []

        def fetch() -> list:
            if not cats:
                return [self.client.hmget(self.user_key(user_id), self._user_fields)]
            with self.client.pipeline(transaction=False) as pipe:
                if self._user_fields:
                    pipe.hmget(self.user_key(user_id), self._user_fields)
                for c in cats:
                    pipe.hmget(self.category_key(user_id, c), self._cat_fields)
                replies = pipe.execute()
            return replies if self._user_fields else [[], *replies]

        by_cat = np.full((len(categories), len(self.category_names)), np.nan, dtype=np.float32)
        if not self._user_fields and not cats:
            return np.empty(0, np.float32), by_cat
        replies = _guarded(self.breaker, self.label, fetch)
        user = np.array([decode_value(v) for v in replies[0]], dtype=np.float32)
        for row, values in enumerate(replies[1:]):
            by_cat[row] = [decode_value(v) for v in values]
        return user, by_cat


def _guarded(breaker: CircuitBreaker | None, label: str, call: Any) -> Any:
    """``call()`` behind ``breaker``: FeatureUnavailable when open or when the call fails."""
    if breaker is not None and not breaker.allow():
        raise FeatureUnavailable(f"{label}: circuit open")
    try:
        result = call()
    except Exception as exc:  # timeouts, refused connections, protocol errors
        if breaker is not None:
            breaker.record(ok=False)
        raise FeatureUnavailable(f"{label}: {type(exc).__name__}: {exc}") from exc
    if breaker is not None:
        breaker.record(ok=True)
    return result
