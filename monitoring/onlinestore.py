"""A read-only reader of Feast's Redis online layout, for the monitor.

Why not ``FeatureStore.get_online_features``: it applies each view's TTL against the wall
clock, so on simulated time (features stamped with simulated dates) it answers None for every
row, while serving (which reads the layout itself) still serves them. The monitor must see what
serving sees. The layout (keys, hash fields, value bytes) is the kernel codec's,
``recstack.feastlayout``.
"""

from __future__ import annotations

from typing import Any

from recstack.feastlayout import decode_value, entity_key, field_key


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
                out[name].append(decode_value(raw, missing=None))  # None: as the SDK
        return _Result(out)
