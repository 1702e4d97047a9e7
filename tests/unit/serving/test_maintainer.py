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


def _maintainer(resources: Resources, metrics: ServingMetrics, home) -> Maintainer:
    # item_refresh_s=0: the alias is checked at every step. A home of its own: with the default
    # one, a developer's real Feast registry file would decide whether a materialization is new.
    return Maintainer(Settings(home=home, serving={"item_refresh_s": 0}), resources, metrics,
                      object())


def test_loads_then_hot_reloads_and_refuses_a_corrupt_version(world, tmp_path) -> None:
    metrics = ServingMetrics()
    resources = Resources()
    maintainer = _maintainer(resources, metrics, tmp_path)

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


def test_item_features_reload_when_a_materialization_finishes(world, tmp_path) -> None:
    resources = Resources()
    maintainer = _maintainer(resources, ServingMetrics(), tmp_path)
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


def _with_registry(tmp_path) -> tuple[Maintainer, Resources, object]:
    settings = Settings(home=tmp_path, serving={"item_refresh_s": 3600})
    registry = settings.feast_dir / "registry.db"
    registry.parent.mkdir(parents=True)
    registry.write_bytes(b"v1")
    resources = Resources()
    return Maintainer(settings, resources, ServingMetrics(), object()), resources, registry


def test_steady_state_step_is_one_stat_no_store_no_rebuild(world, tmp_path) -> None:
    maintainer, resources, registry = _with_registry(tmp_path)
    store = world["store"]
    maintainer.step()
    assert resources.missing() == ["event stream"]
    assert (store.refreshes, world["fetches"], maintainer.rebuilds) == (1, 1, 1)
    recommender = resources.recommender
    for _ in range(5):
        maintainer.step()
    assert (store.refreshes, world["fetches"], maintainer.rebuilds) == (1, 1, 1)
    assert resources.recommender is recommender  # untouched: nothing was swapped

    registry.write_bytes(b"v2 - feast apply, no materialization")
    maintainer.step()  # the registry is read, the stamp is the same: no reload, no rebuild
    assert (store.refreshes, world["fetches"], maintainer.rebuilds) == (2, 1, 1)
    maintainer.step()
    assert store.refreshes == 2

    day = dt.datetime(2026, 1, 3, tzinfo=dt.UTC)
    store.intervals.append((day - dt.timedelta(days=1), day))
    registry.write_bytes(b"v3 - materialized")
    maintainer.step()
    assert (store.refreshes, world["fetches"], maintainer.rebuilds) == (3, 2, 2)


def test_not_ready_until_item_features_have_values(world, monkeypatch, tmp_path) -> None:
    calls = {"n": 0}

    def nothing_materialized(self, entities, chunk=2000):
        calls["n"] += 1
        return np.full((len(entities), len(self.features)), np.nan, dtype=np.float32)

    monkeypatch.setattr(RedisFeatureReader, "read_many", nothing_materialized)
    maintainer, resources, registry = _with_registry(tmp_path)
    maintainer.step()
    assert any(m.startswith("item features (none in the online store yet")
               for m in resources.missing())

    monkeypatch.setattr(RedisFeatureReader, "read_many", lambda self, e, chunk=2000: np.ones(
        (len(e), len(self.features)), dtype=np.float32))
    world["store"].intervals.append((dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
                                     dt.datetime(2026, 1, 3, tzinfo=dt.UTC)))
    registry.write_bytes(b"materialized")
    maintainer.step()
    assert resources.missing() == ["event stream"]


def test_a_v2_ranker_gets_a_reader_and_table_for_its_own_columns(world, monkeypatch,
                                                                 tmp_path) -> None:
    from recstack.schemas import RANKER_V2_USER_CATEGORY_FEATURES
    from serving.onlinestore import RedisUserContextReader

    names = ["user_clicks_28d", "user_ctr_7d", *RANKER_V2_USER_CATEGORY_FEATURES,
             "item_age_days", "item_ctr_7d", "cand_score"]

    def load_v2(settings, versions):
        model = tiny_model()
        object.__setattr__(model, "version", versions["candidates"])
        ranker = FakeRanker()
        ranker.version, ranker.feature_names = versions["ranker"], names
        return LoadedModels(model, ranker)

    monkeypatch.setattr(serving.artifacts, "load_models", load_v2)
    monkeypatch.setattr(RedisFeatureReader, "read_many", lambda self, e, chunk=2000: np.ones(
        (len(e), len(self.features)), dtype=np.float32))
    maintainer, resources, _ = _with_registry(tmp_path)
    maintainer.step()
    reader = resources.user_features
    assert isinstance(reader, RedisUserContextReader)
    assert reader.names == ["user_ctr_7d", "user_clicks_28d"]  # v1 view first, then v2
    assert reader.category_names == RANKER_V2_USER_CATEGORY_FEATURES
    assert resources.item_features.names == ["item_ctr_7d", "item_age_days"]
    assert resources.missing() == ["event stream"]
