"""Contracts shared by the stages: the event record, feature names, artifact layouts.

Stages hand off through artifacts (lake Parquet, feature tables, Feast views, MLflow models),
so the names and columns of those artifacts are defined once, here.
"""

from __future__ import annotations

import datetime as dt
import zlib
from enum import StrEnum

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, field_validator


class EventType(StrEnum):
    IMPRESSION = "impression"
    CLICK = "click"


# The lake's event record (DESIGN.md section 5). ``ts`` is UTC, microseconds.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("request_id", pa.string()),
        pa.field("position", pa.int32()),
        pa.field("model_version", pa.string()),
        # The online experiment's arm that served the request (None outside experiments).
        pa.field("arm", pa.string()),
    ]
)
EVENT_COLUMNS = EVENT_SCHEMA.names

# The item catalogue the simulator (or an importer) writes beside the events.
ITEM_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.int64(), nullable=False),
        pa.field("category", pa.int32(), nullable=False),
        pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


# The user profile the simulator (or an importer) writes beside the events: attributes a sign-up
# form or a request header would give (no behaviour). Optional: the pipeline reads it if present.
USER_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("country", pa.string()),
        pa.field("device", pa.string()),
    ]
)
NO_PROFILE_CODE = -1  # a profile feature's value when the user (or the attribute) is unknown
NO_CATEGORY = -1  # the category of an item missing from the catalogue


def profile_code(value: str | None) -> int:
    """A stable small integer for a profile attribute (country, device): the same in every
    pipeline run and process, whatever other values exist (CRC-32 mod 1000; a collision only
    merges two values). The ranker treats the codes as categories."""
    if value is None or value == "":
        return NO_PROFILE_CODE
    return zlib.crc32(value.strip().lower().encode()) % 1000


def cross_code(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The category of each (a, b) pair of codes, float32: ``a * 1000 + b`` where both are known
    (>= 0; codes are < 1000), NaN where either is missing or NO_PROFILE_CODE."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        known = (a >= 0) & (b >= 0)
        return np.where(known, np.mod(a, 1000) * 1000 + np.mod(b, 1000), np.nan).astype(
            np.float32)


# Ids are the lake's int64 columns: anything outside 0..2^63-1 cannot be stored.
MAX_ID = 2**63 - 1
MAX_POSITION = 10_000


class Event(BaseModel):
    """One interaction event, as posted to ``POST /events`` and stored in the lake.

    Only its shape: whether ``ts`` is plausible depends on the stack's clock, see
    ``event_problems``.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=128)
    ts: dt.datetime
    user_id: int = Field(ge=0, le=MAX_ID)
    item_id: int = Field(ge=0, le=MAX_ID)
    event_type: EventType
    request_id: str | None = Field(None, max_length=128)
    position: int | None = Field(None, ge=0, le=MAX_POSITION)
    model_version: str | None = Field(None, max_length=128)
    arm: str | None = Field(None, max_length=64)

    @field_validator("ts")
    @classmethod
    def _utc(cls, ts: dt.datetime) -> dt.datetime:
        """A naive time is UTC (the lake's zone); an aware one is converted to it."""
        if ts.tzinfo is None:
            return ts.replace(tzinfo=dt.UTC)
        try:
            return ts.astimezone(dt.UTC)
        except OverflowError as exc:  # e.g. 0001-01-01T00:00+01:00: before year 1 in UTC
            raise ValueError(f"{ts.isoformat()} is outside the calendar in UTC") from exc


def ts_problem(ts: dt.datetime, now: dt.datetime, lateness: dt.timedelta,
               skew: dt.timedelta) -> str | None:
    """Why ``ts`` is implausible at ``now`` (older than ``now - lateness`` or later than
    ``now + skew``), or None. Naive times are UTC."""
    ts = ts.replace(tzinfo=dt.UTC) if ts.tzinfo is None else ts
    if ts < now - lateness:
        return (f"{ts.isoformat()} is more than {lateness} before the stack's clock "
                f"({now.isoformat(timespec='seconds')})")
    if ts > now + skew:
        return (f"{ts.isoformat()} is more than {skew} after the stack's clock "
                f"({now.isoformat(timespec='seconds')})")
    return None


def event_problems(event: Event, now: dt.datetime, lateness: dt.timedelta,
                   skew: dt.timedelta) -> list[str]:
    """``["field: why", ...]`` for what makes a well-formed event unacceptable at ``now``: its
    time outside [now - lateness, now + skew], ids outside 0..2^63-1 (an ``Event`` built with
    ``model_construct``, e.g. from a lake row, skipped pydantic's bounds). The one rule set of
    POST /events, the lake sink and the lake checks. Empty: acceptable."""
    problems = []
    if (why := ts_problem(event.ts, now, lateness, skew)) is not None:
        problems.append(f"ts: {why}")
    for name in ("user_id", "item_id"):
        value = getattr(event, name)
        if not 0 <= value <= MAX_ID:
            problems.append(f"{name}: {value} is outside 0..{MAX_ID}")
    if event.position is not None and not 0 <= event.position <= MAX_POSITION:
        problems.append(f"position: {event.position} is outside 0..{MAX_POSITION}")
    return problems


# Feature tables written by the Beam pipelines and registered in Feast. Every feature name is
# prefixed by its entity, so a model's feature list says where each column comes from.
USER_FEATURE_VIEW = "user_features"
ITEM_FEATURE_VIEW = "item_features"
USER_FEATURES = ["user_impressions_7d", "user_clicks_7d", "user_ctr_7d", "user_active_days_7d"]
ITEM_FEATURES = ["item_impressions_7d", "item_clicks_7d", "item_ctr_7d", "item_clicks_1d"]
# ranker_v2 adds new views (ranker_v1's views and names above stay as they are): 1- and 28-day
# windows, recency, item age and trend, and the user's affinity to an item's category (a view
# keyed by user_id + category; the ranker's value is the row of the candidate item's category).
USER_FEATURE_VIEW_V2 = "user_features_v2"
ITEM_FEATURE_VIEW_V2 = "item_features_v2"
USER_CATEGORY_FEATURE_VIEW = "user_category_features"
RANKER_V2_USER_FEATURES = USER_FEATURES + [
    "user_impressions_1d", "user_clicks_1d", "user_ctr_1d", "user_impressions_28d",
    "user_clicks_28d", "user_ctr_28d", "user_days_since_click",
    "user_country_code", "user_device_code"]
RANKER_V2_ITEM_FEATURES = ITEM_FEATURES + [
    "item_impressions_1d", "item_impressions_28d", "item_clicks_28d", "item_ctr_28d",
    "item_trend_7d_28d", "item_age_days", "item_category"]
# Codes, not quantities: the ranker splits them as categories (a segment x category taste, e.g.
# one country's users moving to two categories, is one split each instead of a staircase).
# Request-time crosses of two stored codes, one category per pair (country x category): a
# segment's taste for a category is then one categorical split. With the two codes alone the
# trees learned only a sixth of a 4x post-shift CTR gap between one country's old and new
# categories (a day after a taste shift); with the cross, most of it. Serving and training
# compute them by ``cross_code`` from the booster's own columns.
CROSS_FEATURES = {"user_country_x_item_category": ("user_country_code", "item_category")}
CATEGORICAL_FEATURES = ("user_country_code", "user_device_code", "item_category",
                        *CROSS_FEATURES)
RANKER_V2_USER_CATEGORY_FEATURES = ["user_category_clicks_28d", "user_category_share_28d"]
USER_FEATURES_V2 = RANKER_V2_USER_FEATURES[len(USER_FEATURES):]  # the user_features_v2 view
ITEM_FEATURES_V2 = RANKER_V2_ITEM_FEATURES[len(ITEM_FEATURES):]  # the item_features_v2 view
# Every stored feature by view, and by the entity whose row holds it (a model's feature list
# names only features; these say where serving reads each one).
FEATURE_VIEW_FEATURES = {
    USER_FEATURE_VIEW: USER_FEATURES, USER_FEATURE_VIEW_V2: USER_FEATURES_V2,
    ITEM_FEATURE_VIEW: ITEM_FEATURES, ITEM_FEATURE_VIEW_V2: ITEM_FEATURES_V2,
    USER_CATEGORY_FEATURE_VIEW: RANKER_V2_USER_CATEGORY_FEATURES,
}
# Request-time features computed by serving, not stored in Feast.
CANDIDATE_SCORE_FEATURE = "cand_score"
RANKER_FEATURES = USER_FEATURES + ITEM_FEATURES + [CANDIDATE_SCORE_FEATURE]
# Request-time one-hot of the candidate's source (ann / popular / fresh; all 0: none of them,
# e.g. an item the logging policy showed that today's candidate sources would not return).
SOURCE_FEATURES = {"ann": "src_ann", "popular": "src_popular", "fresh": "src_fresh"}

# Files under Settings.features_dir.
USER_FEATURES_FILE = "user_features.parquet"
ITEM_FEATURES_FILE = "item_features.parquet"
POPULAR_FILE = "popular.parquet"  # item_id, clicks, rank (the most recent day)
FRESH_FILE = "fresh.parquet"  # item_id, age_days, clicks, ctr, rank (the last snapshot day)
LABELS_FILE = "labels.parquet"  # user_id, item_id, event_timestamp, label, request_id, position
DEAD_LETTER_DIR = "dead_letter"

# Under Settings.run_dir: written by the monitor when the incoming events look broken (an
# upstream bug), {"cause": str, "since": unix seconds}; automated retraining waits while it exists.
RETRAIN_HOLD_FILE = "retrain_hold.json"

# The Redis Stream that POST /events appends to; the lake sink and the monitor read it.
EVENTS_STREAM = "recstack:events"

# Files inside the registered ``candidates`` model's artifact directory ("candidates/").
CANDIDATE_ARTIFACTS = {
    "item_ids": "item_ids.npy",  # int64 [n_items]
    "item_embeddings": "item_embeddings.npy",  # float32 [n_items, dim]
    "user_ids": "user_ids.npy",  # int64 [n_users]
    "user_embeddings": "user_embeddings.npy",  # float32 [n_users, dim]
    "index": "index.faiss",  # faiss inner-product index over item_embeddings, same row order
    "popular": "popular.json",  # list of item ids, most popular first (cold start, fill)
    "meta": "meta.json",  # dim, data window, counts
    "fresh": "fresh.json",  # list of item ids released in the week before training, newest first
    "item_categories": "item_categories.npy",  # int64 [n_items] aligned with item_ids, -1 unknown
}
# Files a model may lack (older versions did not write them): it loads with them empty.
OPTIONAL_CANDIDATE_ARTIFACTS = ("fresh", "item_categories")
