"""The gate never promotes by accident: the first model must beat popularity, and an MLflow
hiccup while loading the champion aborts the gate (fake registry clients, a real booster)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, TEMPORARILY_UNAVAILABLE

from recstack.settings import GateSettings, Settings
from training import registry
from training.gate import decide
from training.train import popularity_baseline, run_gate

GATE = GateSettings(metric="auc", margin=0.01, latency_p99_ms=100.0)
FEATURES = ["item_ctr_7d", "item_clicks_7d"]
VERSIONS = {"candidates": "2", "ranker": "2"}


def _holdout(n: int = 400, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    ctr = rng.random(n)
    return pd.DataFrame({
        "item_ctr_7d": ctr, "item_clicks_7d": rng.integers(0, 50, n).astype(float),
        "label": (rng.random(n) < ctr * 0.5).astype(int),
        "request_id": [f"r{i // 10}" for i in range(n)],
        "item_id": rng.integers(0, 40, n),
    })


def _booster(holdout: pd.DataFrame) -> lgb.Booster:
    data = lgb.Dataset(holdout[FEATURES].to_numpy(np.float32), holdout["label"],
                       feature_name=FEATURES)
    return lgb.train({"objective": "binary", "verbose": -1, "num_threads": 1}, data, 20)


class FakeClient:
    """The registry calls the gate makes; ``alias_error`` / ``download_error`` are raised by
    the champion's alias lookup / download, ``champion_dir`` is what the download returns."""

    def __init__(self, has_champion: bool, champion_dir: Path | None = None,
                 alias_error: Exception | None = None,
                 download_error: Exception | None = None) -> None:
        self.has_champion, self.champion_dir = has_champion, champion_dir
        self.alias_error, self.download_error = alias_error, download_error

    def get_model_version_by_alias(self, name: str, alias: str) -> SimpleNamespace:
        if self.alias_error is not None:
            raise self.alias_error
        if not self.has_champion:  # what MLflow's stores raise for an unset alias
            raise MlflowException(f"Registered model alias {alias} not found.",
                                  INVALID_PARAMETER_VALUE)
        return SimpleNamespace(version="1")

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        if self.download_error is not None:
            raise self.download_error
        return str(self.champion_dir)

    def get_model_version(self, name: str, version: str) -> SimpleNamespace:
        return SimpleNamespace(run_id="run1")

    def get_run(self, run_id: str) -> SimpleNamespace:
        return SimpleNamespace(data=SimpleNamespace(params={"negative_rate": "1.0"}))


@pytest.fixture(autouse=True)
def _challenger_artifacts_load(monkeypatch) -> None:
    """The challenger's own artifact check is not the subject here."""
    monkeypatch.setattr(registry, "pair_problems", lambda *a, **k: [])


def _gate(client: FakeClient, holdout: pd.DataFrame, booster: lgb.Booster,
          baseline: dict[str, float] | None = None):
    scores = booster.predict(holdout[FEATURES].to_numpy(np.float32), num_threads=1)
    baseline = baseline or popularity_baseline(holdout, popular=list(range(40)), base_rate=0.2)
    return run_gate(Settings(), client, GATE, VERSIONS, holdout, booster, scores, 1.0, 1.0,
                    baseline)


def test_the_first_model_needs_to_beat_popularity() -> None:
    challenger = {"auc": 0.60, "ndcg_at_10": 0.5}
    lost = decide([], challenger, None, GATE, baseline={"auc": 0.65, "ndcg_at_10": 0.5})
    assert not lost.promote and "popularity" in lost.reason
    won = decide([], challenger, None, GATE, baseline={"auc": 0.55, "ndcg_at_10": 0.5})
    assert won.promote and "first model" in won.reason and "popularity" in won.reason
    assert not decide([], challenger, None, GATE, baseline=None).promote  # no comparison


def test_first_model_worse_than_popularity_is_not_promoted() -> None:
    holdout = _holdout()
    beaten = _gate(FakeClient(has_champion=False), holdout, _booster(holdout),
                   baseline={"auc": 0.99, "ndcg_at_10": 0.99, "logloss": 0.01})
    assert not beaten.promote and "popularity" in beaten.reason
    fair = _gate(FakeClient(has_champion=False), holdout, _booster(holdout))
    assert fair.promote and "first model" in fair.reason


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("alias", MlflowException("API request to http://127.0.0.1:15000/api/2.0/mlflow/"
                                  "registered-models/alias failed with exception "
                                  "HTTPConnectionPool: Max retries exceeded")),
        ("alias", MlflowException("unavailable", TEMPORARILY_UNAVAILABLE)),
        ("download", MlflowException("API request to endpoint /api/2.0/mlflow/model-versions/"
                                     "get-download-uri failed with error code 502 != 200")),
        ("download", ConnectionError("connection reset by peer")),
    ],
)
def test_a_transient_mlflow_error_aborts_the_gate_and_keeps_the_champion(where, error):
    holdout = _holdout()
    client = FakeClient(has_champion=True, **{f"{where}_error": error})
    verdict = _gate(client, holdout, _booster(holdout))
    assert not verdict.promote and verdict.aborted and verdict.decision == "aborted"
    assert "champion unchanged" in verdict.reason and str(error)[:20] in verdict.reason


def test_a_genuinely_corrupt_champion_is_replaced_by_a_sane_challenger(tmp_path) -> None:
    (tmp_path / "model.lgb").write_text("not a booster")
    holdout = _holdout()
    verdict = _gate(FakeClient(has_champion=True, champion_dir=tmp_path), holdout,
                    _booster(holdout))
    assert verdict.promote and "unusable" in verdict.reason and not verdict.aborted


def test_a_readable_champion_is_compared(tmp_path) -> None:
    holdout = _holdout()
    booster = _booster(holdout)
    booster.save_model(str(tmp_path / "model.lgb"))
    verdict = _gate(FakeClient(has_champion=True, champion_dir=tmp_path), holdout, booster)
    assert not verdict.promote and "margin" in verdict.reason  # the same model: no gain
