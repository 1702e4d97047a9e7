"""The columns and Arrow types of the tables the feature pipeline writes under ``features_dir``.

One definition serves the Beam writers (WriteToParquet needs a schema), the pre-materialization
checks and the tests. Feature names come from the kernel (``recstack.schemas``).
"""

from __future__ import annotations

import pyarrow as pa

from recstack.schemas import (
    FRESH_FILE,
    ITEM_FEATURE_VIEW_V2,
    ITEM_FEATURES,
    ITEM_FEATURES_FILE,
    LABELS_FILE,
    POPULAR_FILE,
    RANKER_V2_ITEM_FEATURES,
    RANKER_V2_USER_CATEGORY_FEATURES,
    RANKER_V2_USER_FEATURES,
    USER_CATEGORY_FEATURE_VIEW,
    USER_FEATURE_VIEW_V2,
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
    # ranker_v2
    "user_impressions_1d": pa.int64(),
    "user_clicks_1d": pa.int64(),
    "user_ctr_1d": pa.float64(),
    "user_impressions_28d": pa.int64(),
    "user_clicks_28d": pa.int64(),
    "user_ctr_28d": pa.float64(),
    "user_days_since_click": pa.int64(),  # 29 = no click in the last 28 days
    "item_impressions_1d": pa.int64(),
    "item_impressions_28d": pa.int64(),
    "item_clicks_28d": pa.int64(),
    "item_ctr_28d": pa.float64(),
    "item_trend_7d_28d": pa.float64(),  # clicks/day over 7 days vs 28 days, smoothed
    "item_age_days": pa.int64(),  # snapshot day - the item's created_at day
    "user_country_code": pa.int64(),  # recstack.schemas.profile_code; -1 = unknown
    "user_device_code": pa.int64(),
    "item_category": pa.int64(),  # the catalogue's category; -1 = not in the catalogue
    "user_category_clicks_28d": pa.int64(),
    "user_category_share_28d": pa.float64(),  # of the user's clicks in 28 days, in [0, 1]
}


def _feature_schema(key: str | list[str], features: list[str]) -> pa.Schema:
    keys = [key] if isinstance(key, str) else key
    return pa.schema(
        [pa.field(k, pa.int64(), nullable=False) for k in keys]
        + [pa.field(name, _FEATURE_TYPES[name], nullable=False) for name in features]
        + [
            pa.field(EVENT_TIMESTAMP, TIMESTAMP, nullable=False),
            pa.field(CREATED, TIMESTAMP, nullable=False),
        ]
    )


USER_FEATURES_SCHEMA = _feature_schema("user_id", USER_FEATURES)
ITEM_FEATURES_SCHEMA = _feature_schema("item_id", ITEM_FEATURES)
# ranker_v2 tables: one directory per view, named after it (as the v1 ones).
USER_FEATURES_V2_FILE = f"{USER_FEATURE_VIEW_V2}.parquet"
ITEM_FEATURES_V2_FILE = f"{ITEM_FEATURE_VIEW_V2}.parquet"
USER_CATEGORY_FEATURES_FILE = f"{USER_CATEGORY_FEATURE_VIEW}.parquet"
USER_FEATURES_V2_SCHEMA = _feature_schema(
    "user_id", [f for f in RANKER_V2_USER_FEATURES if f not in USER_FEATURES])
ITEM_FEATURES_V2_SCHEMA = _feature_schema(
    "item_id", [f for f in RANKER_V2_ITEM_FEATURES if f not in ITEM_FEATURES])
USER_CATEGORY_FEATURES_SCHEMA = _feature_schema(["user_id", "category"],
                                                RANKER_V2_USER_CATEGORY_FEATURES)
FRESH_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("age_days", pa.int64(), nullable=False),
        pa.field("clicks", pa.int64(), nullable=False),
        pa.field("ctr", pa.float64(), nullable=False),
        pa.field("rank", pa.int64(), nullable=False),
    ]
)
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

# Rows the feature pipeline rejected, one Parquet dataset per run under
# ``dead_letter/<stage>/run=<run_id>/`` (see pipelines.features.dead_letter_dir).
DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("step", pa.string(), nullable=False),  # validate | lateness
        pa.field("reason", pa.string(), nullable=False),  # e.g. negative_user_id, late
        pa.field("source_file", pa.string()),  # the lake file the row was read from
        pa.field("event_id", pa.string()),
        pa.field("row", pa.string(), nullable=False),  # the original row, JSON
    ]
)

# File name under features_dir -> schema.
TABLES: dict[str, pa.Schema] = {
    USER_FEATURES_FILE: USER_FEATURES_SCHEMA,
    ITEM_FEATURES_FILE: ITEM_FEATURES_SCHEMA,
    POPULAR_FILE: POPULAR_SCHEMA,
    LABELS_FILE: LABELS_SCHEMA,
}
# The ranker_v2 tables, written when the lake has its item catalogue (items.parquet).
V2_TABLES: dict[str, pa.Schema] = {
    USER_FEATURES_V2_FILE: USER_FEATURES_V2_SCHEMA,
    ITEM_FEATURES_V2_FILE: ITEM_FEATURES_V2_SCHEMA,
    USER_CATEGORY_FEATURES_FILE: USER_CATEGORY_FEATURES_SCHEMA,
    FRESH_FILE: FRESH_SCHEMA,
}
# The feature tables Feast reads, with their entity key (the first one, for summaries).
FEATURE_TABLE_KEYS: dict[str, str] = {
    USER_FEATURES_FILE: "user_id", ITEM_FEATURES_FILE: "item_id",
    USER_FEATURES_V2_FILE: "user_id", ITEM_FEATURES_V2_FILE: "item_id",
    USER_CATEGORY_FEATURES_FILE: "user_id",
}
# The tables stored as a directory of day partitions (pipelines.partitions); the lists are files.
PARTITIONED_TABLES: tuple[str, ...] = (
    USER_FEATURES_FILE, ITEM_FEATURES_FILE, LABELS_FILE,
    USER_FEATURES_V2_FILE, ITEM_FEATURES_V2_FILE, USER_CATEGORY_FEATURES_FILE,
)
