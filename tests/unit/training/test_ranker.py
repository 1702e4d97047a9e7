"""The ranker: contract feature order, and it learns a planted signal."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from recstack.schemas import CANDIDATE_SCORE_FEATURE, RANKER_FEATURES
from training.evaluate import auc
from training.ranker import (
    FeatureOrderError,
    check_feature_order,
    feature_matrix,
    predict,
    train_ranker,
)


def frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # Columns deliberately shuffled: the ranker must reorder them to the contract.
    df = pd.DataFrame({f: rng.random(n) for f in reversed(RANKER_FEATURES)})
    df["label"] = (rng.random(n) < 0.05 + 0.8 * (df[CANDIDATE_SCORE_FEATURE] > 0.7)).astype(int)
    return df


def test_booster_feature_names_are_the_contract_in_order(tmp_path) -> None:
    booster = train_ranker(frame(600, 0), rounds=20)
    assert booster.feature_name() == RANKER_FEATURES
    booster.save_model(str(tmp_path / "model.lgb"))
    assert lgb.Booster(model_file=str(tmp_path / "model.lgb")).feature_name() == RANKER_FEATURES


def test_ranker_learns_the_planted_signal() -> None:
    booster = train_ranker(frame(2000, 0), rounds=40)
    holdout = frame(1000, 1)
    assert auc(holdout["label"].to_numpy(), predict(booster, holdout)) > 0.8


def test_feature_matrix_orders_and_rejects_missing() -> None:
    df = frame(5, 0)
    assert list(feature_matrix(df).columns) == RANKER_FEATURES
    with pytest.raises(ValueError, match=CANDIDATE_SCORE_FEATURE):
        feature_matrix(df.drop(columns=CANDIDATE_SCORE_FEATURE))


def test_check_feature_order_rejects_a_reordered_booster() -> None:
    df = frame(300, 0)
    wrong = list(reversed(RANKER_FEATURES))
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1},
                        lgb.Dataset(df[wrong], label=df["label"]), num_boost_round=2)
    with pytest.raises(FeatureOrderError):
        check_feature_order(booster)


def test_single_class_training_is_a_clear_error() -> None:
    df = frame(50, 0).assign(label=0)
    with pytest.raises(ValueError, match="both clicks and non-clicks"):
        train_ranker(df, rounds=2)
