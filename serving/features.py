"""Online features through the Feast SDK, and the in-process item feature table.

Serving reads users with ``serving.onlinestore.RedisFeatureReader`` (one HMGET); the Feast
readers here are the reference it is checked and benchmarked against. Item features change
only when the pipelines materialize, so they live in an in-process ``ItemFeatureTable``
(DESIGN.md section 7: never 500 Feast look-ups per request).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from recstack.schemas import ITEM_FEATURE_VIEW, ITEM_FEATURES, USER_FEATURE_VIEW, USER_FEATURES
from serving.breaker import CircuitBreaker
from serving.errors import FeatureUnavailable

logger = logging.getLogger(__name__)

# Entity join keys of the Feast views (feature_repo/).
USER_KEY = "user_id"
ITEM_KEY = "item_id"


def _column(values: list[Any]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values], dtype=np.float32)


class FeastUserFeatures:
    """``UserFeatureReader`` over a ``feast.FeatureStore`` (one ``get_online_features`` call).

    Behind a circuit breaker so a dead Redis costs one fast failure per cooldown.
    """

    def __init__(self, store: Any, breaker: CircuitBreaker | None = None) -> None:
        self.store = store
        self.breaker = breaker or CircuitBreaker()
        self._refs = [f"{USER_FEATURE_VIEW}:{name}" for name in USER_FEATURES]

    def read(self, user_id: int) -> np.ndarray:
        if not self.breaker.allow():
            raise FeatureUnavailable("user features: circuit open")
        try:
            rows = self.store.get_online_features(
                features=self._refs, entity_rows=[{USER_KEY: user_id}]
            ).to_dict()
        except Exception as exc:  # any store failure degrades the request, never fails it
            self.breaker.record(ok=False)
            raise FeatureUnavailable(f"user features: {type(exc).__name__}: {exc}") from exc
        self.breaker.record(ok=True)
        return np.array([_column(rows[name])[0] for name in USER_FEATURES], dtype=np.float32)


class ItemFeatureTable:
    """``ItemFeatureSource`` held in memory: sorted item ids and an aligned float32 matrix.

    ``names`` are the columns (default ITEM_FEATURES); ``categories`` (optional, aligned with
    ``item_ids``) is each item's category, -1 when unknown: serving reads the user x category
    features of the candidates' categories.
    """

    def __init__(self, item_ids: np.ndarray, values: np.ndarray, loaded_at: float | None = None,
                 names: list[str] | None = None, categories: np.ndarray | None = None):
        self.names = list(names if names is not None else ITEM_FEATURES)
        order = np.argsort(item_ids, kind="stable")
        self.item_ids = np.asarray(item_ids, dtype=np.int64)[order]
        self.values = np.asarray(values, dtype=np.float32)[order]
        if self.values.shape != (len(self.item_ids), len(self.names)):
            raise ValueError(
                f"item feature table shape {self.values.shape} does not match "
                f"{len(self.item_ids)} items x {len(self.names)} features"
            )
        self.categories = (np.full(len(self.item_ids), -1, dtype=np.int64) if categories is None
                           else np.asarray(categories, dtype=np.int64)[order])
        if self.categories.shape != self.item_ids.shape:
            raise ValueError(f"categories shape {self.categories.shape} != items "
                             f"{self.item_ids.shape}")
        self.loaded_at = time.time() if loaded_at is None else loaded_at
        # Items with at least one value; 0 for a non-empty table: nothing materialized yet.
        self.n_with_values = (int(np.isfinite(self.values).any(axis=1).sum())
                              if self.values.shape[1] else len(self.item_ids))

    def __len__(self) -> int:
        return len(self.item_ids)

    def _positions(self, item_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.item_ids, item_ids)
        pos = np.minimum(pos, len(self.item_ids) - 1)
        return pos, self.item_ids[pos] == item_ids

    def lookup(self, item_ids: np.ndarray) -> np.ndarray:
        out = np.full((len(item_ids), len(self.names)), np.nan, dtype=np.float32)
        if len(self.item_ids) == 0:
            return out
        pos, hit = self._positions(item_ids)
        out[hit] = self.values[pos[hit]]
        return out

    def categories_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Each item's category (int64), -1 when unknown."""
        out = np.full(len(item_ids), -1, dtype=np.int64)
        if len(self.item_ids) == 0:
            return out
        pos, hit = self._positions(item_ids)
        out[hit] = self.categories[pos[hit]]
        return out


def fetch_item_features(store: Any, item_ids: np.ndarray) -> ItemFeatureTable:
    """Read ITEM_FEATURES for ``item_ids`` from the Feast online store in one batch call."""
    ids = [int(i) for i in item_ids]
    refs = [f"{ITEM_FEATURE_VIEW}:{name}" for name in ITEM_FEATURES]
    rows = store.get_online_features(
        features=refs, entity_rows=[{ITEM_KEY: i} for i in ids]
    ).to_dict()
    values = np.stack([_column(rows[name]) for name in ITEM_FEATURES], axis=1)
    table = ItemFeatureTable(np.array(ids, dtype=np.int64), values)
    found = int(np.isfinite(values).any(axis=1).sum())
    logger.info("item features loaded: %d items, %d with values", len(ids), found)
    return table
