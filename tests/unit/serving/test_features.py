"""Item feature table, Feast readers (over a fake store) and the circuit breaker."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.schemas import ITEM_FEATURES, USER_FEATURES
from serving.errors import FeatureUnavailable
from serving.features import (
    CircuitBreaker, FeastUserFeatures, ItemFeatureTable, fetch_item_features,
)


class _Response:
    def __init__(self, rows: dict) -> None:
        self.rows = rows

    def to_dict(self) -> dict:
        return self.rows


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[list[str], list[dict]]] = []

    def get_online_features(self, features, entity_rows):
        self.calls.append((features, entity_rows))
        if self.fail:
            raise ConnectionError("Connection refused")
        names = [f.split(":")[1] for f in features]
        key = next(iter(entity_rows[0]))
        ids = [row[key] for row in entity_rows]
        rows = {key: ids}
        for j, name in enumerate(names):  # id 7 is unknown to the store: None values
            rows[name] = [None if i == 7 else float(i * 10 + j) for i in ids]
        return _Response(rows)


def test_item_table_lookup_aligns_and_marks_missing() -> None:
    values = np.arange(3 * len(ITEM_FEATURES), dtype=np.float32).reshape(3, -1)
    table = ItemFeatureTable(np.array([30, 10, 20]), values)
    out = table.lookup(np.array([10, 99, 30, 5]))
    assert out.shape == (4, len(ITEM_FEATURES))
    np.testing.assert_array_equal(out[0], values[1])
    np.testing.assert_array_equal(out[2], values[0])
    assert np.isnan(out[1]).all() and np.isnan(out[3]).all()


def test_fetch_item_features_is_one_batch_call() -> None:
    store = FakeStore()
    table = fetch_item_features(store, np.array([5, 6, 7]))
    assert len(store.calls) == 1 and len(store.calls[0][1]) == 3
    assert store.calls[0][0][0] == "item_features:item_impressions_7d"
    out = table.lookup(np.array([6, 7]))
    assert out[0, 0] == 60.0 and np.isnan(out[1]).all()


def test_user_features_read_and_failure() -> None:
    vec = FeastUserFeatures(FakeStore()).read(3)
    np.testing.assert_array_equal(vec, [30.0 + j for j in range(len(USER_FEATURES))])
    assert np.isnan(FeastUserFeatures(FakeStore()).read(7)).all()
    with pytest.raises(FeatureUnavailable, match="ConnectionError"):
        FeastUserFeatures(FakeStore(fail=True)).read(3)


def test_breaker_stops_calling_a_dead_store_then_retries() -> None:
    store = FakeStore(fail=True)
    reader = FeastUserFeatures(store, CircuitBreaker(threshold=2, cooldown_s=0.05))
    for _ in range(10):
        with pytest.raises(FeatureUnavailable):
            reader.read(1)
    assert len(store.calls) == 2  # opened after two failures; the rest failed fast
    import time

    time.sleep(0.06)
    store.fail = False
    assert reader.read(1).shape == (len(USER_FEATURES),)  # the trial call closes it
    assert not reader.breaker.open
