"""recstack's Feast definitions: user and item entities, their daily feature snapshots, and the
feature service the ranker reads.

Side-effect free (``feast apply`` imports every file here). The tables are written by
``pipelines/features.py`` into ``$RECSTACK_FEATURES_DIR``; their columns are the feature names
in ``recstack.schemas``.
"""

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

from recstack.schemas import (
    ITEM_FEATURE_VIEW,
    ITEM_FEATURE_VIEW_V2,
    ITEM_FEATURES_FILE,
    USER_CATEGORY_FEATURE_VIEW,
    USER_FEATURE_VIEW,
    USER_FEATURE_VIEW_V2,
    USER_FEATURES_FILE,
)

# Where the pipeline writes its tables; recstack.featurestore sets it from Settings.features_dir.
FEATURES_DIR = Path(
    os.environ.get("RECSTACK_FEATURES_DIR")
    or Path(__file__).resolve().parent.parent / "var" / "features"  # the default RECSTACK_HOME
)

# A user of the recommender; the key is the user_id of the events.
user = Entity(
    name="user",
    # The column that identifies a user in the feature tables and in entity rows.
    join_keys=["user_id"],
    # user_id is an int64 everywhere (events, tables, requests).
    value_type=ValueType.INT64,
    description="a user of the recommender",
)

# A catalogue item; the key is the item_id of the events.
item = Entity(
    name="item", join_keys=["item_id"], value_type=ValueType.INT64, description="a catalogue item"
)

# An item category (simulator: 0..n_categories-1; importer: 0 = unknown).
category = Entity(
    name="category", join_keys=["category"], value_type=ValueType.INT64,
    description="an item category",
)

# One row per (user, day): counts over the 7 days before event_timestamp (midnight UTC).
user_features_source = FileSource(
    # Unique name of the source in the project.
    name="user_features_source",
    # A directory of one Parquet file per snapshot day (pipelines/partitions.py); the file
    # offline store reads it as one dataset, and a daily run adds a file, never rewrites history.
    path=str(FEATURES_DIR / USER_FEATURES_FILE),
    # The snapshot time T: a row aggregates only events with ts < T.
    timestamp_field="event_timestamp",
    # When the pipeline ran; breaks ties between two runs' rows with the same T.
    created_timestamp_column="created",
)

# One row per (item, day), like the user table.
item_features_source = FileSource(
    name="item_features_source",
    path=str(FEATURES_DIR / ITEM_FEATURES_FILE),
    timestamp_field="event_timestamp",
    created_timestamp_column="created",
)

user_features = FeatureView(
    # The view name that models and serving refer to (recstack.schemas.USER_FEATURE_VIEW).
    name=USER_FEATURE_VIEW,
    # Rows are joined on the user entity's key, user_id.
    entities=[user],
    # A snapshot older than this is not served: the pipeline writes one a day, so three days
    # of silence from the pipeline means the data is stale, not that the user is new.
    ttl=timedelta(days=3),
    # Names exactly as recstack.schemas.USER_FEATURES, types as pipelines/tables.py writes them.
    schema=[
        Field(name="user_impressions_7d", dtype=Int64, description="impressions, 7 days"),
        Field(name="user_clicks_7d", dtype=Int64, description="clicks, 7 days"),
        Field(name="user_ctr_7d", dtype=Float64, description="smoothed CTR, 7 days"),
        Field(name="user_active_days_7d", dtype=Int64, description="days with an event, of 7"),
    ],
    # Materialized into Redis for serving.
    online=True,
    source=user_features_source,
    tags={"owner": "pipelines", "entity": "user"},
)

item_features = FeatureView(
    name=ITEM_FEATURE_VIEW,
    entities=[item],
    ttl=timedelta(days=3),
    schema=[
        Field(name="item_impressions_7d", dtype=Int64, description="impressions, 7 days"),
        Field(name="item_clicks_7d", dtype=Int64, description="clicks, 7 days"),
        Field(name="item_ctr_7d", dtype=Float64, description="smoothed CTR, 7 days"),
        Field(name="item_clicks_1d", dtype=Int64, description="clicks on the snapshot's day"),
    ],
    online=True,
    source=item_features_source,
    tags={"owner": "pipelines", "entity": "item"},
)

# What the ranker reads (Settings.feast.feature_service); a new feature set gets a new version.
ranker_v1 = FeatureService(
    name="ranker_v1",
    features=[user_features, item_features],
    description="user and item features of the LightGBM ranker, version 1",
)


# ---- ranker_v2: new views over new tables; ranker_v1 above is unchanged. ----


def _daily_source(view: str) -> FileSource:
    """The day-partitioned table of ``view`` (same layout and timestamps as the v1 tables)."""
    return FileSource(
        name=f"{view}_source",
        path=str(FEATURES_DIR / f"{view}.parquet"),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",
    )


user_features_v2 = FeatureView(
    name=USER_FEATURE_VIEW_V2,
    entities=[user],
    ttl=timedelta(days=3),
    schema=[
        Field(name="user_impressions_1d", dtype=Int64, description="impressions, snapshot day"),
        Field(name="user_clicks_1d", dtype=Int64, description="clicks, snapshot day"),
        Field(name="user_ctr_1d", dtype=Float64, description="smoothed CTR, snapshot day"),
        Field(name="user_impressions_28d", dtype=Int64, description="impressions, 28 days"),
        Field(name="user_clicks_28d", dtype=Int64, description="clicks, 28 days"),
        Field(name="user_ctr_28d", dtype=Float64, description="smoothed CTR, 28 days"),
        Field(name="user_days_since_click", dtype=Int64,
              description="days since the last click (0 = on the snapshot day; 29 = none in 28)"),
        Field(name="user_country_code", dtype=Int64,
              description="the profile's country as a stable code (-1 = unknown)"),
        Field(name="user_device_code", dtype=Int64,
              description="the profile's device as a stable code (-1 = unknown)"),
    ],
    online=True,
    source=_daily_source(USER_FEATURE_VIEW_V2),
    tags={"owner": "pipelines", "entity": "user", "version": "2"},
)

item_features_v2 = FeatureView(
    name=ITEM_FEATURE_VIEW_V2,
    entities=[item],
    ttl=timedelta(days=3),
    schema=[
        Field(name="item_impressions_1d", dtype=Int64, description="impressions, snapshot day"),
        Field(name="item_impressions_28d", dtype=Int64, description="impressions, 28 days"),
        Field(name="item_clicks_28d", dtype=Int64, description="clicks (popularity), 28 days"),
        Field(name="item_ctr_28d", dtype=Float64, description="smoothed CTR, 28 days"),
        Field(name="item_trend_7d_28d", dtype=Float64,
              description="clicks/day over 7 days over clicks/day over 28 days, smoothed"),
        Field(name="item_age_days", dtype=Int64, description="days since created_at"),
        Field(name="item_category", dtype=Int64,
              description="the catalogue's category (-1 = not in the catalogue)"),
    ],
    online=True,
    source=_daily_source(ITEM_FEATURE_VIEW_V2),
    tags={"owner": "pipelines", "entity": "item", "version": "2"},
)

# Keyed by user and category: the ranker reads the row of the candidate item's category.
user_category_features = FeatureView(
    name=USER_CATEGORY_FEATURE_VIEW,
    entities=[user, category],
    ttl=timedelta(days=3),
    schema=[
        Field(name="user_category_clicks_28d", dtype=Int64,
              description="the user's clicks on items of the category, 28 days"),
        Field(name="user_category_share_28d", dtype=Float64,
              description="those clicks over all the user's clicks, 28 days (0 if none)"),
    ],
    online=True,
    source=_daily_source(USER_CATEGORY_FEATURE_VIEW),
    tags={"owner": "pipelines", "entity": "user,category", "version": "2"},
)

# ranker_v1's features plus the v2 views; training and serving switch with
# RECSTACK_FEAST__FEATURE_SERVICE=ranker_v2 once they read the v2 views.
ranker_v2 = FeatureService(
    name="ranker_v2",
    features=[user_features, item_features, user_features_v2, item_features_v2,
              user_category_features],
    description="ranker_v1 + 1/28-day windows, recency, item age and trend, category affinity",
)
