"""In-memory fakes and a tiny real candidate model for the serving unit tests (no network)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import faiss
import numpy as np
import pytest
from fastapi.testclient import TestClient

from recstack.schemas import ITEM_FEATURES, RANKER_FEATURES, USER_FEATURES, Event
from recstack.settings import Settings
from serving.app import create_app
from serving.candidates import AnnCandidateSource, CandidateModel
from serving.errors import FeatureUnavailable, StreamUnavailable
from serving.features import ItemFeatureTable
from serving.resources import Resources

N_USERS, N_ITEMS, DIM = 50, 800, 8


def tiny_model(n_users: int = N_USERS, n_items: int = N_ITEMS, dim: int = DIM) -> CandidateModel:
    rng = np.random.default_rng(0)
    item_ids = np.arange(1000, 1000 + n_items, dtype=np.int64)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    users = rng.normal(size=(n_users, dim)).astype(np.float32)
    index = faiss.IndexFlatIP(dim)
    index.add(items)
    # Popular: a few indexed items plus two items the index does not know (fresh items).
    popular = np.array([1000, 1001, 1002, 1003, 1004, 9998, 9999], dtype=np.int64)
    return CandidateModel(
        item_ids, items, np.arange(n_users, dtype=np.int64), users, index, popular,
        {"dim": dim}, version="3",
    )


class FakeRanker:
    """Scores rows by the item-ctr column so the expected order is known."""

    version = "7"
    feature_names: Sequence[str] = list(RANKER_FEATURES)

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def score(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(features)
        return features[:, RANKER_FEATURES.index("item_ctr_7d")].astype(np.float64)


class BrokenRanker(FakeRanker):
    def score(self, features: np.ndarray) -> np.ndarray:
        raise RuntimeError("booster exploded")


class FakeUserFeatures:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls = 0

    def read(self, user_id: int) -> np.ndarray:
        self.calls += 1
        if self.fail:
            raise FeatureUnavailable("redis down")
        return np.arange(1, len(USER_FEATURES) + 1, dtype=np.float32)


class FakeSink:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.events: list[Event] = []

    async def append(self, events: Sequence[Event]) -> int:
        if self.fail:
            raise StreamUnavailable("the event stream is unavailable; nothing was stored")
        self.events.extend(events)
        return len(events)


def item_table(model: CandidateModel) -> ItemFeatureTable:
    ids = model.item_ids
    values = np.zeros((len(ids), len(ITEM_FEATURES)), dtype=np.float32)
    # item_ctr_7d grows with the item id, so the fake ranker prefers high ids.
    values[:, ITEM_FEATURES.index("item_ctr_7d")] = (ids - ids.min()) / len(ids)
    return ItemFeatureTable(ids, values)


async def _pong() -> bool:
    return True


def make_resources(**overrides) -> Resources:
    model = tiny_model()
    parts = dict(
        candidates=AnnCandidateSource(model),
        ranker=FakeRanker(),
        user_features=FakeUserFeatures(),
        item_features=item_table(model),
        events=FakeSink(),
        ping=_pong,
        n_candidates=100,
    )
    parts.update(overrides)
    return Resources(**parts)


# Budgets no busy machine runs out of, for tests about something other than deadlines (a
# skipped stage on a loaded machine would change what they check).
ROOMY = {"k_max": 50, "n_candidates": 100, "deadline_ms": 1000, "max_deadline_ms": 1000,
         "candidates_budget_ms": 500, "user_features_budget_ms": 500, "ranking_budget_ms": 500}


@pytest.fixture
def serving_settings() -> Settings:
    return Settings(serving={"k_max": 50, "n_candidates": 100})


@pytest.fixture
def client_for(serving_settings: Settings) -> Callable[..., TestClient]:
    """``client_for(resources)`` -> a TestClient on an app built around those resources."""
    clients: list[TestClient] = []

    def build(resources: Resources | None = None) -> TestClient:
        client = TestClient(create_app(serving_settings, resources or make_resources()))
        client.__enter__()  # runs the lifespan
        clients.append(client)
        return client

    yield build
    for c in clients:
        c.__exit__(None, None, None)
