"""Item feature table, Feast readers (over a fake store) and the circuit breaker."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.schemas import ITEM_FEATURES, USER_FEATURES
from serving.errors import FeatureUnavailable
from serving.features import (
    CircuitBreaker,
    FeastUserFeatures,
    ItemFeatureTable,
    fetch_item_features,
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


class _ContextReader:
    """A v2 user reader: two user features and the user x category rows, one 'round trip'."""

    names = ["user_clicks_28d", "user_ctr_7d"]
    category_names = ["user_category_clicks_28d", "user_category_share_28d"]

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[int]]] = []

    def read(self, user_id: int) -> np.ndarray:
        raise AssertionError("a ranker with category features reads them in the same call")

    def read_with_categories(self, user_id: int, categories: list[int]):
        self.calls.append((user_id, list(categories)))
        rows = np.array([[10.0 * c, c / 10] for c in categories], dtype=np.float32)
        return np.array([28.0, 0.5], dtype=np.float32), rows.reshape(len(categories), 2)


class _Ranker:
    version = "2"
    feature_names = ["user_category_share_28d", "item_age_days", "user_clicks_28d",
                     "src_fresh", "cand_score", "user_category_clicks_28d", "item_ctr_28d"]

    def __init__(self) -> None:
        self.x: np.ndarray | None = None

    def score(self, x: np.ndarray) -> np.ndarray:
        self.x = x
        return np.arange(len(x), dtype=np.float64)


def test_v2_columns_are_built_by_name_with_the_candidates_categories() -> None:
    from serving.protocols import Candidates
    from serving.recommender import LocalScorer

    table = ItemFeatureTable(np.array([5, 6, 7]), np.array([[1, .1], [2, .2], [3, .3]]),
                             names=["item_age_days", "item_ctr_28d"],
                             categories=np.array([4, -1, 2]))
    reader, ranker = _ContextReader(), _Ranker()
    scorer = LocalScorer(ranker, reader, table, user_features_budget_s=60.0)
    # Items 7 (category 2, ann), 5 (category 4, fresh), 6 (unknown category), 9 (no row).
    cands = Candidates(np.array([7, 5, 6, 9]), np.array([.9, .8, .7, .6], np.float32),
                       n_ann=1, n_fresh=1)
    scored = scorer.rank(user_id=3, cands=cands, budget_s=1.0)
    assert scored.scores is not None and scored.degraded == []
    assert reader.calls == [(3, [2, 4])]  # one call, the distinct known categories
    x = ranker.x
    nan = np.nan
    expected = np.array([
        # share, age, clicks, src_fresh, cand, cat clicks, ctr
        [0.2, 3, 28, 0, .9, 20, .3],
        [0.4, 1, 28, 1, .8, 40, .1],
        [nan, 2, 28, 0, .7, nan, .2],
        [nan, nan, 28, 0, .6, nan, nan],
    ], dtype=np.float32)
    np.testing.assert_allclose(x, expected, rtol=1e-6)


def test_a_v1_ranker_with_a_plain_reader_reads_no_categories() -> None:
    from recstack.schemas import RANKER_FEATURES
    from serving.protocols import Candidates
    from serving.recommender import LocalScorer

    class _V1:
        version, feature_names = "1", RANKER_FEATURES

        def score(self, x: np.ndarray) -> np.ndarray:
            assert x.shape == (2, len(RANKER_FEATURES))
            return (x[:, RANKER_FEATURES.index("user_clicks_7d")]
                    + x[:, RANKER_FEATURES.index("item_ctr_7d")]).astype(np.float64)

    class _Plain:
        def read(self, user_id: int) -> np.ndarray:
            return np.arange(len(USER_FEATURES), dtype=np.float32)

    # Items that differ: equal scores would be served as candidate order (ranker_constant_scores).
    table = ItemFeatureTable(np.array([1, 2]), np.array([[0.0] * len(ITEM_FEATURES),
                                                         [1.0] * len(ITEM_FEATURES)]))
    scored = LocalScorer(_V1(), _Plain(), table, user_features_budget_s=60.0).rank(
        0, Candidates(np.array([1, 2]), np.zeros(2, np.float32), n_ann=2), 1.0)
    assert scored.scores.tolist() == [1.0, 2.0] and scored.degraded == []


def test_a_cross_of_two_codes_is_built_from_the_rows_own_columns() -> None:
    from recstack.schemas import NO_PROFILE_CODE
    from serving.protocols import Candidates
    from serving.recommender import LocalScorer

    class _Reader(_ContextReader):
        names = ["user_country_code", "user_ctr_7d"]

        def read_with_categories(self, user_id: int, categories: list[int]):
            country = 338.0 if user_id == 3 else float(NO_PROFILE_CODE)
            return (np.array([country, 0.5], dtype=np.float32),
                    np.zeros((len(categories), 2), dtype=np.float32))

    class _CrossRanker(_Ranker):
        feature_names = ["item_category", "user_country_x_item_category", "user_country_code",
                         "user_category_share_28d"]

    table = ItemFeatureTable(np.array([5, 6, 7]), np.array([[4], [-1], [2]]),
                             names=["item_category"], categories=np.array([4, -1, 2]))
    ranker = _CrossRanker()
    scorer = LocalScorer(ranker, _Reader(), table, user_features_budget_s=60.0)
    cands = Candidates(np.array([7, 5, 6, 9]), np.zeros(4, np.float32), n_ann=4)
    scorer.rank(user_id=3, cands=cands, budget_s=1.0)
    # Item 7 (category 2) and 5 (4) cross with country 338; unknown category / no row: NaN.
    np.testing.assert_array_equal(ranker.x[:, 1], np.array([338_002, 338_004, np.nan, np.nan],
                                                           dtype=np.float32))
    scorer.rank(user_id=4, cands=cands, budget_s=1.0)  # a user without a country
    assert np.isnan(ranker.x[:, 1]).all()
