"""What the monitor compares against: the champion's training reference (MLflow), the feature
pipeline's manifest (freshness, failures), the popular list and the catalogue."""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from recstack.lake import read_items
from recstack.schemas import POPULAR_FILE
from recstack.settings import Settings

logger = logging.getLogger(__name__)

REFERENCE_ARTIFACT = "feature_reference.json"
MANIFEST_FILE = "manifest.json"  # pipelines.manifest.MANIFEST_FILE, under features_dir


@dataclass
class ChampionReference:
    """The serving champion: versions, registration times and the ranker's feature reference."""

    versions: dict[str, str]  # kind (candidates, ranker) -> version
    created_s: dict[str, float]  # kind -> registration time, epoch seconds
    features: dict[str, dict[str, float]] = field(default_factory=dict)
    run_id: str = ""

    @property
    def key(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.versions.items()))


def load_champion(settings: Settings, client: Any | None = None,
                  known: ChampionReference | None = None) -> ChampionReference | None:
    """The champion pair and its reference statistics, or None when nothing is registered;
    ``known`` is returned as it is when the champion did not change (no download)."""
    client = client or MlflowClient(settings.mlflow.uri, settings.mlflow.uri)
    names = {"candidates": settings.mlflow.candidates_model, "ranker": settings.mlflow.ranker_model}
    versions, created = {}, {}
    try:
        for kind, name in names.items():
            mv = client.get_model_version_by_alias(name, settings.mlflow.serving_alias)
            versions[kind] = str(mv.version)
            created[kind] = float(mv.creation_timestamp) / 1000.0
            if kind == "ranker":
                run_id = mv.run_id
    except MlflowException as exc:
        logger.info("no champion yet: %s", exc)
        return None
    ref = ChampionReference(versions, created, run_id=run_id)
    if known is not None and known.key == ref.key:
        return known
    try:
        with tempfile.TemporaryDirectory(prefix="recstack-ref-") as tmp:
            path = client.download_artifacts(run_id, REFERENCE_ARTIFACT, tmp)
            ref.features = json.loads(Path(path).read_text())
    except (MlflowException, OSError, ValueError) as exc:
        logger.warning("champion run %s has no %s: %s", run_id, REFERENCE_ARTIFACT, exc)
    return ref


@dataclass
class PipelineState:
    """From the pipeline's manifest: how far the online store is materialized, the last run."""

    materialized_until: dt.datetime | None
    manifest_mtime: float | None
    last_run_failed: bool
    last_error: str = ""


def pipeline_state(settings: Settings) -> PipelineState:
    path = settings.features_dir / MANIFEST_FILE
    if not path.exists():
        return PipelineState(None, None, False)
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return PipelineState(None, None, True, f"unreadable manifest: {exc}")
    until = raw.get("materialized_until")
    runs = raw.get("runs") or []
    last = runs[-1] if runs else {}
    return PipelineState(
        dt.datetime.fromisoformat(until) if until else None, path.stat().st_mtime,
        last.get("status") == "rejected", str(last.get("error", ""))[:500],
    )


def popular_items(settings: Settings) -> list[int]:
    """The pipeline's popular list, most popular first (empty when missing)."""
    path = settings.features_dir / POPULAR_FILE
    if not path.exists():
        return []

    pop = pd.read_parquet(path, columns=["item_id", "rank"]).sort_values("rank", kind="stable")
    return pop["item_id"].astype("int64").drop_duplicates().tolist()


def catalogue_ids(settings: Settings) -> np.ndarray:
    """Every item id of the lake's catalogue, int64 (empty before the first simulation)."""
    try:
        return read_items(settings.lake_dir).column("item_id").to_numpy().astype(np.int64)
    except Exception:  # noqa: BLE001 - no catalogue yet: coverage and item PSI are unknown
        return np.zeros(0, dtype=np.int64)
