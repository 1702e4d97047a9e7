"""The small interfaces the recommender composes; unit tests pass in-memory fakes for each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recstack.schemas import Event

SOURCE_ANN = "ann"
SOURCE_POPULAR = "popular"
SOURCE_FRESH = "fresh"


@dataclass(frozen=True, slots=True)
class Candidates:
    """Stage-1 output, de-duplicated: the first ``n_ann`` items come from the ANN index, the
    next ``n_fresh`` from the fresh list (new items), the rest are popular.

    ``scores`` is the user-item inner product (NaN where unknown, e.g. a popular item without
    an embedding); ``cold_start`` says the user had no embedding.
    """

    item_ids: np.ndarray  # int64 [n]
    scores: np.ndarray  # float32 [n]
    n_ann: int
    cold_start: bool = False
    n_fresh: int = 0

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def source(self, position: int) -> str:
        if position < self.n_ann:
            return SOURCE_ANN
        return SOURCE_FRESH if position < self.n_ann + self.n_fresh else SOURCE_POPULAR

    def without(self, items: np.ndarray, n: int) -> Candidates:
        """These candidates except ``items``, at most ``n`` of them, in order, sources kept."""
        if len(items) == 0 and len(self) <= n:
            return self
        kept = np.flatnonzero(~np.isin(self.item_ids, items))[:n]
        n_ann = int(np.count_nonzero(kept < self.n_ann))
        n_fresh = int(np.count_nonzero(kept < self.n_ann + self.n_fresh)) - n_ann
        return Candidates(self.item_ids[kept], self.scores[kept], n_ann, self.cold_start, n_fresh)

    def sources(self) -> np.ndarray:
        """The source of every position (object array of SOURCE_* strings)."""
        out = np.full(len(self), SOURCE_POPULAR, dtype=object)
        out[: self.n_ann] = SOURCE_ANN
        out[self.n_ann : self.n_ann + self.n_fresh] = SOURCE_FRESH
        return out


class CandidateSource(Protocol):
    """Stage 1: a user id in, about ``n`` de-duplicated candidate items out."""

    version: str

    def candidates(self, user_id: int, n: int) -> Candidates: ...


class SeenReader(Protocol):
    """The items one user has seen, by the stack's seen policy (``settings.seen``), as int64
    ids; raises when the store does not answer."""

    def seen(self, user_id: int) -> np.ndarray: ...


class UserFeatureReader(Protocol):
    """One user's online features, in the order of its ``names`` attribute when it has one,
    else ``recstack.schemas.USER_FEATURES`` (NaN if missing).

    A reader may also offer ``read_with_categories(user_id, categories)`` -> (user vector,
    ``[len(categories), len(category_names)]`` user x category rows), in one round trip.
    Raises ``serving.errors.FeatureUnavailable`` when the online store does not answer.
    """

    def read(self, user_id: int) -> np.ndarray: ...


class ItemFeatureSource(Protocol):
    """Item features for many items at once, in the order of its ``names`` attribute when it
    has one, else ``ITEM_FEATURES`` (NaN if missing); optionally ``categories_of(item_ids)``."""

    def lookup(self, item_ids: np.ndarray) -> np.ndarray: ...


class Ranker(Protocol):
    """Stage 2: a float32 matrix whose columns are ``feature_names`` in, one score per row out."""

    version: str
    feature_names: Sequence[str]

    def score(self, features: np.ndarray) -> np.ndarray: ...


class EventSink(Protocol):
    """Appends events durably; raises ``serving.errors.StreamUnavailable`` if it cannot."""

    async def append(self, events: Sequence[Event]) -> int: ...
