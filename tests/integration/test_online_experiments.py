"""An A/B experiment through the real HTTP API: uvicorn serving two arms, simulated users who
click by ground truth and post their events, the analysis, the report and the MLflow run."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence

import faiss
import numpy as np
import pytest
import uvicorn

from app.experiments.online.run import run_ab
from recstack.schemas import CANDIDATE_SCORE_FEATURE, ITEM_FEATURES, RANKER_FEATURES, Event
from recstack.settings import Settings, SimSettings
from serving.app import create_app
from serving.arms import Arm, Experiment, assign
from serving.candidates import AnnCandidateSource, CandidateModel
from serving.features import ItemFeatureTable
from serving.recommender import Recommender
from serving.resources import Resources
from simulator.world import World
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.mlflow, pytest.mark.slow]

SALT = "it-salt"


class CandScoreRanker:
    """Ranks by the candidate model's score (the ANN inner product)."""

    feature_names: Sequence[str] = list(RANKER_FEATURES)

    def __init__(self, version: str) -> None:
        self.version = version

    def score(self, features: np.ndarray) -> np.ndarray:
        return features[:, RANKER_FEATURES.index(CANDIDATE_SCORE_FEATURE)].astype(np.float64)


class NoUserFeatures:
    def read(self, user_id: int) -> np.ndarray:
        return np.zeros(4, dtype=np.float32)


class ListSink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    async def append(self, events: Sequence[Event]) -> int:
        self.events.extend(events)
        return len(events)


async def _pong() -> bool:
    return True


def candidate_model(world: World, version: str, true_taste: bool) -> CandidateModel:
    """The true taste embeddings (a very good model) or random ones (a poor model)."""
    rng = np.random.default_rng(5)
    items = world.item_embedding if true_taste else rng.normal(size=world.item_embedding.shape)
    users = world.user_taste if true_taste else rng.normal(size=world.user_taste.shape)
    items = np.ascontiguousarray(items, dtype=np.float32)
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    return CandidateModel(np.arange(world.n_items, dtype=np.int64), items,
                          np.arange(world.n_users, dtype=np.int64),
                          np.ascontiguousarray(users, dtype=np.float32), index,
                          np.arange(20, dtype=np.int64), {"dim": items.shape[1]}, version)


@pytest.fixture
def serving_two_arms(tmp_path) -> Iterator[tuple[str, World, ListSink, Experiment]]:
    world = World.generate(SimSettings(n_users=800, n_items=300, n_categories=6, seed=21))
    item_ids = np.arange(world.n_items, dtype=np.int64)
    items = ItemFeatureTable(item_ids, np.zeros((world.n_items, len(ITEM_FEATURES)), np.float32))
    sink = ListSink()
    resources = Resources(
        candidates=AnnCandidateSource(candidate_model(world, "1", true_taste=False)),
        ranker=CandScoreRanker("1"), user_features=NoUserFeatures(), item_features=items,
        events=sink, ping=_pong, n_candidates=100,
    )
    treatment = Recommender(AnnCandidateSource(candidate_model(world, "2", true_taste=True)),
                            CandScoreRanker("2"), NoUserFeatures(), items, n_candidates=100)
    experiment = Experiment("it", SALT, "ab", [
        Arm("control", "champion", 0.5, main=True),
        Arm("treatment", "challenger", 0.5, recommender=treatment),
    ])
    app = create_app(Settings(home=tmp_path / "serve"), resources, experiment=experiment)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", world, sink, experiment
    finally:
        server.should_exit = True
        thread.join(10)


def test_ab_through_the_http_api_reports_decides_and_logs_to_mlflow(
    serving_two_arms, mlflow_server: str, tmp_path
) -> None:
    url, world, sink, _ = serving_two_arms
    settings = Settings(home=tmp_path / "home", mlflow={"tracking_uri": mlflow_server},
                        ab={"salt": SALT, "max_p99_ms": 1000.0})
    out = run_ab(settings, "challenger", control="champion", sim_days=2, url=url,
                 promote=False, world=world)
    r = out.result

    # The analysis: the true-taste model wins, the split is as configured, guardrails held.
    assert r["backend"] == "api"
    assert r["decision"] == "promote", r["reason"]
    assert r["arms"]["treatment"]["ctr"] > r["arms"]["control"]["ctr"]
    assert r["srm"]["ok"] and r["guardrails"]["ok"]
    for arm in ("control", "treatment"):
        g = r["guardrails"]["arms"][arm]
        assert g["p99_latency_ms"] is not None and g["error_rate"] == 0.0

    # Every impression and click went back with the arm the API assigned.
    assert {e.event_type for e in sink.events} == {"impression", "click"}
    arms = {e.user_id: e.arm for e in sink.events}
    assert all(e.arm is not None for e in sink.events)
    assert all(arm == ["control", "treatment"][assign(u, SALT, [0.5, 0.5])]
               for u, arm in arms.items())
    shown = sum(e.event_type == "impression" for e in sink.events)
    assert shown == sum(a["impressions"] for a in r["arms"].values())

    # The report folder and the MLflow run with per-arm metrics and the report as artifact.
    names = {p.name for p in out.folder.iterdir()}
    assert {"report.md", "summary.json", "ctr.png", "lift.png"} <= names
    assert json.loads((out.folder / "summary.json").read_text())["decision"] == "promote"
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(out.mlflow_run_id)
    assert run.data.tags["decision"] == "promote"
    assert run.data.params["treatment"] == "challenger"
    assert run.data.metrics["treatment_ctr"] > run.data.metrics["control_ctr"]
    artifacts = {a.path for a in client.list_artifacts(out.mlflow_run_id, "report")}
    assert "report/summary.json" in artifacts and "report/ctr.png" in artifacts
