"""A/A through the real serving path: the in-process API with two arms that serve the same
model, simulated users sending one GET per session and reading their arm from the answer."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from app.experiments.online.aa import aa_through_api
from recstack.schemas import ITEM_FEATURES
from recstack.settings import OnlineExperimentSettings, Settings, SimSettings
from serving.app import create_app
from serving.arms import Arm, Experiment
from serving.candidates import AnnCandidateSource
from serving.features import ItemFeatureTable
from serving.recommender import Recommender
from serving.resources import Resources
from simulator.world import World
from tests.integration.test_online_experiments import (
    CandScoreRanker,
    ListSink,
    NoUserFeatures,
    _pong,
    candidate_model,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RUNS = 12


def test_aa_through_the_api_does_not_cry_wolf_more_than_alpha(tmp_path) -> None:
    world = World.generate(SimSettings(n_users=400, n_items=200, n_categories=5, seed=8))
    items = ItemFeatureTable(np.arange(world.n_items, dtype=np.int64),
                             np.zeros((world.n_items, len(ITEM_FEATURES)), np.float32))
    model = candidate_model(world, "1", true_taste=True)
    resources = Resources(
        candidates=AnnCandidateSource(model), ranker=CandScoreRanker("1"),
        user_features=NoUserFeatures(), item_features=items, events=ListSink(), ping=_pong,
        n_candidates=100)
    same = Recommender(AnnCandidateSource(model), CandScoreRanker("1"), NoUserFeatures(), items,
                       n_candidates=100)
    settings = Settings(home=tmp_path / "serve")
    clients: list[TestClient] = []

    def client_for(salt: str) -> TestClient:
        experiment = Experiment("aa", salt, "ab", [Arm("control", "champion", 0.5, main=True),
                                                   Arm("treatment", "champion", 0.5,
                                                       recommender=same)])
        client = TestClient(create_app(settings, resources, experiment=experiment))
        clients.append(client)
        return client

    out = aa_through_api(world, client_for, OnlineExperimentSettings(), runs=RUNS, days=1)
    for client in clients:
        client.close()
    assert out["runs"] == RUNS and len(out["p_values"]) == RUNS
    assert out["requests"] >= RUNS * world.n_users // 2  # every run drove real traffic
    assert all(0.0 <= p <= 1.0 for p in out["p_values"])
    # The false-positive rate is not shown to exceed alpha: alpha is not below the exact 95%
    # interval of the observed rate (3 or more of 12 would put it below, at alpha = 0.05).
    assert out["ci_low"] <= out["alpha"], out
    # Assignment by salt through the API keeps the split: a sample-ratio alarm is rare.
    assert out["srm_alarms"] <= 1, out
