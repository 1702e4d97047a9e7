"""Metrics on examples small enough to check by hand."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from training import evaluate as ev


def test_auc_hand_checked() -> None:
    # Positive-negative pairs ordered correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: 0.35<0.4.
    assert ev.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_auc_single_class_is_nan() -> None:
    assert math.isnan(ev.auc(np.array([0, 0]), np.array([0.1, 0.2])))


def test_log_loss_hand_checked() -> None:
    expected = -(math.log(0.8) + math.log(0.6)) / 2
    assert ev.log_loss(np.array([1, 0]), np.array([0.8, 0.4])) == pytest.approx(expected)


def test_log_loss_clips_certain_mistakes() -> None:
    assert math.isfinite(ev.log_loss(np.array([1]), np.array([0.0])))


def test_calibrate_undoes_negative_sampling() -> None:
    # Odds 1:1 with negatives kept at 1/4 -> true odds 1:4 -> p = 0.2.
    assert ev.calibrate(np.array([0.5]), 0.25)[0] == pytest.approx(0.2)
    assert ev.calibrate(np.array([0.3]), 1.0)[0] == pytest.approx(0.3)


def test_ndcg_per_request_hand_checked() -> None:
    labels = np.array([0, 1, 0, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.5, 0.4, 0.2, 0.1])
    groups = np.array(["a", "a", "a", "b", "b", "c", "c"])
    # a: the click at rank 2 -> 1/log2(3); b: no click, skipped; c: click at rank 1 -> 1.
    expected = (1 / math.log2(3) + 1.0) / 2
    assert ev.ndcg_at_k(labels, scores, groups, k=10) == pytest.approx(expected)


def test_ndcg_cut_at_k() -> None:
    # The only click is ranked third: with k=2 it earns nothing.
    assert ev.ndcg_at_k(np.array([0, 0, 1]), np.array([3.0, 2.0, 1.0]), np.zeros(3), k=2) == 0.0


def test_recall_at_k_hand_checked() -> None:
    retrieved = {1: [10, 11, 12], 2: [20, 21]}
    relevant = {1: {11, 13}, 2: {22}, 3: {5}}
    # user 1: {10, 11} hits 1 of 2; user 2: 0; user 3 (nothing retrieved): 0.
    assert ev.recall_at_k(retrieved, relevant, k=2) == pytest.approx((0.5 + 0 + 0) / 3)


def test_ranking_metrics_perfect_model_beats_random() -> None:
    rng = np.random.default_rng(0)
    holdout = pd.DataFrame({"label": rng.integers(0, 2, 400),
                            "request_id": np.repeat(np.arange(40), 10)})
    perfect = ev.ranking_metrics("m", holdout, holdout["label"].to_numpy() * 0.8 + 0.1,
                                 holdout["label"].to_numpy() * 0.8 + 0.1)
    noise = ev.ranking_metrics("r", holdout, ev.random_scores(400, 1), None)
    assert perfect["m_auc"] == 1.0 and perfect["m_ndcg_at_10"] == pytest.approx(1.0)
    assert perfect["m_logloss"] == pytest.approx(-math.log(0.9))
    assert noise["r_auc"] < 0.65 and noise["r_ndcg_at_10"] < 0.95
    assert "r_logloss" not in noise


def test_popularity_scores_counts_clicks() -> None:
    clicks = pd.DataFrame({"item_id": [3, 3, 5]})
    assert ev.popularity_scores(clicks, np.array([5, 3, 9])).tolist() == [1.0, 2.0, 0.0]


def test_calibration_bins_and_ece_hand_checked() -> None:
    # Two equal-frequency bins: predicted 0.1 (observed 1/4) and 0.5 (observed 2/4).
    p = np.array([0.1, 0.1, 0.1, 0.1, 0.5, 0.5, 0.5, 0.5])
    y = np.array([1, 0, 0, 0, 1, 1, 0, 0])
    bins = ev.calibration_bins(y, p, n_bins=2)
    assert bins["predicted"].tolist() == pytest.approx([0.1, 0.5])
    assert bins["observed"].tolist() == pytest.approx([0.25, 0.5])
    # ECE = 0.5 * |0.25 - 0.1| + 0.5 * |0.5 - 0.5| = 0.075.
    assert ev.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.075)
    assert ev.expected_calibration_error(np.array([0, 1]), np.array([0.5, 0.5]), 1) == 0.0


def test_coverage_and_popularity_bias_hand_checked() -> None:
    lists = {1: [10, 11], 2: [11, 12]}
    assert ev.catalogue_coverage(lists, n_catalogue=6) == pytest.approx(3 / 6)
    # Clicks 10:5, 11:3, 12:0, 13:0 -> percentiles 1.0, 0.75, 0.375, 0.375 (tie shares rank).
    pct = ev.popularity_percentiles({10: 5, 11: 3}, np.array([10, 11, 12, 13]))
    assert pct == pytest.approx({10: 1.0, 11: 0.75, 12: 0.375, 13: 0.375})
    assert ev.popularity_bias(lists, pct) == pytest.approx((1.0 + 0.75 + 0.75 + 0.375) / 4)


def test_ndcg_skips_requests_of_one_item() -> None:
    # One item per request (imported ratings) has nothing to rank: NaN, not a perfect 1.0.
    assert math.isnan(ev.ndcg_at_k(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3]),
                                   np.array(["a", "b", "c"]), k=10))
    # ...and such requests do not count beside real lists.
    labels, scores = np.array([1, 0, 1, 0]), np.array([0.5, 0.1, 0.2, 0.9])
    assert ev.ndcg_at_k(labels, scores, np.array(["a", "b", "b", "b"]), k=10) == pytest.approx(
        1 / math.log2(3))
