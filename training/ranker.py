"""Stage 2 model: a LightGBM binary classifier of click given impression.

In:  a DataFrame with the ranker's feature columns (``names``: the feature service's stored
     features, then the request-time ones; RANKER_FEATURES for ranker_v1) and ``label`` (0/1).
Out: a native ``lightgbm.Booster`` whose ``feature_name()`` equals ``names``, in order:
     serving builds its feature matrix from those names and checks them on load.

The native API (``lgb.train``) rather than ``LGBMClassifier``: MLflow 3.17 logs sklearn-API
models with skops and refuses unknown types, while a native booster is saved as a plain
``model.lgb`` text file that serving loads with ``lightgbm.Booster(model_file=...)``.
"""

from __future__ import annotations

import logging

import lightgbm as lgb
import numpy as np
import pandas as pd

from recstack.schemas import CANDIDATE_SCORE_FEATURE, CATEGORICAL_FEATURES, RANKER_FEATURES

logger = logging.getLogger(__name__)


class FeatureOrderError(ValueError):
    """A booster's features are not the expected names in order; serving would mis-read it."""


def feature_matrix(df: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """The ``names`` columns (default RANKER_FEATURES) of ``df`` as float32, in that order."""
    names = list(names or RANKER_FEATURES)
    missing = [f for f in names if f not in df.columns]
    if missing:
        raise ValueError(f"ranker input lacks features {missing}")
    return df[names].astype(np.float32)


def ranker_params(learning_rate: float, seed: int = 0, names: list[str] | None = None
                  ) -> dict[str, object]:
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
    monotone = [1 if name == CANDIDATE_SCORE_FEATURE else 0 for name in names or RANKER_FEATURES]
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
    names: list[str] | None = None,
    weights: np.ndarray | None = None,
) -> lgb.Booster:
    """Train ``rounds`` trees on ``train`` (``names`` + label); returns the booster.

    ``weights``: one per row (e.g. recency weights, so the days after a drift count more than
    the weeks before it). The profile and category codes (CATEGORICAL_FEATURES) are split as
    categories.

    No early stopping on the holdout: the holdout day must stay unseen to report honest
    metrics, and at this data size a fixed, small number of rounds does not over-fit much.
    """
    if train["label"].nunique() < 2:
        raise ValueError("the ranker's training rows need both clicks and non-clicks")
    names = list(names or RANKER_FEATURES)
    params = ranker_params(learning_rate, seed, names)
    dtrain = lgb.Dataset(
        feature_matrix(train, names), label=train["label"].to_numpy(), feature_name=names,
        weight=weights, categorical_feature=[n for n in names if n in CATEGORICAL_FEATURES],
        free_raw_data=False,
    )
    booster = lgb.train(params, dtrain, num_boost_round=rounds)
    check_feature_order(booster, names)
    logger.info("ranker: %d trees on %d rows", booster.num_trees(), len(train))
    return booster


def predict(booster: lgb.Booster, df: pd.DataFrame) -> np.ndarray:
    """Click probabilities (as trained, i.e. before calibration) for the rows of ``df``."""
    return booster.predict(feature_matrix(df, booster.feature_name()).to_numpy(), num_threads=1)


def check_feature_order(booster: lgb.Booster, names: list[str] | None = None) -> None:
    """Raise :class:`FeatureOrderError` unless the booster's features are ``names`` (default
    RANKER_FEATURES) in order."""
    names = list(names or RANKER_FEATURES)
    if booster.feature_name() != names:
        raise FeatureOrderError(f"booster features {booster.feature_name()} != {names}")
