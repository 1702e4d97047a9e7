"""Stage 1: the user's embedding searched in the faiss index, plus popular items as fill."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from serving.protocols import Candidates

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CandidateModel:
    """The loaded ``candidates`` model (see recstack.schemas.CANDIDATE_ARTIFACTS)."""

    item_ids: np.ndarray  # int64 [n_items], the faiss row order
    item_embeddings: np.ndarray  # float32 [n_items, dim]
    user_ids: np.ndarray  # int64 [n_users]
    user_embeddings: np.ndarray  # float32 [n_users, dim]
    index: Any  # faiss.Index over item_embeddings
    popular: np.ndarray  # int64, most popular first
    meta: dict
    version: str = "unknown"


class AnnCandidateSource:
    """``CandidateSource`` over a :class:`CandidateModel`.

    Candidates are the ANN top hits plus up to ``popular_fill`` popular items the ANN did not
    return (exploration and a floor for sparse users), ``n`` in total when the catalogue allows.
    Unknown users get the popular list (``cold_start``).
    """

    def __init__(self, model: CandidateModel, popular_fill: int = 50) -> None:
        self.model = model
        self.version = model.version
        self.popular_fill = popular_fill
        self.popular = model.popular  # the recommender's fallback when this stage fails
        self._user_row = {int(u): i for i, u in enumerate(model.user_ids)}
        self._item_row = {int(t): i for i, t in enumerate(model.item_ids)}
        self._popular_rows = np.array(
            [self._item_row.get(int(t), -1) for t in model.popular], dtype=np.int64
        )

    @property
    def item_ids(self) -> np.ndarray:
        """Every item this source can return (index items and popular items)."""
        return np.union1d(self.model.item_ids, self.model.popular)

    def candidates(self, user_id: int, n: int) -> Candidates:
        row = self._user_row.get(user_id)
        popular = self.model.popular
        if row is None:
            ids = popular[:n].astype(np.int64, copy=False)
            return Candidates(ids, np.full(len(ids), np.nan, np.float32), n_ann=0, cold_start=True)

        user = self.model.user_embeddings[row : row + 1]
        n_search = min(n, int(self.model.index.ntotal))
        scores, rows = self.model.index.search(user, n_search)
        keep = rows[0] >= 0
        ann_rows, ann_scores = rows[0][keep], scores[0][keep]
        ann_ids = self.model.item_ids[ann_rows]

        # Popular items the ANN missed, scored with the same inner product when they have an
        # embedding, so the ranker's cand_score means the same thing for every candidate.
        n_fill = max(min(self.popular_fill, n // 10), n - len(ann_ids))
        fresh = ~np.isin(popular, ann_ids)
        fill_ids = popular[fresh][:n_fill]
        fill_rows = self._popular_rows[fresh][:n_fill]
        fill_scores = np.full(len(fill_ids), np.nan, np.float32)
        has_row = fill_rows >= 0
        if has_row.any():
            fill_scores[has_row] = self.model.item_embeddings[fill_rows[has_row]] @ user[0]

        n_ann = max(0, min(len(ann_ids), n - len(fill_ids)))
        ids = np.concatenate([ann_ids[:n_ann], fill_ids]).astype(np.int64, copy=False)
        cand_scores = np.concatenate([ann_scores[:n_ann], fill_scores]).astype(np.float32)
        return Candidates(ids, cand_scores, n_ann=n_ann, cold_start=False)
