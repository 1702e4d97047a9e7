"""The monitor's reader of Feast's Redis layout: keys as Feast serializes them, values decoded,
missing rows None — against a real Redis, with no TTL filtering."""

from __future__ import annotations

import pytest
import redis as redis_lib
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from monitoring.onlinestore import RedisOnlineStore
from recstack.feastlayout import entity_key, field_key

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def test_entity_key_is_feasts() -> None:
    proto = EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=42)])
    assert entity_key("user_id", 42, "proj") == serialize_entity_key(proto, 3) + b"proj"


def test_reads_values_written_in_feast_layout(redis_server: int) -> None:
    client = redis_lib.Redis(port=redis_server)
    project = "monitortest"
    key = entity_key("user_id", 7, project)
    client.delete(key)
    client.hset(key, mapping={
        field_key("user_features", "user_ctr_7d"): Value(double_val=0.125).SerializeToString(),
        field_key("user_features", "user_clicks_7d"): Value(int64_val=3).SerializeToString(),
    })
    try:
        got = RedisOnlineStore(client, project).get_online_features(
            features=["user_features:user_ctr_7d", "user_features:user_clicks_7d",
                      "user_features:user_impressions_7d"],
            entity_rows=[{"user_id": 7}, {"user_id": 8}]).to_dict()
    finally:
        client.delete(key)
    assert got == {"user_ctr_7d": [0.125, None], "user_clicks_7d": [3.0, None],
                   "user_impressions_7d": [None, None]}
