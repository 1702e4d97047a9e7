"""Training against a real MLflow server: register, alias champion, and serving's loading path.

The data is the tiny synthetic world of tests/unit/training/synthetic.py and the Feast call is
replaced by its DataFrame fake (the real Feast join is covered by the end-to-end test).
"""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from recstack.schemas import (
    CANDIDATE_ARTIFACTS,
    ITEM_FEATURES,
    RANKER_V2_USER_CATEGORY_FEATURES,
    USER_FEATURES,
)
from recstack.settings import GateSettings, Settings
from tests.unit.training.synthetic import write_world
from training.train import train_and_register

pytestmark = [pytest.mark.integration, pytest.mark.mlflow]

# The latency check has its own test (test_training_gate.py); here a loaded CI machine must not
# turn a p99 hiccup into a rejected first model.
GATE = GateSettings(latency_p99_ms=100.0)


def download(uri: str, tmp: Path) -> Path:
    """What serving does: download the alias's model directory."""
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))


def test_train_registers_champions_that_serving_can_load(
    settings: Settings, mlflow_server: str, tmp_path: Path
) -> None:
    settings.mlflow.tracking_uri = mlflow_server
    settings.train.embedding_dim = 8
    settings.train.ranker_rounds = 30
    store = write_world(settings, n_users=40, n_items=30, days=3)

    result = train_and_register(settings, store=store, gate=GATE)
    assert result.promoted and "first model" in result.gate_reason
    assert "| ranker" in result.table_md and "| popularity" in result.table_md

    client = MlflowClient(mlflow_server)
    for name, version in (("candidates", result.candidates_version),
                          ("ranker", result.ranker_version)):
        champion = client.get_model_version_by_alias(name, "champion")
        assert champion.version == version
        assert champion.run_id == result.run_id
        assert champion.tags["holdout_day"] == "2026-01-03"
        assert champion.tags["feature_service"] == settings.feast.feature_service
        assert champion.tags["git_sha"]
    run = client.get_run(result.run_id)
    assert run.data.params["feature_service"] == settings.feast.feature_service == "ranker_v2"
    # The ranker version names the candidates version of its run (serving pairs by it).
    ranker_version = client.get_model_version("ranker", result.ranker_version)
    assert ranker_version.tags["candidates_version"] == result.candidates_version
    assert run.data.params["data_start"] == "2026-01-01"
    assert run.data.params["data_end"] == "2026-01-03"
    assert run.data.metrics["ranker_auc"] == pytest.approx(result.metrics["ranker_auc"])
    # The planted taste groups are learnable: both models beat random on the unseen day.
    m = result.metrics
    assert m["ranker_auc"] > m["random_auc"] + 0.1, m
    assert m["candidates_recall_at_100"] >= m["random_recall_at_100"], m
    # The full-catalogue protocol at the holdout day, the served pipeline beside the baselines.
    offline = {k: v for k, v in run.data.metrics.items() if k.startswith("offline_")}
    for model in ("popularity", "item_knn", "als", "candidates", "served"):
        assert 0 <= offline[f"offline_{model}_ndcg_at_10"] <= 1, offline
        assert f"| {model} |" in result.table_md
    assert offline["offline_served_recall_at_50"] > 0, offline

    # Serving's path for candidates: download, find meta.json anywhere below, load the files.
    cand_dir = download("models:/candidates@champion", tmp_path / "cand")
    metas = list(cand_dir.rglob(CANDIDATE_ARTIFACTS["meta"]))
    assert len(metas) == 1
    art = metas[0].parent
    assert {p.name for p in art.iterdir()} >= set(CANDIDATE_ARTIFACTS.values())
    item_ids = np.load(art / "item_ids.npy")
    item_emb = np.load(art / "item_embeddings.npy")
    index = faiss.read_index(str(art / "index.faiss"))
    assert item_emb.dtype == np.float32 and item_emb.shape == (len(item_ids), 8)
    assert index.ntotal == len(item_ids) == 35  # 30 shown + 5 catalogue-only items
    user_ids = np.load(art / "user_ids.npy")
    user_emb = np.load(art / "user_embeddings.npy")
    _, rows = index.search(user_emb[:1], 1)
    assert rows[0, 0] == int(np.argmax(item_emb @ user_emb[0]))
    # The pyfunc flavour answers top-k for known and unknown users.
    model = mlflow.pyfunc.load_model("models:/candidates@champion")
    out = model.predict(pd.DataFrame({"user_id": [int(user_ids[0]), 10_000]}), params={"k": 5})
    assert (out.groupby("user_id").size() == 5).all()

    # Serving's path for the ranker: download, load the *.lgb file with the native API.
    rank_dir = download("models:/ranker@champion", tmp_path / "rank")
    lgb_files = list(rank_dir.rglob("*.lgb"))
    assert len(lgb_files) == 1
    booster = lgb.Booster(model_file=str(lgb_files[0]))
    # The fake store's ranker_v2: the v1 views and the user x category view, then cand_score.
    names = USER_FEATURES + ITEM_FEATURES + RANKER_V2_USER_CATEGORY_FEATURES + ["cand_score"]
    assert booster.feature_name() == names
    p = booster.predict(np.zeros((3, len(names)), dtype=np.float32))
    assert p.shape == (3,) and ((0 <= p) & (p <= 1)).all()
    # The artifact records its feature service and columns; serving loads and checks them.
    from serving.artifacts import champion_versions, load_ranker

    served = load_ranker(rank_dir, "x")
    assert served.feature_service == "ranker_v2" and list(served.feature_names) == names
    assert champion_versions(settings) == {"candidates": result.candidates_version,
                                           "ranker": result.ranker_version}
    assert json.loads((art / CANDIDATE_ARTIFACTS["fresh"]).read_text()) == []  # none new
    assert np.load(art / CANDIDATE_ARTIFACTS["item_categories"]).tolist() == [
        i % 3 for i in item_ids.tolist()]

    # Retraining the same data gives the same model: it does not beat the champion by the
    # margin, so it is registered as challenger and champion stays.
    again = train_and_register(settings, store=store, gate=GATE)
    assert int(again.candidates_version) == int(result.candidates_version) + 1
    assert not again.promoted and "margin" in again.gate_reason
    assert client.get_model_version_by_alias("ranker", "champion").version == result.ranker_version
    assert client.get_model_version_by_alias("ranker", "challenger").version == again.ranker_version
    assert client.get_run(again.run_id).data.tags["gate_decision"] == "rejected"
    # Seeded: same data, same model, same metrics (latencies aside).
    def quality(m: dict) -> dict:
        return {k: v for k, v in m.items() if not k.endswith("_ms")}

    assert quality(again.metrics) == pytest.approx(quality(result.metrics), nan_ok=True)
