"""The small interfaces the recommender composes; unit tests pass in-memory fakes for each."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from recstack.schemas import Event

SOURCE_ANN = "ann"
SOURCE_POPULAR = "popular"


@dataclass(frozen=True, slots=True)
class Candidates:
    """Stage-1 output: the first ``n_ann`` items come from the ANN index, the rest are popular.

    ``scores`` is the user-item inner product (NaN where unknown, e.g. a popular item without
    an embedding); ``cold_start`` says the user had no embedding.
    """

    item_ids: np.ndarray  # int64 [n]
    scores: np.ndarray  # float32 [n]
    n_ann: int
    cold_start: bool = False

    def __len__(self) -> int:
        return int(self.item_ids.shape[0])

    def source(self, position: int) -> str:
        return SOURCE_ANN if position < self.n_ann else SOURCE_POPULAR


class CandidateSource(Protocol):
    """Stage 1: a user id in, about ``n`` de-duplicated candidate items out."""

    version: str

    def candidates(self, user_id: int, n: int) -> Candidates: ...


class UserFeatureReader(Protocol):
    """One user's online features, in ``recstack.schemas.USER_FEATURES`` order (NaN if missing).

    Raises ``serving.errors.FeatureUnavailable`` when the online store does not answer.
    """

    def read(self, user_id: int) -> np.ndarray: ...


class ItemFeatureSource(Protocol):
    """Item features for many items at once, in ``ITEM_FEATURES`` order (NaN if missing)."""

    def lookup(self, item_ids: np.ndarray) -> np.ndarray: ...


class Ranker(Protocol):
    """Stage 2: a float32 matrix whose columns are ``feature_names`` in, one score per row out."""

    version: str
    feature_names: Sequence[str]

    def score(self, features: np.ndarray) -> np.ndarray: ...


class EventSink(Protocol):
    """Appends events durably; raises ``serving.errors.StreamUnavailable`` if it cannot."""

    async def append(self, events: Sequence[Event]) -> int: ...
