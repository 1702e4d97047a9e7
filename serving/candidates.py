"""Stage 1: the user's embedding searched in the faiss index, plus fresh and popular items."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
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
    # Items released in the week before training, newest first (empty for older models).
    fresh: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    # Category per item_ids row, -1 unknown (None for older models).
    item_categories: np.ndarray | None = None


class AnnCandidateSource:
    """``CandidateSource`` over a :class:`CandidateModel`: three sources, de-duplicated.

    ``n`` candidates when the catalogue allows: the ANN's best hits, then up to ``n // 20``
    fresh items (new items have no embedding yet, so the ANN alone would never show them), then
    popular items the others did not return: at least ``min(popular_fill, n // 10)`` of them
    (exploration, a floor for sparse users) and all remaining slots when the ANN runs short.
    The shares match training's ``training/sources.py``. Unknown users get the popular list
    (``cold_start``).
    """

    def __init__(self, model: CandidateModel, popular_fill: int = 50) -> None:
        self.model = model
        self.version = model.version
        self.popular_fill = popular_fill
        self.popular = model.popular  # the recommender's fallback when this stage fails
        fresh = np.asarray(model.fresh, dtype=np.int64)
        self.fresh = fresh[np.sort(np.unique(fresh, return_index=True)[1])]  # first occurrences
        self._user_row = {int(u): i for i, u in enumerate(model.user_ids)}
        self._item_row = {int(t): i for i, t in enumerate(model.item_ids)}
        self._popular_rows = self._rows(model.popular)
        self._fresh_rows = self._rows(self.fresh)

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        return np.array([self._item_row.get(int(t), -1) for t in ids], dtype=np.int64)

    @property
    def item_ids(self) -> np.ndarray:
        """Every item this source can return (index, popular and fresh items)."""
        return np.union1d(np.union1d(self.model.item_ids, self.model.popular), self.fresh)

    @property
    def item_categories(self) -> np.ndarray:
        """The category of each of :attr:`item_ids` (-1 unknown)."""
        ids = self.item_ids
        out = np.full(len(ids), -1, dtype=np.int64)
        cats = self.model.item_categories
        if cats is not None and len(cats) == len(self.model.item_ids):
            pos = np.searchsorted(ids, self.model.item_ids)
            out[pos] = cats
        return out

    def _dot(self, user: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Inner products of ``user`` with item ``rows`` (NaN where the item has no row), so
        the ranker's cand_score means the same thing for every candidate."""
        out = np.full(len(rows), np.nan, np.float32)
        has_row = rows >= 0
        if has_row.any():
            out[has_row] = self.model.item_embeddings[rows[has_row]] @ user
        return out

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

        n_fresh_slots = n // 20
        n_pop_min = min(self.popular_fill, n // 10)
        n_ann = max(0, min(len(ann_ids), n - n_fresh_slots - n_pop_min))
        new = ~np.isin(self.fresh, ann_ids[:n_ann])
        fresh_ids = self.fresh[new][:n_fresh_slots]
        fresh_scores = self._dot(user[0], self._fresh_rows[new][:n_fresh_slots])
        taken = np.concatenate([ann_ids[:n_ann], fresh_ids])
        new = ~np.isin(popular, taken)
        n_fill = n - len(taken)
        fill_ids = popular[new][:n_fill]
        fill_scores = self._dot(user[0], self._popular_rows[new][:n_fill])
        # The ANN takes back the slots popular items could not fill (a short popular list).
        n_ann = min(len(ann_ids), n - len(fresh_ids) - len(fill_ids))
        ann_keep = ~np.isin(ann_ids[:n_ann], np.concatenate([fresh_ids, fill_ids]))
        ann_take, ann_take_scores = ann_ids[:n_ann][ann_keep], ann_scores[:n_ann][ann_keep]

        ids = np.concatenate([ann_take, fresh_ids, fill_ids]).astype(np.int64, copy=False)
        cand_scores = np.concatenate([ann_take_scores, fresh_scores, fill_scores]).astype(
            np.float32)
        return Candidates(ids, cand_scores, n_ann=len(ann_take), cold_start=False,
                          n_fresh=len(fresh_ids))
