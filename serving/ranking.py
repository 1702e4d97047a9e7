"""Stage 2: a native LightGBM booster scoring the candidates' feature matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recstack.schemas import (
    CANDIDATE_SCORE_FEATURE,
    CROSS_FEATURES,
    FEATURE_VIEW_FEATURES,
    RANKER_FEATURES,
    SOURCE_FEATURES,
)
from serving.errors import ArtifactError

SERVABLE_FEATURES = frozenset(
    [n for names in FEATURE_VIEW_FEATURES.values() for n in names]
    + [CANDIDATE_SCORE_FEATURE, *SOURCE_FEATURES.values(), *CROSS_FEATURES])
V1_SERVICE = "ranker_v1"


class BoosterRanker:
    """``Ranker`` over a ``lightgbm.Booster``; predicts on one thread (replicas scale out).

    ``feature_names`` are the booster's own, in order: serving builds exactly these columns.
    ``metadata`` is what training recorded with the model (``feature_service``,
    ``feature_names``); a model without it is a ranker_v1 model, which must then have exactly
    RANKER_FEATURES. Names serving cannot build, or a booster that disagrees with its recorded
    names, raise ``ArtifactError``.
    """

    def __init__(self, booster, version: str = "unknown", metadata: dict | None = None) -> None:
        names = list(booster.feature_name())
        meta = dict(metadata or {})
        recorded = meta.get("feature_names")
        if recorded is None and names != list(RANKER_FEATURES):
            raise ArtifactError(
                f"ranker feature names {names} differ from RANKER_FEATURES {RANKER_FEATURES} "
                "and the artifact records no feature list"
            )
        if recorded is not None and list(recorded) != names:
            raise ArtifactError(f"ranker booster features {names} != recorded {recorded}")
        unknown = [n for n in names if n not in SERVABLE_FEATURES]
        if unknown:
            raise ArtifactError(f"ranker features {unknown} cannot be built by serving")
        self.booster = booster
        self.version = version
        self.feature_names: Sequence[str] = names
        self.feature_service = str(meta.get("feature_service") or V1_SERVICE)

    def score(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(features, num_threads=1), dtype=np.float64)
