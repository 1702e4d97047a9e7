"""A read-only reader of Feast's Redis online layout, for the monitor.

Why not ``FeatureStore.get_online_features``: it applies each view's TTL against the wall
clock, so on simulated time (features stamped with simulated dates) it answers None for every
row, while serving (which reads the layout itself) still serves them. The monitor must see what
serving sees. Layout (Feast 0.67, entity key serialization v3): one HASH per entity keyed
``serialize_entity_key(key) + project``; field ``mmh3_32("<view>:<feature>")`` (4 bytes, little
endian) holds a serialized ``feast.types.Value``.
"""

from __future__ import annotations

import struct
from typing import Any

import mmh3

_STRING_TYPE, _INT64_TYPE = 2, 4  # feast ValueType numbers in the serialized key


def entity_key(join_key: str, value: int, project: str) -> bytes:
    name = join_key.encode()
    return (struct.pack("<III", 1, _STRING_TYPE, len(name)) + name
            + struct.pack("<IIq", _INT64_TYPE, 8, int(value)) + project.encode())


def field_key(view: str, feature: str) -> bytes:
    return struct.pack("<I", mmh3.hash(f"{view}:{feature}", signed=False))


def decode(buf: bytes | None) -> float | None:
    """A serialized ``feast.types.Value`` as a float (None when absent or not a number)."""
    if not buf:
        return None
    from feast.protos.feast.types.Value_pb2 import Value

    v = Value()
    v.ParseFromString(buf)
    kind = v.WhichOneof("val")
    if kind in ("int64_val", "int32_val", "double_val", "float_val", "bool_val"):
        return float(getattr(v, kind))
    return None


class _Result:
    def __init__(self, data: dict[str, list[Any]]) -> None:
        self.data = data

    def to_dict(self) -> dict[str, list[Any]]:
        return self.data


class RedisOnlineStore:
    """``get_online_features(features=["view:name", ...], entity_rows=[{key: id}, ...])``
    with the SDK's result shape (``.to_dict()``), without TTL filtering."""

    def __init__(self, client: Any, project: str) -> None:
        self.client = client
        self.project = project

    def get_online_features(self, features: list[str], entity_rows: list[dict[str, int]]
                            ) -> _Result:
        refs = [f.split(":", 1) for f in features]
        fields = [field_key(view, name) for view, name in refs]
        pipe = self.client.pipeline(transaction=False)
        for row in entity_rows:
            (key, value), = row.items()
            pipe.hmget(entity_key(key, value, self.project), fields)
        replies = pipe.execute()
        out: dict[str, list[Any]] = {name: [] for _, name in refs}
        for reply in replies:
            for (_, name), raw in zip(refs, reply):
                out[name].append(decode(raw))
        return _Result(out)
