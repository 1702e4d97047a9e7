"""Feature values as serving reads them (Feast's online store) and as training saw them
(the offline tables, point in time), for the drift and skew checks."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
import pandas as pd

from recstack.schemas import (
    ITEM_FEATURE_VIEW,
    ITEM_FEATURES,
    ITEM_FEATURES_FILE,
    USER_FEATURE_VIEW,
    USER_FEATURES,
    USER_FEATURES_FILE,
)
from recstack.settings import Settings

logger = logging.getLogger(__name__)


def online_features(store: Any, user_ids: list[int], item_ids: list[int]) -> dict[str, np.ndarray]:
    """``{feature: values}`` of the sampled users and items from the online store (NaN when a
    key has no row), through the Feast SDK."""
    out: dict[str, np.ndarray] = {}
    for view, names, key, ids in ((USER_FEATURE_VIEW, USER_FEATURES, "user_id", user_ids),
                                  (ITEM_FEATURE_VIEW, ITEM_FEATURES, "item_id", item_ids)):
        if not ids:
            continue
        got = store.get_online_features(
            features=[f"{view}:{n}" for n in names], entity_rows=[{key: int(i)} for i in ids],
        ).to_dict()
        for n in names:
            out[n] = np.array([np.nan if v is None else float(v) for v in got[n]], dtype=np.float64)
    return out


def offline_point_in_time(settings: Settings, user_ids: list[int], as_of: dt.datetime
                          ) -> pd.DataFrame:
    """The newest offline user-feature row at or before ``as_of`` per user (index user_id)."""
    path = settings.features_dir / USER_FEATURES_FILE
    table = pd.read_parquet(path, columns=["user_id", "event_timestamp", *USER_FEATURES],
                            filters=[("user_id", "in", [int(u) for u in user_ids])])
    return newest_as_of(table, "user_id", as_of)


def newest_as_of(table: pd.DataFrame, key: str, at: dt.datetime) -> pd.DataFrame:
    """The newest row at or before ``at`` per ``key`` (index ``key``, ``event_timestamp``
    dropped): what a daily materialization left in the online store at ``at``."""
    ts = pd.Timestamp(at)
    stamps = table["event_timestamp"]
    if stamps.dt.tz is None and ts.tzinfo is not None:
        ts = ts.tz_localize(None)
    past = table[stamps <= ts]
    return (past.sort_values("event_timestamp").groupby(key).tail(1)
            .drop(columns="event_timestamp").set_index(key))


def skew(settings: Settings, store: Any, user_ids: list[int], as_of: dt.datetime,
         tolerance: float = 1e-6) -> tuple[float, int]:
    """Training-serving skew: (share of mismatching values, values compared) between the online
    store and the offline point-in-time rows for the same users at ``as_of``. Users without an
    offline row are skipped (serving answers them as cold start)."""
    if not user_ids or not (settings.features_dir / ITEM_FEATURES_FILE).exists():
        return float("nan"), 0
    offline = offline_point_in_time(settings, user_ids, as_of)
    users = [u for u in user_ids if u in offline.index]
    if not users:
        return float("nan"), 0
    online = online_features(store, users, [])
    mismatches = compared = 0
    for name in USER_FEATURES:
        a = online[name]
        b = offline.loc[users, name].to_numpy(dtype=np.float64)
        both_nan = np.isnan(a) & np.isnan(b)
        close = np.isclose(a, b, rtol=tolerance, atol=tolerance) | both_nan
        mismatches += int((~close).sum())
        compared += len(users)
    return mismatches / compared, compared
