"""Features missing from an empty or lost online store are named, counted and never ranked as if
they were there: the reasons in ``degraded``, the metrics, the candidate-order fallback."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from fastapi.testclient import TestClient

from recstack.schemas import USER_FEATURES
from recstack.settings import Settings
from serving.features import ItemFeatureTable
from serving.protocols import Candidates
from serving.recommender import LocalScorer
from serving.resources import Resources
from tests.unit.serving.conftest import FakeRanker, FakeUserFeatures, item_table, make_resources
from tests.unit.serving.conftest import ROOMY, tiny_model




@pytest.fixture
def serving_settings() -> Settings:
    """Overrides conftest's: ``client_for`` builds its apps with roomy budgets here."""
    return Settings(serving=ROOMY)


class EmptyUserFeatures(FakeUserFeatures):
    """The store answers, but holds nothing for the user (a flushed or lost Redis)."""

    def read(self, user_id: int) -> np.ndarray:
        self.calls += 1
        return np.full(len(USER_FEATURES), np.nan, dtype=np.float32)


class ConstantRanker(FakeRanker):
    """What a booster returns for rows of NaNs: the same leaf for every row."""

    def score(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(features)
        return np.full(len(features), 0.0123, dtype=np.float64)


def _table_with_values_for(ids_with_values: np.ndarray) -> ItemFeatureTable:
    """The tiny model's catalogue, values only for ``ids_with_values`` (NaN elsewhere)."""
    full = item_table(tiny_model())
    values = full.values.copy()
    values[~np.isin(full.item_ids, ids_with_values)] = np.nan
    return ItemFeatureTable(full.item_ids, values)


def _candidates(ids: list[int]) -> Candidates:
    scores = np.linspace(1.0, 0.5, len(ids)).astype(np.float32)
    return Candidates(np.array(ids, dtype=np.int64), scores, n_ann=len(ids))


def _body(client, user: int = 4, k: int = 10) -> dict:
    resp = client.get(f"/recommendations/{user}", params={"k": k})
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_known_user_without_features_in_the_store_is_named_and_counted(client_for) -> None:
    client = client_for(make_resources(user_features=EmptyUserFeatures()))
    body = _body(client)
    assert body["cold_start"] is False
    assert body["degraded"] == ["user_features_missing"]
    assert 'recstack_degraded_total{reason="user_features_missing"} 1.0' in client.get(
        "/metrics").text


def test_a_new_user_is_cold_start_not_missing_features(client_for) -> None:
    client = client_for(make_resources(user_features=EmptyUserFeatures()))
    body = _body(client, user=424242)
    assert body["cold_start"] is True and body["degraded"] == []


def test_candidates_without_item_values_are_named_missing_or_partial() -> None:
    ids = list(range(1100, 1120))
    scorer = LocalScorer(FakeRanker(), FakeUserFeatures(),
                         _table_with_values_for(np.array(ids[:5])))
    partial = scorer.rank(4, _candidates(ids), budget_s=1.0)
    assert partial.degraded == ["item_features_partial"]  # 5 of 20 candidates: under half
    assert partial.scores is not None  # user features and a quarter of the items: still ranked

    most = scorer.rank(4, _candidates(ids[:8]), budget_s=1.0)  # 5 of 8 have values
    assert most.degraded == []

    none = scorer.rank(4, _candidates(list(range(1200, 1220))), budget_s=1.0)
    assert "item_features_missing" in none.degraded


def test_a_ranker_fed_only_missing_values_serves_candidate_order(client_for) -> None:
    # The replica has item values (it is ready), but none for this user's candidates.
    resources = make_resources(user_features=EmptyUserFeatures())
    cands = resources.candidates.candidates(4, 100).item_ids
    others = np.setdiff1d(tiny_model().item_ids, cands)
    ranker = FakeRanker()
    resources.ranker, resources.item_features = ranker, _table_with_values_for(others)
    resources.rebuild()
    client = client_for(resources)
    body = _body(client, k=8)
    assert set(body["degraded"]) == {"user_features_missing", "item_features_missing",
                                     "ranker_no_features"}
    expected = resources.candidates.candidates(4, 100).item_ids[:8].tolist()
    assert [i["item_id"] for i in body["items"]] == expected
    scores = [i["score"] for i in body["items"]]
    assert len(set(scores)) == len(scores)  # candidate scores, not one constant
    assert ranker.calls == []  # never asked to score rows of NaNs
    assert 'recstack_degraded_total{reason="ranker_no_features"} 1.0' in client.get(
        "/metrics").text


def test_constant_ranker_scores_fall_back_to_candidate_order(client_for) -> None:
    resources = make_resources(ranker=ConstantRanker())
    client = client_for(resources)
    body = _body(client, k=6)
    assert body["degraded"] == ["ranker_constant_scores"]
    expected = resources.candidates.candidates(4, 100).item_ids[:6].tolist()
    assert [i["item_id"] for i in body["items"]] == expected
    assert 'recstack_degraded_total{reason="ranker_constant_scores"} 1.0' in client.get(
        "/metrics").text


def test_the_share_of_items_with_values_is_a_gauge(client_for) -> None:
    full = client_for()
    assert "recstack_item_features_share 1.0" in full.get("/metrics").text
    model = tiny_model()
    half = _table_with_values_for(model.item_ids[: len(model.item_ids) // 2])
    client = client_for(make_resources(item_features=half))
    assert "recstack_item_features_share 0.5" in client.get("/metrics").text
    ready = client.get("/readyz").json()
    assert ready["item_features"] == {"items": len(model.item_ids),
                                      "with_values": len(model.item_ids) // 2, "share": 0.5}

