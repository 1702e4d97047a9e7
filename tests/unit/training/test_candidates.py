"""The candidate model and its artifact directory."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pandas as pd
import pytest

from recstack.schemas import CANDIDATE_ARTIFACTS
from tests.unit.training.synthetic import GROUPS, make_events
from training.candidates import (
    CLICK_WEIGHT,
    IMPRESSION_WEIGHT,
    CandidateModel,
    build_index,
    fit_candidate_model,
    interaction_matrix,
    load_artifacts,
    save_artifacts,
    search,
)


def planted() -> CandidateModel:
    return CandidateModel(
        user_ids=np.array([7, 8], dtype=np.int64),
        user_embeddings=np.array([[1, 0], [0, 1]], dtype=np.float32),
        item_ids=np.array([100, 101, 102], dtype=np.int64),
        item_embeddings=np.array([[0.2, 0.9], [0.9, 0.1], [0.5, 0.5]], dtype=np.float32),
    )


def test_search_returns_planted_top_item() -> None:
    model = planted()
    ids, scores = search(model, build_index(model.item_embeddings), np.array([7, 8]), k=2)
    assert ids.tolist() == [[101, 102], [100, 102]]
    assert scores[0, 0] == np.float32(0.9)


def test_score_is_dot_product_and_zero_for_unknown_ids() -> None:
    model = planted()
    scores = model.score(np.array([7, 8, 999, 7]), np.array([102, 100, 100, 555]))
    assert scores.tolist() == [np.float32(0.5), np.float32(0.9), 0.0, 0.0]


def test_interaction_matrix_weights_clicks_over_impressions() -> None:
    events = pd.DataFrame({"user_id": [1, 1, 1, 2], "item_id": [5, 5, 6, 99],
                           "event_type": ["impression", "click", "impression", "click"]})
    m = interaction_matrix(events, np.array([1, 2]), np.array([5, 6])).toarray()
    assert m[0, 0] == pytest.approx(np.log1p(IMPRESSION_WEIGHT + CLICK_WEIGHT))
    assert m[0, 1] == pytest.approx(np.log1p(IMPRESSION_WEIGHT)) and CLICK_WEIGHT > IMPRESSION_WEIGHT
    assert m[1].sum() == 0  # item 99 is outside the item ids: ignored


def test_recency_weighting_halves_an_event_per_half_life() -> None:
    ts = pd.to_datetime(["2026-01-01", "2026-01-03", "2026-01-05"], utc=True)
    events = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [5, 6, 7], "ts": ts,
                           "event_type": ["click"] * 3})
    m = interaction_matrix(events, np.array([1]), np.array([5, 6, 7]), half_life_days=2.0)
    expected = np.log1p(CLICK_WEIGHT * np.array([0.25, 0.5, 1.0]))  # 4, 2 and 0 days old
    assert m.toarray()[0] == pytest.approx(expected)
    flat = interaction_matrix(events, np.array([1]), np.array([5, 6, 7])).toarray()[0]
    assert flat == pytest.approx([np.log1p(CLICK_WEIGHT)] * 3)


def test_fit_learns_taste_groups_and_covers_the_catalogue() -> None:
    events = make_events(n_users=30, n_items=24, days=2)
    catalogue = np.arange(30)  # items 24..29 never shown
    model = fit_candidate_model(events, catalogue, dim=GROUPS, seed=0)
    assert model.item_ids.tolist() == list(range(30))
    assert model.user_embeddings.shape == (30, GROUPS) and model.item_embeddings.dtype == np.float32
    assert not model.item_embeddings[24:].any()  # never interacted with: zero embedding
    ids, _ = search(model, build_index(model.item_embeddings), model.user_ids, k=5)
    same_group = (ids % GROUPS) == (model.user_ids[:, None] % GROUPS)
    assert same_group.mean() > 0.9  # chance: 1/3


def test_fit_pads_to_dim_on_tiny_data() -> None:
    events = pd.DataFrame({"user_id": [1, 2], "item_id": [5, 6], "event_type": ["click"] * 2})
    model = fit_candidate_model(events, np.array([5, 6, 7]), dim=16)
    assert model.dim == 16 and model.user_embeddings.shape == (2, 16)


def test_artifacts_complete_and_round_trip(tmp_path) -> None:
    model = planted()
    paths = save_artifacts(model, tmp_path, popular=[102, 100], meta={"data_end": "2026-01-03"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(CANDIDATE_ARTIFACTS.values())
    assert set(paths) == set(CANDIDATE_ARTIFACTS)
    assert np.load(tmp_path / "item_embeddings.npy").dtype == np.float32
    assert np.load(tmp_path / "item_ids.npy").dtype == np.int64
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["dim"] == 2 and meta["n_items"] == 3 and meta["data_end"] == "2026-01-03"
    index = faiss.read_index(str(tmp_path / "index.faiss"))
    assert index.ntotal == 3 and index.metric_type == faiss.METRIC_INNER_PRODUCT
    loaded, index2, popular, _ = load_artifacts(tmp_path)
    assert popular == [102, 100]
    ids, _ = search(loaded, index2, np.array([8]), k=1)
    assert ids.tolist() == [[100]]
