"""The background loader: first load, hot reload on a new alias version, a bad version kept out,
item features reloaded when a materialization finishes (and only then)."""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace

import numpy as np
import pytest

import recstack.featurestore
import serving.artifacts
from recstack.schemas import ITEM_FEATURE_VIEW, ITEM_FEATURES
from recstack.settings import Settings
from serving.artifacts import LoadedModels
from serving.errors import ArtifactError
from serving.metrics import ServingMetrics
from serving.onlinestore import RedisFeatureReader
from serving.resources import Maintainer, Resources
from tests.unit.serving.conftest import FakeRanker, tiny_model


class _Store:
    """The registry side of a FeatureStore: materialization intervals per view."""

    def __init__(self) -> None:
        self.refreshes = 0
        self.intervals: list[tuple[dt.datetime, dt.datetime]] = []

    def refresh_registry(self) -> None:
        self.refreshes += 1

    def get_feature_view(self, name: str) -> SimpleNamespace:
        assert name == ITEM_FEATURE_VIEW
        return SimpleNamespace(materialization_intervals=list(self.intervals))


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch):
    store = _Store()
    state = {"versions": {"candidates": "1", "ranker": "1"}, "fail": set(), "fetches": 0,
             "store": store}

    def load_models(settings, versions):
        if versions["candidates"] in state["fail"]:
            raise ArtifactError("corrupt index")
        model = tiny_model()
        object.__setattr__(model, "version", versions["candidates"])
        ranker = FakeRanker()
        ranker.version = versions["ranker"]
        return LoadedModels(model, ranker)

    def read_many(self, entities, chunk=2000):
        state["fetches"] += 1
        return np.zeros((len(entities), len(ITEM_FEATURES)), dtype=np.float32)

    monkeypatch.setattr(serving.artifacts, "champion_versions", lambda s: dict(state["versions"]))
    monkeypatch.setattr(serving.artifacts, "load_models", load_models)
    monkeypatch.setattr(recstack.featurestore, "open_store", lambda s: store)
    monkeypatch.setattr(RedisFeatureReader, "read_many", read_many)
    return state


def _maintainer(resources: Resources, metrics: ServingMetrics) -> Maintainer:
    # item_refresh_s=0: the alias is checked at every step.
    return Maintainer(Settings(serving={"item_refresh_s": 0}), resources, metrics, object())


def test_loads_then_hot_reloads_and_refuses_a_corrupt_version(world) -> None:
    metrics = ServingMetrics()
    resources = Resources()
    maintainer = _maintainer(resources, metrics)

    maintainer.step()
    assert resources.missing() == ["event stream"]  # models, features: loaded
    assert resources.recommender.versions == {"candidates": "1", "ranker": "1"}
    assert world["fetches"] == 1
    assert 'recstack_model_info{model="candidates",version="1"} 1.0' in metrics.render().decode()
    assert 'recstack_breaker_state{dependency="redis"} 0.0' in metrics.render().decode()

    maintainer.step()  # nothing changed: no reload, no fetch
    assert world["fetches"] == 1

    world["versions"] = {"candidates": "2", "ranker": "2"}
    maintainer.step()
    assert resources.recommender.versions == {"candidates": "2", "ranker": "2"}
    assert world["fetches"] == 2  # the new model's items got their features at once
    text = metrics.render().decode()
    assert 'version="2"' in text and 'version="1"' not in text

    world["versions"] = {"candidates": "3", "ranker": "3"}
    world["fail"].add("3")
    with pytest.raises(ArtifactError):
        maintainer.step()
    assert resources.recommender.versions == {"candidates": "2", "ranker": "2"}


def test_item_features_reload_when_a_materialization_finishes(world) -> None:
    resources = Resources()
    maintainer = _maintainer(resources, ServingMetrics())
    maintainer.step()
    assert world["fetches"] == 1
    maintainer.step()
    assert world["fetches"] == 1

    day = dt.datetime(2026, 1, 3, tzinfo=dt.UTC)
    world["store"].intervals.append((day - dt.timedelta(days=1), day))
    maintainer.step()
    assert world["fetches"] == 2  # a new interval in the registry: reload
    maintainer.step()
    assert world["fetches"] == 2
    world["store"].intervals.append((day, day))  # same end, another run: still new rows
    maintainer.step()
    assert world["fetches"] == 3
