"""MLflow logging and registration of the two models; aliases, never stages.

Layout that serving relies on (verified by tests/integration/test_training_mlflow.py):
- ``models:/candidates@champion`` downloads to ``<dir>/`` with ``MLmodel``, ``python_model.pkl``
  and ``artifacts/<CANDIDATE_ARTIFACTS files>``; serving finds them by searching for
  ``meta.json`` recursively, so the sub-directory name is not part of the contract.
- ``models:/ranker@champion`` downloads to ``<dir>/`` with ``MLmodel`` and ``model.lgb`` (a
  LightGBM text model: ``lightgbm.Booster(model_file=...)``).
"""

from __future__ import annotations

import logging
import os
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.models.model import ModelInfo

from recstack.schemas import CANDIDATE_ARTIFACTS
from recstack.settings import REPO_ROOT

logger = logging.getLogger(__name__)

DEFAULT_K = 20


def git_sha(repo: Path = REPO_ROOT) -> str:
    """``git rev-parse HEAD`` of the code that trained; in an image without ``.git``, the
    ``RECSTACK_GIT_SHA`` the image was built with; else "unknown"."""
    if os.environ.get("RECSTACK_GIT_SHA"):
        return os.environ["RECSTACK_GIT_SHA"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _requirements(*packages: str) -> list[str]:
    """Pinned requirements of the running environment; giving them explicitly spares MLflow
    from inferring them in a subprocess (seconds per model)."""
    reqs = []
    for name in packages:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


class CandidatesModel(mlflow.pyfunc.PythonModel):
    """Pyfunc wrapper of the candidate artifacts: user ids in, top-k item ids out.

    Input: a DataFrame with ``user_id``; ``params={"k": ...}`` (default 20). Output: a long
    DataFrame (user_id, rank, item_id, score). Users without an embedding get the popular list
    (score 0). Serving does not use this class (it reads the files directly); it makes the
    artifact self-describing and usable from ``mlflow.pyfunc.load_model``.
    """

    def load_context(self, context: Any) -> None:
        from training.candidates import load_artifacts

        meta_path = Path(context.artifacts["meta"])
        self.model, self.index, self.popular, self.meta = load_artifacts(meta_path.parent)
        self.known = set(self.model.user_ids.tolist())

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        from training.candidates import search

        users = model_input["user_id"].to_numpy(dtype=np.int64)
        k = int((params or {}).get("k", DEFAULT_K))
        ids, scores = search(self.model, self.index, users, k)
        rows = []
        for user, user_ids, user_scores in zip(users, ids, scores, strict=True):
            if int(user) in self.known:
                pairs = [(int(i), float(s)) for i, s in zip(user_ids, user_scores) if i >= 0]
            else:
                pairs = [(int(i), 0.0) for i in self.popular[:k]]
            rows.extend((int(user), r, i, s) for r, (i, s) in enumerate(pairs))
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score"])


def log_candidates(
    artifact_dir: Path, name: str, input_example: pd.DataFrame
) -> ModelInfo:
    """Log the CANDIDATE_ARTIFACTS files in ``artifact_dir`` as a pyfunc model in the active
    run and register it as ``name``; returns the ModelInfo (``registered_model_version``)."""
    artifacts = {key: str(Path(artifact_dir) / f) for key, f in CANDIDATE_ARTIFACTS.items()}
    missing = [p for p in artifacts.values() if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"candidate artifacts missing: {missing}")
    output_example = pd.DataFrame({"user_id": [0], "rank": [0], "item_id": [0], "score": [0.0]})
    signature = mlflow.models.infer_signature(
        input_example, output_example.astype({"user_id": "int64", "rank": "int64",
                                              "item_id": "int64", "score": "float32"}),
        params={"k": DEFAULT_K},
    )
    return mlflow.pyfunc.log_model(
        name=name,
        python_model=CandidatesModel(),
        artifacts=artifacts,
        signature=signature,
        input_example=input_example,
        registered_model_name=name,
        pip_requirements=_requirements("mlflow", "faiss-cpu", "numpy", "pandas", "scikit-learn"),
    )


def log_ranker(booster: Any, name: str, input_example: pd.DataFrame) -> ModelInfo:
    """Log the native LightGBM ``booster`` (saved as ``model.lgb``) in the active run and
    register it as ``name``; returns the ModelInfo."""
    return mlflow.lightgbm.log_model(
        booster,
        name=name,
        input_example=input_example,
        registered_model_name=name,
        pip_requirements=_requirements("mlflow", "lightgbm", "numpy", "pandas"),
    )


def promote(
    client: MlflowClient, name: str, version: str, alias: str, tags: dict[str, str]
) -> None:
    """Tag model version ``name``/``version`` with ``tags`` and point ``alias`` at it."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    logger.info("models:/%s@%s -> version %s", name, alias, version)
