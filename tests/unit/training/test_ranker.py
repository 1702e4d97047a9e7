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


def drifted(n: int, seed: int, old_share: float) -> tuple[pd.DataFrame, np.ndarray]:
    """Rows where country 7 x categories {2, 3} click far more, except for the ``old_share``
    of rows from before the drift (where they click like everyone); returns rows and ages."""
    rng = np.random.default_rng(seed)
    names = ["user_country_code", "item_category", CANDIDATE_SCORE_FEATURE]
    df = pd.DataFrame({"user_country_code": rng.choice([3, 7, 11, 19], n).astype(float),
                       "item_category": rng.integers(0, 8, n).astype(float),
                       CANDIDATE_SCORE_FEATURE: rng.random(n)})
    old = rng.random(n) < old_share
    hit = (df["user_country_code"] == 7) & df["item_category"].isin([2, 3]) & ~old
    df["label"] = (rng.random(n) < np.where(hit, 0.5, 0.05)).astype(int)
    age_days = np.where(old, rng.uniform(1, 10, n), rng.uniform(0, 1, n))
    return df[[*names, "label"]], age_days


def test_a_recent_segment_by_category_taste_is_learned_with_recency_weights(tmp_path) -> None:
    # 90% of the rows predate the drift: unweighted, the new interaction is a tenth of the data;
    # weighted by 2^(-age) the day after the drift carries most of the weight.
    train, age = drifted(20_000, 0, old_share=0.9)
    names = [c for c in train.columns if c != "label"]
    test, _ = drifted(4000, 1, old_share=0.0)
    hit = (test["user_country_code"] == 7) & test["item_category"].isin([2, 3])

    def lift(booster: lgb.Booster) -> float:
        p = predict(booster, test)
        return float(p[hit.to_numpy()].mean() / p[~hit.to_numpy()].mean())

    weighted = train_ranker(train, rounds=60, names=names, weights=np.exp2(-age))
    flat = train_ranker(train, rounds=60, names=names)
    # True lift 10x; measured 4.7 weighted vs 1.9 unweighted (seeds 0 and 1).
    assert lift(weighted) > 3.5 and lift(weighted) > 1.8 * lift(flat)
    # The codes are categories in the saved model too (serving loads the file).
    weighted.save_model(str(tmp_path / "model.lgb"))
    loaded = lgb.Booster(model_file=str(tmp_path / "model.lgb"))
    np.testing.assert_allclose(loaded.predict(test[names].to_numpy(np.float32)),
                               predict(weighted, test), rtol=1e-6)
    infos = loaded.dump_model()["feature_infos"]
    assert infos["item_category"]["values"] and infos["user_country_code"]["values"]
    assert infos[CANDIDATE_SCORE_FEATURE]["values"] == []  # a number, not a category
