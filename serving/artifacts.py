"""Load and validate the served models: ``candidates`` and ``ranker`` from the MLflow registry.

A model is served only if every file is present and shapes and feature names agree; anything
else raises :class:`serving.errors.ArtifactError` and the replica keeps what it had (or stays
not ready).
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import faiss
import lightgbm
import mlflow.artifacts
import numpy as np
import yaml
from mlflow import MlflowClient

from recstack.schemas import CANDIDATE_ARTIFACTS, OPTIONAL_CANDIDATE_ARTIFACTS
from recstack.settings import Settings
from serving.candidates import CandidateModel
from serving.errors import ArtifactError
from serving.ranking import BoosterRanker

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModels:
    candidates: CandidateModel
    ranker: BoosterRanker

    @property
    def versions(self) -> dict[str, str]:
        return {"candidates": self.candidates.version, "ranker": self.ranker.version}


def find_candidate_dir(root: Path) -> Path:
    """The directory under ``root`` that holds the candidate files (the parent of meta.json)."""
    metas = sorted(Path(root).rglob(CANDIDATE_ARTIFACTS["meta"]))
    if not metas:
        raise ArtifactError(f"no {CANDIDATE_ARTIFACTS['meta']} under {root}")
    return metas[0].parent


def load_candidate_model(directory: Path, version: str = "unknown") -> CandidateModel:
    """Read and cross-check the CANDIDATE_ARTIFACTS files in ``directory``."""
    directory = Path(directory)
    missing = [f for k, f in CANDIDATE_ARTIFACTS.items()
               if k not in OPTIONAL_CANDIDATE_ARTIFACTS and not (directory / f).is_file()]
    if missing:
        raise ArtifactError(f"candidate artifacts missing in {directory}: {missing}")
    try:
        files = {k: directory / f for k, f in CANDIDATE_ARTIFACTS.items()}
        # Optional (older models lack them): no fresh source, unknown categories.
        fresh = (np.array(json.loads(files["fresh"].read_text()), dtype=np.int64)
                 if files["fresh"].is_file() else np.empty(0, dtype=np.int64))
        categories = (np.load(files["item_categories"]).astype(np.int64)
                      if files["item_categories"].is_file() else None)
        item_ids = np.load(files["item_ids"]).astype(np.int64)
        item_emb = np.ascontiguousarray(np.load(files["item_embeddings"]), dtype=np.float32)
        user_ids = np.load(files["user_ids"]).astype(np.int64)
        user_emb = np.ascontiguousarray(np.load(files["user_embeddings"]), dtype=np.float32)
        index = faiss.read_index(str(files["index"]))
        popular = np.array(json.loads(files["popular"].read_text()), dtype=np.int64)
        meta = json.loads(files["meta"].read_text())
    except ArtifactError:
        raise
    except Exception as exc:
        raise ArtifactError(f"unreadable candidate artifact in {directory}: {exc}") from exc

    problems = []
    if item_ids.ndim != 1 or item_emb.ndim != 2 or len(item_ids) != item_emb.shape[0]:
        problems.append(f"item_ids {item_ids.shape} vs item_embeddings {item_emb.shape}")
    if user_ids.ndim != 1 or user_emb.ndim != 2 or len(user_ids) != user_emb.shape[0]:
        problems.append(f"user_ids {user_ids.shape} vs user_embeddings {user_emb.shape}")
    if item_emb.ndim == 2 and user_emb.ndim == 2 and item_emb.shape[1] != user_emb.shape[1]:
        problems.append(
            f"embedding dims differ: items {item_emb.shape[1]}, users {user_emb.shape[1]}"
        )
    if item_emb.ndim == 2 and index.d != item_emb.shape[1]:
        problems.append(f"index dim {index.d} != embedding dim {item_emb.shape[1]}")
    if index.ntotal != len(item_ids):
        problems.append(f"index holds {index.ntotal} vectors for {len(item_ids)} items")
    if "dim" in meta and item_emb.ndim == 2 and int(meta["dim"]) != item_emb.shape[1]:
        problems.append(f"meta dim {meta['dim']} != embedding dim {item_emb.shape[1]}")
    if len(np.unique(item_ids)) != len(item_ids):
        problems.append("duplicate item ids")
    if fresh.ndim != 1:
        problems.append(f"fresh list shape {fresh.shape} is not a list of ids")
    if categories is not None and categories.shape != item_ids.shape:
        problems.append(f"item_categories {categories.shape} vs item_ids {item_ids.shape}")
    if problems:
        raise ArtifactError(f"inconsistent candidate model in {directory}: " + "; ".join(problems))
    return CandidateModel(item_ids, item_emb, user_ids, user_emb, index, popular, meta, version,
                          fresh=fresh, item_categories=categories)


def ranker_metadata(directory: Path) -> dict:
    """The ``metadata`` mapping of the MLmodel file in ``directory`` ({} when absent: a model
    logged before training recorded its feature service, i.e. ranker_v1)."""
    path = Path(directory) / "MLmodel"
    if not path.is_file():
        return {}
    try:
        return dict((yaml.safe_load(path.read_text()) or {}).get("metadata") or {})
    except (yaml.YAMLError, AttributeError, TypeError) as exc:
        raise ArtifactError(f"unreadable {path}: {exc}") from exc


def load_ranker(root: Path, version: str = "unknown") -> BoosterRanker:
    """The single ``*.lgb`` booster under ``root`` with its recorded feature service and
    feature names (MLmodel metadata), checked by :class:`BoosterRanker`."""
    files = sorted(Path(root).rglob("*.lgb"))
    if len(files) != 1:
        raise ArtifactError(f"expected one *.lgb file under {root}, found {len(files)}")
    try:
        booster = lightgbm.Booster(model_file=str(files[0]))
    except Exception as exc:
        raise ArtifactError(f"unreadable booster {files[0]}: {exc}") from exc
    return BoosterRanker(booster, version=version, metadata=ranker_metadata(files[0].parent))


PAIR_TAG = "candidates_version"  # on a ranker version: the candidates version of its run


def champion_versions(settings: Settings, client=None) -> dict[str, str]:
    """The pair the serving alias names (:func:`alias_pair`)."""
    return alias_pair(settings, settings.mlflow.serving_alias, client)


def alias_pair(settings: Settings, alias: str, client=None) -> dict[str, str]:
    """``{"candidates": v, "ranker": v}`` to serve: the ranker ``alias`` points at and the
    candidates version registered by the same training run.

    Resolved from ONE alias read: the gate moves the two aliases one after the other, so
    reading both could pair a new candidates model with the old ranker. The pair comes from the
    ranker version's ``candidates_version`` tag, else from the candidates version of the same
    run; only a ranker with neither (registered by hand) falls back to the candidates alias.
    """
    m = settings.mlflow
    client = client or MlflowClient(tracking_uri=m.uri, registry_uri=m.uri)
    ranker = client.get_model_version_by_alias(m.ranker_model, alias)
    paired = (getattr(ranker, "tags", None) or {}).get(PAIR_TAG)
    if not paired and getattr(ranker, "run_id", None):
        same_run = client.search_model_versions(
            f"name='{m.candidates_model}' and run_id='{ranker.run_id}'")
        if same_run:
            paired = str(max(int(v.version) for v in same_run))
    if not paired:
        logger.warning("ranker v%s names no candidates version; using @%s of %s",
                       ranker.version, alias, m.candidates_model)
        paired = client.get_model_version_by_alias(m.candidates_model, alias).version
    return {"candidates": str(paired), "ranker": str(ranker.version)}


def load_models(settings: Settings, versions: dict[str, str] | None = None) -> LoadedModels:
    """Download both models' version ``versions[key]`` (default: the serving alias) and load them.

    The alias is resolved once, to a pair from one training run (:func:`champion_versions`), so
    a promotion between the two downloads cannot pair a new candidates model with an old ranker.
    """
    m = settings.mlflow
    versions = versions or champion_versions(settings)
    client = MlflowClient(tracking_uri=m.uri, registry_uri=m.uri)
    with tempfile.TemporaryDirectory(prefix="recstack-serving-") as tmp:
        roots = {}
        for key, name in (("candidates", m.candidates_model), ("ranker", m.ranker_model)):
            # Resolve models:/ ourselves: MLflow 3.17 resolves it with the process-global
            # registry URI and ignores download_artifacts(registry_uri=...), which silently
            # created ./mlflow.db and looked there.
            source = client.get_model_version_download_uri(name, versions[key])
            dst = Path(tmp) / key
            dst.mkdir()
            roots[key] = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=str(dst), tracking_uri=m.uri
                )
            )
        # Everything is read into memory, so the temporary directory can go.
        candidates = load_candidate_model(
            find_candidate_dir(roots["candidates"]), versions["candidates"]
        )
        ranker = load_ranker(roots["ranker"], versions["ranker"])
    logger.info("models loaded: %s", versions)
    return LoadedModels(candidates, ranker)
