"""The kernel's codec of Feast's Redis online layout, byte for byte against Feast's own
functions (keys, field hashes) and protobuf's own serialization (values, timestamps)."""

from __future__ import annotations

import datetime as dt
import math
import struct

import pytest
from feast.infra.key_encoding_utils import serialize_entity_key, serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Int64List, Value
from google.protobuf.timestamp_pb2 import Timestamp

from recstack import feastlayout as layout

INT64S = [0, 1, -1, 7, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, -(2**63)]
PROJECT = "recstack_test"


def _feast_key(values: dict[str, int], project: str = PROJECT) -> bytes:
    proto = EntityKey(join_keys=list(values),
                      entity_values=[Value(int64_val=v) for v in values.values()])
    return _redis_key(project, proto, layout.SERIALIZATION_VERSION)


def _same_float(a: float | None, b: float | None) -> bool:
    """Equal to the bit (NaN equals NaN, -0.0 is not 0.0)."""
    if a is None or b is None:
        return a is b
    return struct.pack("<d", a) == struct.pack("<d", b)


def test_the_codec_is_the_version_the_feature_repo_declares() -> None:
    from recstack.settings import REPO_ROOT

    yaml = (REPO_ROOT / "feature_repo" / "feature_store.yaml").read_text()
    assert f"entity_key_serialization_version: {layout.SERIALIZATION_VERSION}" in yaml


@pytest.mark.parametrize("value", INT64S)
@pytest.mark.parametrize("join_key", ["user_id", "item_id", "catégorie"])
def test_single_key_is_feasts(join_key: str, value: int) -> None:
    assert layout.entity_key(join_key, value, PROJECT) == _feast_key({join_key: value})
    proto = EntityKey(join_keys=[join_key], entity_values=[Value(int64_val=value)])
    serialized = serialize_entity_key(proto, 3)
    assert layout.entity_key_prefix(join_key) == serialized[:-8]
    assert layout.pack_int64(value) == serialized[-8:]


def test_prefix_plus_value_plus_project_is_the_key() -> None:
    prefix = layout.entity_key_prefix("user_id")
    for value in INT64S:
        assert (prefix + layout.pack_int64(value) + PROJECT.encode()
                == layout.entity_key("user_id", value, PROJECT))
    assert layout.entity_key("user_id", 5, "") == serialize_entity_key(
        EntityKey(join_keys=["user_id"], entity_values=[Value(int64_val=5)]), 3)


@pytest.mark.parametrize("values", [
    {"user_id": 42, "category": 3},
    {"category": 3, "user_id": 42},  # insertion order must not matter: Feast sorts by name
    {"user_id": 2**63 - 1, "category": -(2**63)},
    {"user_id": 0, "category": 0},
    {"zeta": -1, "alpha": 1, "mid": 2**40},
])
def test_composite_key_is_feasts(values: dict[str, int]) -> None:
    assert layout.composite_entity_key(values, PROJECT) == _feast_key(values)
    prefix, order = layout.composite_key_prefixes(values)
    assert order == sorted(values)
    assert prefix == serialize_entity_key_prefix(list(values), 3)
    assert prefix + b"".join(layout.int64_value(values[k]) for k in order) == (
        serialize_entity_key(EntityKey(join_keys=list(values),
                                       entity_values=[Value(int64_val=v) for v in values.values()]),
                             3))


def test_a_key_out_of_int64_is_refused_not_wrapped() -> None:
    with pytest.raises(struct.error):
        layout.entity_key("user_id", 2**63, PROJECT)
    with pytest.raises(struct.error):
        layout.int64_value(-(2**63) - 1)


@pytest.mark.parametrize("view,feature", [
    ("user_features", "user_ctr_7d"), ("item_features", "item_clicks_1d"),
    ("user_category_features", "uc_clicks_28d"), ("v", ""), ("vue", "clés_été"),
])
def test_field_hash_is_feasts(view: str, feature: str) -> None:
    assert layout.field_key(view, feature) == _mmh3(f"{view}:{feature}")
    assert len(layout.field_key(view, feature)) == 4


def test_timestamp_field_is_feasts_name() -> None:
    # feast.infra.online_stores.redis writes f"_ts:{feature_view}" (a str redis encodes UTF-8).
    assert layout.ts_field("user_features") == b"_ts:user_features"
    assert layout.ts_field("vue_é") == "_ts:vue_é".encode()


@pytest.mark.parametrize("value", [
    *(Value(int64_val=v) for v in INT64S),
    *(Value(int32_val=v) for v in (0, 1, -1, -5, 2**31 - 1, -(2**31))),
    *(Value(double_val=v) for v in (0.0, -0.0, 0.125, -3.5, 1e308, 5e-324, math.inf,
                                    -math.inf, math.nan)),
    *(Value(float_val=v) for v in (0.0, -0.0, 0.1, 3.4e38, -1.5, math.inf)),
    Value(bool_val=True), Value(bool_val=False),
    *(Value(unix_timestamp_val=v) for v in (0, 1_700_000_000, -1)),
], ids=lambda v: f"{v.WhichOneof('val')}={getattr(v, v.WhichOneof('val'))}")
def test_numbers_decode_as_protobuf_parses_them(value: Value) -> None:
    expected = float(getattr(value, value.WhichOneof("val")))
    raw = value.SerializeToString()
    assert _same_float(layout.decode_value(raw), expected)
    assert _same_float(layout.decode_value(raw, missing=None), expected)


@pytest.mark.parametrize("raw", [
    None, b"", Value().SerializeToString(), Value(string_val="3").SerializeToString(),
    Value(bytes_val=b"\x29").SerializeToString(),
    Value(int64_list_val=Int64List(val=[1, 2])).SerializeToString(),
])
def test_absent_or_not_a_number_is_missing(raw: bytes | None) -> None:
    assert math.isnan(layout.decode_value(raw))
    assert layout.decode_value(raw, missing=None) is None


@pytest.mark.parametrize("seconds,nanos", [
    (0, 0),  # serializes to b"": proto3 writes no zero fields, and it is still a time
    (1, 0), (0, 1), (1_700_000_000, 123_456_789), (1_700_000_000, 999),
    (1_700_000_000, 999_999_999), (-1, 500_000_000), (-86_400 * 365, 0),
    (-62_135_596_800, 0), (253_402_300_799, 999_999_999),
])
def test_timestamp_decodes_as_protobuf_converts_it(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    got = layout.decode_timestamp(ts.SerializeToString())
    want = ts.ToDatetime(tzinfo=dt.timezone.utc)
    assert got == want and got.tzinfo == want.tzinfo and got.utcoffset() == dt.timedelta(0)


def test_timestamp_of_a_datetime_round_trips_to_the_microsecond() -> None:
    when = dt.datetime(2024, 3, 1, 12, 30, 5, 123_456, tzinfo=dt.timezone.utc)
    ts = Timestamp()
    ts.FromDatetime(when)
    assert layout.decode_timestamp(ts.SerializeToString()) == when


def test_absent_timestamp_is_none_and_garbage_is_refused() -> None:
    assert layout.decode_timestamp(None) is None
    with pytest.raises(ValueError):
        layout.decode_timestamp(Value(double_val=1.0).SerializeToString())


# The stages build their keys from the codec's pieces; the same bytes as Feast's.

def test_serving_readers_keys_are_feasts() -> None:
    from serving.onlinestore import RedisFeatureReader, RedisUserContextReader

    reader = RedisFeatureReader(None, PROJECT, "user_features", ["user_ctr_7d"], "user_id")
    context = RedisUserContextReader(None, PROJECT, [("user_features", ["user_ctr_7d"])],
                                     ("user_category_features", ["uc_clicks_28d"]))
    for value in INT64S:
        assert reader.key(value) == _feast_key({"user_id": value})
        assert context.user_key(value) == _feast_key({"user_id": value})
        assert context.category_key(value, 3) == _feast_key({"user_id": value, "category": 3})
        assert context.category_key(3, value) == _feast_key({"user_id": 3, "category": value})


def test_benchmark_reader_keys_are_feasts() -> None:
    from pipelines.bench import LayoutReader

    reader = LayoutReader(None, PROJECT, "item_features", ["item_clicks_1d"], "item_id")
    assert [reader.key(v) for v in INT64S] == [_feast_key({"item_id": v}) for v in INT64S]
