"""The background loader: first load, hot reload on a new alias version, a bad version kept out."""

from __future__ import annotations

import numpy as np
import pytest

import recstack.featurestore
import serving.artifacts
from recstack.schemas import ITEM_FEATURES
from recstack.settings import Settings
from serving.artifacts import LoadedModels
from serving.errors import ArtifactError
from serving.features import ItemFeatureTable
from serving.metrics import ServingMetrics
from serving.resources import Maintainer, Resources
from tests.unit.serving.conftest import FakeRanker, tiny_model


class _Store:
    def __init__(self) -> None:
        self.refreshes = 0

    def refresh_registry(self) -> None:
        self.refreshes += 1

    def get_online_features(self, features, entity_rows):
        raise AssertionError("not used: fetch_item_features is patched")


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch):
    state = {"versions": {"candidates": "1", "ranker": "1"}, "fail": set(), "fetches": 0}

    def load_models(settings, versions):
        if versions["candidates"] in state["fail"]:
            raise ArtifactError("corrupt index")
        model = tiny_model()
        object.__setattr__(model, "version", versions["candidates"])
        ranker = FakeRanker()
        ranker.version = versions["ranker"]
        return LoadedModels(model, ranker)

    def fetch(store, item_ids):
        state["fetches"] += 1
        return ItemFeatureTable(item_ids, np.zeros((len(item_ids), len(ITEM_FEATURES))))

    monkeypatch.setattr(serving.artifacts, "champion_versions", lambda s: dict(state["versions"]))
    monkeypatch.setattr(serving.artifacts, "load_models", load_models)
    monkeypatch.setattr(recstack.featurestore, "open_store", lambda s: _Store())
    monkeypatch.setattr("serving.resources.fetch_item_features", fetch)
    monkeypatch.setattr("serving.resources._short_redis_timeouts", lambda store, t: None)
    return state


def test_loads_then_hot_reloads_and_refuses_a_corrupt_version(world) -> None:
    metrics = ServingMetrics()
    resources = Resources()
    maintainer = Maintainer(Settings(), resources, metrics)

    maintainer.step()
    assert resources.missing() == ["event stream"]  # models, features: loaded
    assert resources.recommender.versions == {"candidates": "1", "ranker": "1"}
    assert world["fetches"] == 1
    assert 'recstack_model_info{model="candidates",version="1"} 1.0' in metrics.render().decode()

    maintainer.step()  # nothing changed, refresh not due: no reload, no fetch
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
