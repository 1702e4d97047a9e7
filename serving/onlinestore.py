"""A fast reader of Feast's Redis online layout: one HMGET per user, no Feast on the hot path.

Feast (0.67, ``entity_key_serialization_version: 3``) stores one HASH per entity, keyed
``serialize_entity_key(key, v3) + project``; each feature is the field
``mmh3_32("<view>:<feature>")`` (4 bytes, little endian) holding a serialized
``feast.types.Value``, and ``_ts:<view>`` holds the row's event time (a protobuf Timestamp).
``get_online_features`` wraps the same HMGET in registry look-ups, protobuf objects and a
response builder; for 4 numbers per request that wrapping is most of its cost. The layout is
checked against ``get_online_features`` in tests/integration/test_serving_features.py.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Sequence
from typing import Any

import mmh3
import numpy as np

from serving.breaker import CircuitBreaker
from serving.errors import FeatureUnavailable

logger = logging.getLogger(__name__)

_STRING_TYPE, _INT64_TYPE = 2, 4  # feast ValueType numbers used in the key
_DOUBLE, _FLOAT = struct.Struct("<d"), struct.Struct("<f")
NAN = float("nan")


def entity_key(join_key: str, value: int, project: str) -> bytes:
    """The Redis key of a single int64 entity (``serialize_entity_key`` v3 + project)."""
    name = join_key.encode()
    return (
        struct.pack("<III", 1, _STRING_TYPE, len(name)) + name
        + struct.pack("<IIq", _INT64_TYPE, 8, value) + project.encode()
    )


def entity_key_prefix(join_key: str) -> bytes:
    """Everything of :func:`entity_key` before the value (to build many keys cheaply)."""
    name = join_key.encode()
    return struct.pack("<III", 1, _STRING_TYPE, len(name)) + name + struct.pack("<II", _INT64_TYPE, 8)


def field_key(view: str, feature: str) -> bytes:
    """The hash field of one feature: murmur3_32 of ``view:feature``, little endian."""
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def _varint(buf: bytes, pos: int) -> int:
    result = shift = 0
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result
        shift += 7


def decode_value(buf: bytes | None) -> float:
    """A serialized scalar ``feast.types.Value`` as a float; NaN when absent or not numeric.

    Hand-decoded (one tag byte, then a varint or a fixed-width number) because every value read
    on the hot path is an int64, int32, double, float or bool.
    """
    if not buf:
        return NAN
    tag = buf[0]
    if tag == 0x29:  # field 5 double_val, fixed64
        return _DOUBLE.unpack_from(buf, 1)[0]
    if tag in (0x20, 0x18, 0x40):  # int64_val, int32_val, unix_timestamp_val: varints
        v = _varint(buf, 1)
        return float(v - (1 << 64) if v >= 1 << 63 else v)
    if tag == 0x35:  # float_val, fixed32
        return _FLOAT.unpack_from(buf, 1)[0]
    if tag == 0x38:  # bool_val
        return float(_varint(buf, 1))
    return NAN


def decode_timestamp(buf: bytes | None) -> float | None:
    """A serialized protobuf ``Timestamp`` (the ``_ts:<view>`` field) as epoch seconds."""
    if not buf:
        return None
    seconds = nanos = 0
    pos = 0
    while pos < len(buf):
        tag = buf[pos]
        value = _varint(buf, pos + 1)
        pos += 1
        while buf[pos] & 0x80:
            pos += 1
        pos += 1
        if tag == 0x08:
            seconds = value
        elif tag == 0x10:
            nanos = value
    return seconds + nanos / 1e9


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
        self._fields = [field_key(view, f) for f in self.features] + [f"_ts:{view}".encode()]

    def key(self, entity: int) -> bytes:
        return self._prefix + struct.pack("<q", entity) + self.project

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
        breaker = self.breaker
        if breaker is not None and not breaker.allow():
            raise FeatureUnavailable(f"{self.view}: circuit open")
        try:
            result = call()
        except Exception as exc:  # timeouts, refused connections, protocol errors
            if breaker is not None:
                breaker.record(ok=False)
            raise FeatureUnavailable(f"{self.view}: {type(exc).__name__}: {exc}") from exc
        if breaker is not None:
            breaker.record(ok=True)
        return result


def sync_redis_client(url: str, timeout_s: float, max_connections: int = 64) -> Any:
    """A sync redis-py client that fails fast: short timeouts, no retries, bounded pool."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    pool = redis.BlockingConnectionPool.from_url(
        url, socket_timeout=timeout_s, socket_connect_timeout=max(timeout_s, 0.2),
        max_connections=max_connections, timeout=timeout_s,
    )
    return redis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))
