"""Feast's Redis online layout, as bytes: the one codec serving, the monitor and the pipelines
share, so the layout is written down once and checked against Feast once
(tests/unit/test_feastlayout.py).

Feast 0.67 with ``entity_key_serialization_version: 3`` (feature_repo/feature_store.yaml)
stores one HASH per entity. Its key is ``serialize_entity_key(key, 3) + project``: the number
of join keys, then each join key's name (type STRING, length, UTF-8), then each value (type,
length, bytes), names and values sorted by name. Each feature is the field
``mmh3_32("<view>:<feature>")`` (4 bytes, little endian) holding a serialized
``feast.types.Value``; ``_ts:<view>`` holds the row's event time, a protobuf ``Timestamp``.

Readers use this instead of ``get_online_features`` because it wraps one HMGET in registry
look-ups, protobuf objects and a response builder (most of its cost for a few numbers), and
because it filters rows by TTL against the wall clock, which hides rows stamped with simulated
dates. Only int64 join keys are encoded: every entity of the project is one.
"""

from __future__ import annotations

import datetime as dt
import struct
from collections.abc import Iterable, Mapping

import mmh3

SERIALIZATION_VERSION = 3  # the only version these bytes are; Feast < 3 is deprecated

_STRING_TYPE, _INT64_TYPE = 2, 4  # feast.types.ValueType numbers written in the key
_COUNT = struct.Struct("<I")
_TYPE_LENGTH = struct.Struct("<II")  # what precedes a join key's name and each value
_INT64_VALUE = struct.Struct("<IIq")  # type, length (8), value of an int64 join key
_INT64_VALUE_HEADER = _TYPE_LENGTH.pack(_INT64_TYPE, 8)
_FIELD_HASH = struct.Struct("<I")
_DOUBLE, _FLOAT = struct.Struct("<d"), struct.Struct("<f")
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
NAN = float("nan")

pack_int64 = struct.Struct("<q").pack
"""The 8 bytes of an int64 value: what follows :func:`entity_key_prefix` in a key."""


def _join_key_names(sorted_names: Iterable[str]) -> bytes:
    """Each name as Feast writes it in the key: type STRING, byte length, UTF-8."""
    out = b""
    for name in sorted_names:
        raw = name.encode()
        out += _TYPE_LENGTH.pack(_STRING_TYPE, len(raw)) + raw
    return out


def entity_key_prefix(join_key: str) -> bytes:
    """Everything of a single-key entity's Redis key before its value's 8 bytes, so readers
    build many keys with one concatenation each."""
    return _COUNT.pack(1) + _join_key_names([join_key]) + _INT64_VALUE_HEADER


def entity_key(join_key: str, value: int, project: str) -> bytes:
    """The Redis key of an entity of one int64 join key."""
    return entity_key_prefix(join_key) + pack_int64(value) + project.encode()


def composite_key_prefixes(join_keys: Iterable[str]) -> tuple[bytes, list[str]]:
    """(the part of a multi-key entity's Redis key before its values, the join keys in the
    order their values must follow). Feast sorts the join keys by name."""
    keys = sorted(join_keys)
    return _COUNT.pack(len(keys)) + _join_key_names(keys), keys


def int64_value(value: int) -> bytes:
    """One int64 value as it follows the names in a multi-key entity's key (type, length,
    bytes)."""
    return _INT64_VALUE.pack(_INT64_TYPE, 8, value)


def composite_entity_key(values: Mapping[str, int], project: str) -> bytes:
    """The Redis key of an entity of several int64 join keys (e.g. user_id + category)."""
    prefix, keys = composite_key_prefixes(values)
    return prefix + b"".join(int64_value(values[k]) for k in keys) + project.encode()


def field_key(view: str, feature: str) -> bytes:
    """The hash field of one feature: murmur3_32 of ``view:feature``, little endian."""
    return _FIELD_HASH.pack(mmh3.hash(f"{view}:{feature}", signed=False))


def ts_field(view: str) -> bytes:
    """The hash field holding the event time of the entity's row of ``view``."""
    return f"_ts:{view}".encode()


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(the unsigned varint at ``pos``, the position after it)."""
    result = shift = 0
    while True:
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7


def _signed64(v: int) -> int:
    """A varint read unsigned as the int64 protobuf wrote (negatives are sign-extended)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def decode_value(buf: bytes | None, missing: float | None = NAN) -> float | None:
    """A serialized scalar ``feast.types.Value`` as a float; ``missing`` when absent or not a
    number (serving wants NaN for its arrays, the monitor None like Feast's SDK).

    Hand-decoded (one tag byte, then a varint or a fixed-width number) because every value read
    on the serving hot path is an int64, int32, double, float, bool or unix timestamp, and
    parsing a protobuf object per value would cost more than the Redis round trip.
    """
    if not buf:
        return missing
    tag = buf[0]
    if tag == 0x29:  # field 5 double_val, fixed64
        return _DOUBLE.unpack_from(buf, 1)[0]
    if tag in (0x20, 0x18, 0x40):  # int64_val, int32_val, unix_timestamp_val: varints
        return float(_signed64(_read_varint(buf, 1)[0]))
    if tag == 0x35:  # float_val, fixed32
        return _FLOAT.unpack_from(buf, 1)[0]
    if tag == 0x38:  # bool_val
        return float(_read_varint(buf, 1)[0])
    return missing


def decode_timestamp(buf: bytes | None) -> dt.datetime | None:
    """A serialized protobuf ``Timestamp`` (the ``_ts:<view>`` field) as an aware UTC datetime,
    as ``Timestamp.ToDatetime(tzinfo=UTC)`` gives it (nanoseconds truncated to microseconds);
    None when the field is absent. Empty bytes are the epoch: proto3 writes no zero fields.
    """
    if buf is None:
        return None
    seconds = nanos = pos = 0
    while pos < len(buf):
        tag, pos = _read_varint(buf, pos)
        if tag & 7:  # Timestamp has only varint fields; anything else is not a Timestamp
            raise ValueError(f"not a protobuf Timestamp: wire type {tag & 7} at byte {pos}")
        value, pos = _read_varint(buf, pos)
        if tag >> 3 == 1:
            seconds = _signed64(value)
        elif tag >> 3 == 2:
            nanos = _signed64(value)
    return _EPOCH + dt.timedelta(seconds=seconds, microseconds=nanos // 1000)
