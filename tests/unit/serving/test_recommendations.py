"""GET /recommendations/{user_id}: the contract, bounds, cold start and degraded modes."""

from __future__ import annotations

import numpy as np

from tests.unit.serving.conftest import (
    BrokenRanker,
    FakeUserFeatures,
    make_resources,
)


def test_contract_shape_and_ranked_order(client_for) -> None:
    client = client_for()
    resp = client.get("/recommendations/3", params={"k": 10}, headers={"X-Request-ID": "abc"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) >= {"request_id", "user_id", "items", "model", "degraded"}
    assert body["request_id"] == "abc"
    assert body["user_id"] == 3
    assert body["model"] == {"candidates": "3", "ranker": "7"}
    assert body["degraded"] == [] and body["cold_start"] is False
    items = body["items"]
    assert len(items) == 10
    assert len({i["item_id"] for i in items}) == 10
    assert all(set(i) == {"item_id", "score", "source"} for i in items)
    assert all(i["source"] in {"ann", "popular"} for i in items)
    scores = [i["score"] for i in items]
    assert scores == sorted(scores, reverse=True)
    # The fake ranker scores by item_ctr_7d, which grows with the item id.
    ids = [i["item_id"] for i in items]
    assert ids == sorted(ids, reverse=True)


def test_default_k_and_generated_request_id(client_for, serving_settings) -> None:
    body = client_for().get("/recommendations/1").json()
    assert len(body["items"]) == serving_settings.serving.k_default
    assert len(body["request_id"]) == 32


def test_candidates_include_ann_and_popular_fill(client_for) -> None:
    resources = make_resources()
    client = client_for(resources)
    client.get("/recommendations/2", params={"k": 5})
    matrix = resources.ranker.calls[-1]
    assert matrix.shape == (100, 9) and matrix.dtype.name == "float32"
    cands = resources.candidates.candidates(2, 100)
    assert len(set(cands.item_ids.tolist())) == len(cands) == 100
    assert {9998, 9999} <= set(cands.item_ids[cands.n_ann:].tolist())


def test_k_out_of_bounds_is_422_with_message(client_for) -> None:
    client = client_for()
    for bad in (0, -1, 51):
        resp = client.get("/recommendations/1", params={"k": bad})
        assert resp.status_code == 422
        assert resp.json()["detail"] == f"k must be an integer between 1 and 50 (got {bad})"
    resp = client.get("/recommendations/1", params={"k": "ten"})
    assert resp.status_code == 422
    assert resp.json()["detail"] == "k must be an integer between 1 and 50 (got 'ten')"


def test_bad_user_id_is_422_with_message(client_for) -> None:
    client = client_for()
    for bad in ("abc", "-4", "1.5"):
        resp = client.get(f"/recommendations/{bad}")
        assert resp.status_code == 422, bad
        detail = resp.json()["detail"]
        assert detail.startswith("user_id must be a non-negative integer"), detail
        assert "Traceback" not in resp.text


def test_unknown_user_gets_popular_cold_start(client_for) -> None:
    resources = make_resources()
    client = client_for(resources)
    body = client.get("/recommendations/99999999", params={"k": 5}).json()
    assert body["cold_start"] is True and body["degraded"] == []
    assert [i["item_id"] for i in body["items"]] == [1000, 1001, 1002, 1003, 1004]
    assert {i["source"] for i in body["items"]} == {"popular"}
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    assert resources.user_features.calls == 0  # no Feast look-up for a user without a model


def test_ranker_failure_falls_back_to_candidate_order(client_for) -> None:
    resources = make_resources(ranker=BrokenRanker())
    client = client_for(resources)
    body = client.get("/recommendations/4", params={"k": 8}).json()
    assert body["degraded"] == ["ranker_unavailable"]
    expected = resources.candidates.candidates(4, 100).item_ids[:8].tolist()
    assert [i["item_id"] for i in body["items"]] == expected
    scores = [i["score"] for i in body["items"]]
    assert scores == sorted(scores, reverse=True)
    metrics = client.get("/metrics").text
    assert 'recstack_degraded_total{reason="ranker_unavailable"} 1.0' in metrics


def test_user_feature_failure_ranks_with_nan_and_says_so(client_for) -> None:
    resources = make_resources(user_features=FakeUserFeatures(fail=True))
    client = client_for(resources)
    resp = client.get("/recommendations/4", params={"k": 6})
    assert resp.status_code == 200
    body = resp.json()
    assert body["degraded"] == ["user_features_unavailable"]
    assert len(body["items"]) == 6
    matrix = resources.ranker.calls[-1]  # user columns come first in RANKER_FEATURES
    assert np.isnan(matrix[:, :4]).all() and not np.isnan(matrix[:, 4:]).all()


def test_not_loaded_is_503(client_for) -> None:
    from serving.resources import Resources

    client = client_for(Resources())
    resp = client.get("/recommendations/1")
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"] == "not_ready"
