"""Stage 2: a native LightGBM booster scoring the candidates' feature matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recstack.schemas import RANKER_FEATURES
from serving.errors import ArtifactError


class BoosterRanker:
    """``Ranker`` over a ``lightgbm.Booster``; predicts on one thread (replicas scale out)."""

    def __init__(self, booster, version: str = "unknown") -> None:
        names = list(booster.feature_name())
        if names != list(RANKER_FEATURES):
            raise ArtifactError(
                f"ranker feature names {names} differ from RANKER_FEATURES {RANKER_FEATURES}"
            )
        self.booster = booster
        self.version = version
        self.feature_names: Sequence[str] = names

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(features, num_threads=1), dtype=np.float64)
