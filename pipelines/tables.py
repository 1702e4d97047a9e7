"""The columns and Arrow types of the tables the feature pipeline writes under ``features_dir``.

One definition serves the Beam writers (WriteToParquet needs a schema), the pre-materialization
checks and the tests. Feature names come from the kernel (``recstack.schemas``).
"""

from __future__ import annotations

import pyarrow as pa

from recstack.schemas import (
    ITEM_FEATURES,
    ITEM_FEATURES_FILE,
    LABELS_FILE,
    POPULAR_FILE,
    USER_FEATURES,
    USER_FEATURES_FILE,
)

TIMESTAMP = pa.timestamp("us", tz="UTC")
EVENT_TIMESTAMP = "event_timestamp"  # Feast's timestamp_field: the snapshot time T
CREATED = "created"  # Feast's created_timestamp_column: when the pipeline ran

# Every feature is a count except the smoothed CTRs.
_FEATURE_TYPES: dict[str, pa.DataType] = {
    "user_impressions_7d": pa.int64(),
    "user_clicks_7d": pa.int64(),
    "user_ctr_7d": pa.float64(),
    "user_active_days_7d": pa.int64(),
    "item_impressions_7d": pa.int64(),
    "item_clicks_7d": pa.int64(),
    "item_ctr_7d": pa.float64(),
    "item_clicks_1d": pa.int64(),
}


def _feature_schema(key: str, features: list[str]) -> pa.Schema:
    return pa.schema(
        [pa.field(key, pa.int64(), nullable=False)]
        + [pa.field(name, _FEATURE_TYPES[name], nullable=False) for name in features]
        + [
            pa.field(EVENT_TIMESTAMP, TIMESTAMP, nullable=False),
            pa.field(CREATED, TIMESTAMP, nullable=False),
        ]
    )


USER_FEATURES_SCHEMA = _feature_schema("user_id", USER_FEATURES)
ITEM_FEATURES_SCHEMA = _feature_schema("item_id", ITEM_FEATURES)
POPULAR_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("clicks", pa.int64(), nullable=False),
        pa.field("rank", pa.int64(), nullable=False),  # 1 = most clicked
    ]
)
LABELS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field(EVENT_TIMESTAMP, TIMESTAMP, nullable=False),  # the impression's ts
        pa.field("label", pa.int64(), nullable=False),  # 1 = clicked
        pa.field("request_id", pa.string()),
        pa.field("position", pa.int32()),
    ]
)

# File name under features_dir -> schema.
TABLES: dict[str, pa.Schema] = {
    USER_FEATURES_FILE: USER_FEATURES_SCHEMA,
    ITEM_FEATURES_FILE: ITEM_FEATURES_SCHEMA,
    POPULAR_FILE: POPULAR_SCHEMA,
    LABELS_FILE: LABELS_SCHEMA,
}
# The feature tables Feast reads, with their entity key.
FEATURE_TABLE_KEYS: dict[str, str] = {USER_FEATURES_FILE: "user_id", ITEM_FEATURES_FILE: "item_id"}
