"""Stage 2 model: a LightGBM binary classifier of click given impression, on RANKER_FEATURES.

In:  a DataFrame with the RANKER_FEATURES columns and ``label`` (0/1).
Out: a native ``lightgbm.Booster`` whose ``feature_name()`` equals RANKER_FEATURES, in order:
     serving builds its feature matrix in that order and checks it on load.

The native API (``lgb.train``) rather than ``LGBMClassifier``: MLflow 3.17 logs sklearn-API
models with skops and refuses unknown types, while a native booster is saved as a plain
``model.lgb`` text file that serving loads with ``lightgbm.Booster(model_file=...)``.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd

from recstack.schemas import CANDIDATE_SCORE_FEATURE, RANKER_FEATURES

logger = logging.getLogger(__name__)


class FeatureOrderError(ValueError):
    """A booster's features are not RANKER_FEATURES in order; serving would mis-read it."""


def feature_matrix(df: pd.DataFrame) -> pd.DataFrame:
    """The RANKER_FEATURES columns of ``df`` as float32, in contract order."""
    missing = [f for f in RANKER_FEATURES if f not in df.columns]
    if missing:
        raise ValueError(f"ranker input lacks features {missing}")
    return df[RANKER_FEATURES].astype(np.float32)


def ranker_params(learning_rate: float, seed: int = 0) -> dict[str, object]:
    """LightGBM parameters: few, shallow trees, and ``cand_score`` constrained to be monotone.

    Class imbalance is handled by down-sampling negatives before training (datasets.py), not
    also by ``scale_pos_weight``: doing both would over-correct, and the sampling rate alone
    gives an exact probability correction (evaluate.calibrate).

    Why 4 leaves, 100 rows per leaf and a monotone ``cand_score``: the training set is ~15k
    rows of 9 noisy columns, and 31-leaf trees over-fitted it. On the demo world's holdout day
    (seed 42; train days 2-3) AUC / NDCG@10 went from 0.605 / 0.558 (31 leaves, 20 rows per
    leaf) to 0.631 / 0.578. The candidate score of a training day comes from a model fit on
    fewer days than the one that scores the holdout (so its scale differs); a monotone
    constraint keeps "more affinity never lowers the score" true whatever the scale.
    """
    monotone = [1 if name == CANDIDATE_SCORE_FEATURE else 0 for name in RANKER_FEATURES]
    return {
        "objective": "binary",
        "metric": ["auc", "binary_logloss"],
        "learning_rate": learning_rate,
        "num_leaves": 4,
        "min_data_in_leaf": 100,
        "monotone_constraints": monotone,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        # One thread: on this shared 2-core machine, 2 OpenMP threads took 0.04-11 s for a
        # 600-row, 20-tree fit (barrier spinning while the other core is busy) where one
        # thread took 6 ms; at the demo's 21k rows x 150 trees one thread takes ~0.25 s.
        "num_threads": 1,
        "verbosity": -1,
    }


def train_ranker(
    train: pd.DataFrame,
    rounds: int = 150,
    learning_rate: float = 0.05,
    seed: int = 0,
) -> lgb.Booster:
    """Train ``rounds`` trees on ``train`` (RANKER_FEATURES + label); returns the booster.

    No early stopping on the holdout: the holdout day must stay unseen to report honest
    metrics, and at this data size a fixed, small number of rounds does not over-fit much.
    """
    if train["label"].nunique() < 2:
        raise ValueError("the ranker's training rows need both clicks and non-clicks")
    params = ranker_params(learning_rate, seed)
    dtrain = lgb.Dataset(
        feature_matrix(train), label=train["label"].to_numpy(), feature_name=RANKER_FEATURES,
        free_raw_data=False,
    )
    booster = lgb.train(params, dtrain, num_boost_round=rounds)
    check_feature_order(booster)
    logger.info("ranker: %d trees on %d rows", booster.num_trees(), len(train))
    return booster


def predict(booster: lgb.Booster, df: pd.DataFrame) -> np.ndarray:
    """Click probabilities (as trained, i.e. before calibration) for the rows of ``df``."""
    return booster.predict(feature_matrix(df))


def check_feature_order(booster: lgb.Booster) -> None:
    """Raise :class:`FeatureOrderError` unless the booster's features are RANKER_FEATURES."""
    if booster.feature_name() != RANKER_FEATURES:
        raise FeatureOrderError(
            f"booster features {booster.feature_name()} != RANKER_FEATURES {RANKER_FEATURES}"
        )
