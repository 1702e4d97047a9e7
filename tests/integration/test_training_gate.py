"""The promotion gate against a real MLflow server: a failed run, a worse model or a corrupt
artifact never changes ``champion``; rollback and manual promotion move it with history kept."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from recstack.settings import GateSettings, Settings
from tests.unit.training.synthetic import write_world
from training import registry
from training.train import train_and_register

pytestmark = [pytest.mark.integration, pytest.mark.mlflow]

# A generous latency budget wherever latency is not the point: CI machines are loaded.
RELAXED_MS = 100.0


@pytest.fixture
def trained(settings: Settings, mlflow_server: str):
    settings.mlflow.tracking_uri = mlflow_server
    # Model names unique to each test: the session's MLflow server is shared.
    tag = uuid.uuid4().hex[:8]
    settings.mlflow.candidates_model = f"candidates_{tag}"
    settings.mlflow.ranker_model = f"ranker_{tag}"
    settings.train.embedding_dim = 8
    settings.train.ranker_rounds = 40
    store = write_world(settings, n_users=40, n_items=30, days=3)
    first = train_and_register(settings, store=store,
                               gate=GateSettings(latency_p99_ms=RELAXED_MS))
    assert first.promoted
    return settings, store, first, MlflowClient(mlflow_server)


def champion(client: MlflowClient, s: Settings) -> dict[str, str]:
    return registry.champion_pair(client, s)


def test_worse_model_and_failed_run_never_change_champion(trained) -> None:
    s, store, _, client = trained
    before = champion(client, s)

    # A worse ranker (2 trees instead of 40) on the same holdout: rejected, reason recorded.
    s.train.ranker_rounds = 2
    worse = train_and_register(
        s, store=store, gate=GateSettings(margin=0.0, latency_p99_ms=RELAXED_MS))
    assert not worse.promoted, worse.gate_reason
    assert champion(client, s) == before
    version = client.get_model_version(s.mlflow.ranker_model, worse.ranker_version)
    assert version.tags["gate_decision"] == "rejected" and version.tags["gate_reason"]

    # A run that fails half-way (Feast breaks) registers nothing and moves nothing.
    class Broken:
        def get_feature_service(self, name):
            raise ConnectionError("feast registry unreachable")

    with pytest.raises(ConnectionError):
        train_and_register(s, store=Broken())
    assert champion(client, s) == before

    # A latency budget nobody can meet fails the sanity checks even for a better model.
    s.train.ranker_rounds = 40
    slow = train_and_register(s, store=store, gate=GateSettings(margin=0.0, latency_p99_ms=1e-6))
    assert not slow.promoted and "p99" in slow.gate_reason
    assert champion(client, s) == before


def test_corrupt_artifact_can_never_become_champion(trained, tmp_path: Path) -> None:
    s, _, _, client = trained
    before = champion(client, s)
    # A version whose booster file is truncated and whose candidates lack files.
    (tmp_path / "ranker").mkdir()
    (tmp_path / "ranker" / "model.lgb").write_text("tree\nversion=v4\nnum_class=1\n")
    (tmp_path / "candidates").mkdir()
    (tmp_path / "candidates" / "meta.json").write_text("{}")
    mlflow.set_tracking_uri(s.mlflow.uri)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(tmp_path / "ranker"), "ranker")
        mlflow.log_artifacts(str(tmp_path / "candidates"), "candidates")
    rid = run.info.run_id
    client.create_model_version(s.mlflow.candidates_model, f"runs:/{rid}/candidates", rid)
    bad = client.create_model_version(s.mlflow.ranker_model, f"runs:/{rid}/ranker", rid)
    with pytest.raises(ValueError, match="refusing to promote"):
        registry.promote_version(client, s, str(bad.version))
    assert champion(client, s) == before


def test_rollback_and_promote_keep_history(trained) -> None:
    s, store, first, client = trained
    second = train_and_register(  # a tie wins with a zero margin
        s, store=store, gate=GateSettings(margin=0.0, latency_p99_ms=RELAXED_MS))
    assert second.promoted
    assert champion(client, s)["ranker"] == second.ranker_version

    pair = registry.rollback(client, s)
    assert pair == {"candidates": first.candidates_version, "ranker": first.ranker_version}
    assert champion(client, s) == pair
    rolled = client.get_model_version(s.mlflow.ranker_model, second.ranker_version)
    assert rolled.tags.get("rolled_back_at")  # history kept, nothing deleted
    with pytest.raises(LookupError):
        registry.rollback(client, s)  # nothing older than the first champion

    assert registry.promote_version(client, s, second.ranker_version)["ranker"] == \
        second.ranker_version
    rows = registry.list_versions(client, s)
    assert [r["ranker"] for r in rows][:2] == [second.ranker_version, first.ranker_version]
    assert "champion" in rows[0]["aliases"]
