"""The two-stage recommender: candidates, features, ranking, top k; degrades, never fails.

Every stage's duration is returned with the result so the caller can record metrics; the
recommender itself knows nothing of HTTP or Prometheus.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from recstack.schemas import CANDIDATE_SCORE_FEATURE, ITEM_FEATURES, USER_FEATURES
from serving.errors import FeatureUnavailable
from serving.protocols import (
    CandidateSource, Candidates, ItemFeatureSource, Ranker, UserFeatureReader,
)

logger = logging.getLogger(__name__)

RANKER_UNAVAILABLE = "ranker_unavailable"
USER_FEATURES_UNAVAILABLE = "user_features_unavailable"
ITEM_FEATURES_UNAVAILABLE = "item_features_unavailable"
DEADLINE_EXCEEDED = "deadline_exceeded"


@dataclass(frozen=True, slots=True)
class RankedItem:
    item_id: int
    score: float
    source: str


@dataclass(slots=True)
class Recommendation:
    """What ``Recommender.recommend`` returns: the list, why it is degraded, stage timings."""

    items: list[RankedItem]
    degraded: list[str] = field(default_factory=list)
    cold_start: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)


def _column_plan(names: Sequence[str]) -> tuple[list[int], list[int], list[int], list[int], int]:
    """Where each booster column comes from: (user src, user dst, item src, item dst, cand)."""
    user_src, user_dst, item_src, item_dst, cand = [], [], [], [], -1
    for col, name in enumerate(names):
        if name in USER_FEATURES:
            user_src.append(USER_FEATURES.index(name))
            user_dst.append(col)
        elif name in ITEM_FEATURES:
            item_src.append(ITEM_FEATURES.index(name))
            item_dst.append(col)
        elif name == CANDIDATE_SCORE_FEATURE:
            cand = col
        else:
            raise ValueError(f"ranker feature {name!r} is not served")
    return user_src, user_dst, item_src, item_dst, cand


class Recommender:
    """Composes a ``CandidateSource``, feature readers and a ``Ranker`` into top-k lists."""

    def __init__(
        self,
        candidates: CandidateSource,
        ranker: Ranker | None,
        user_features: UserFeatureReader | None,
        item_features: ItemFeatureSource | None,
        n_candidates: int = 500,
        deadline_s: float = 0.1,
    ) -> None:
        self.candidate_source = candidates
        self.ranker = ranker
        self.user_features = user_features
        self.item_features = item_features
        self.n_candidates = n_candidates
        self.deadline_s = deadline_s
        self._plan = _column_plan(ranker.feature_names) if ranker is not None else None

    @property
    def versions(self) -> dict[str, str]:
        return {
            "candidates": str(self.candidate_source.version),
            "ranker": str(self.ranker.version) if self.ranker is not None else "none",
        }

    def recommend(self, user_id: int, k: int) -> Recommendation:
        """Top ``k`` items for ``user_id``: ranked when possible, candidate order otherwise."""
        start = time.perf_counter()
        timings: dict[str, float] = {}
        degraded: list[str] = []

        cands = self.candidate_source.candidates(user_id, self.n_candidates)
        timings["candidates"] = time.perf_counter() - start
        if cands.cold_start or len(cands) == 0:
            return Recommendation(_in_order(cands, k), degraded, cands.cold_start, timings)

        t = time.perf_counter()
        user_vec = np.full(len(USER_FEATURES), np.nan, dtype=np.float32)
        if self.user_features is None:
            degraded.append(USER_FEATURES_UNAVAILABLE)
        else:
            try:
                user_vec = self.user_features.read(user_id)
            except FeatureUnavailable as exc:
                logger.debug("degraded: %s", exc)
                degraded.append(USER_FEATURES_UNAVAILABLE)
        timings["user_features"] = time.perf_counter() - t

        t = time.perf_counter()
        if self.item_features is None:
            item_mat = np.full((len(cands), len(ITEM_FEATURES)), np.nan, dtype=np.float32)
            degraded.append(ITEM_FEATURES_UNAVAILABLE)
        else:
            item_mat = self.item_features.lookup(cands.item_ids)
        timings["item_features"] = time.perf_counter() - t

        if self.ranker is None or self._plan is None:
            degraded.append(RANKER_UNAVAILABLE)
            return Recommendation(_in_order(cands, k), degraded, False, timings)
        if time.perf_counter() - start > self.deadline_s:
            degraded.append(DEADLINE_EXCEEDED)
            return Recommendation(_in_order(cands, k), degraded, False, timings)

        t = time.perf_counter()
        try:
            scores = self.ranker.score(self._matrix(cands, user_vec, item_mat))
            if scores.shape != (len(cands),):
                raise ValueError(f"ranker returned shape {scores.shape} for {len(cands)} rows")
        except Exception:  # a broken ranker must not break the response
            logger.warning("ranker failed; serving candidate order", exc_info=True)
            timings["ranking"] = time.perf_counter() - t
            degraded.append(RANKER_UNAVAILABLE)
            return Recommendation(_in_order(cands, k), degraded, False, timings)
        top = _top_k(scores, k)
        items = [
            RankedItem(int(cands.item_ids[i]), float(scores[i]), cands.source(int(i))) for i in top
        ]
        timings["ranking"] = time.perf_counter() - t
        return Recommendation(items, degraded, False, timings)

    def _matrix(self, cands: Candidates, user_vec: np.ndarray, item_mat: np.ndarray) -> np.ndarray:
        user_src, user_dst, item_src, item_dst, cand = self._plan  # type: ignore[misc]
        x = np.empty((len(cands), len(user_dst) + len(item_dst) + (cand >= 0)), dtype=np.float32)
        x[:, user_dst] = user_vec[user_src]
        x[:, item_dst] = item_mat[:, item_src]
        if cand >= 0:
            x[:, cand] = cands.scores
        return x


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _in_order(cands: Candidates, k: int) -> list[RankedItem]:
    """The first ``k`` candidates as they are; scores made finite and non-increasing.

    Unknown scores (cold start, popular items without an embedding) become a rank-based score
    below every known one, so clients can always sort and compare.
    """
    n = min(k, len(cands))
    scores = cands.scores[:n].astype(np.float64)
    finite = np.isfinite(scores)
    if not finite.all():
        floor = float(scores[finite].min()) if finite.any() else 1.0
        rank_scores = floor - (np.arange(n) + 1) / (n + 1)
        scores = np.where(finite, scores, rank_scores)
    scores = np.minimum.accumulate(scores) if n else scores
    return [
        RankedItem(int(cands.item_ids[i]), float(scores[i]), cands.source(i)) for i in range(n)
    ]
