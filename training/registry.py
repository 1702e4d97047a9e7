"""MLflow logging and registration of the two models; aliases, never stages.

Layout that serving relies on (verified by tests/integration/test_training_mlflow.py):
- ``models:/candidates@champion`` downloads to ``<dir>/`` with ``MLmodel``, ``python_model.pkl``
  and ``artifacts/<CANDIDATE_ARTIFACTS files>``; serving finds them by searching for
  ``meta.json`` recursively, so the sub-directory name is not part of the contract.
- ``models:/ranker@champion`` downloads to ``<dir>/`` with ``MLmodel`` and ``model.lgb`` (a
  LightGBM text model: ``lightgbm.Booster(model_file=...)``).
"""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import lightgbm as lgb
import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
import requests
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models.model import ModelInfo

from recstack.schemas import CANDIDATE_ARTIFACTS
from recstack.settings import REPO_ROOT, Settings, get_settings
from training.candidates import load_artifacts, search
from training.validate import candidate_problems, ranker_problems

logger = logging.getLogger(__name__)

DEFAULT_K = 20


def git_sha(repo: Path = REPO_ROOT, settings: Settings | None = None) -> str:
    """The code version that trained: ``mlflow.git_sha`` (``RECSTACK_MLFLOW__GIT_SHA``, e.g. for
    an image without ``.git``) when set, else ``git rev-parse HEAD``; else "unknown".
    ``settings`` default: the process's (``get_settings()``)."""
    configured = (settings or get_settings()).mlflow.git_sha
    if configured:
        return configured
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
        meta_path = Path(context.artifacts["meta"])
        self.model, self.index, self.popular, self.meta = load_artifacts(meta_path.parent)
        self.known = set(self.model.user_ids.tolist())

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
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
    missing = [p for p in artifacts.values() if not Path(p).exists()]  # every file, new models
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


def log_ranker(booster: Any, name: str, input_example: pd.DataFrame,
               feature_service: str = "ranker_v1") -> ModelInfo:
    """Log the native LightGBM ``booster`` (saved as ``model.lgb``) in the active run and
    register it as ``name``; returns the ModelInfo.

    The MLmodel file's ``metadata`` records the feature service and the ordered feature names
    (``feature_service``, ``feature_names``): serving reads which views to fetch from it and
    builds exactly those columns. A version without it is a ranker_v1 model.
    """
    return mlflow.lightgbm.log_model(
        booster,
        name=name,
        input_example=input_example,
        registered_model_name=name,
        pip_requirements=_requirements("mlflow", "lightgbm", "numpy", "pandas"),
        metadata={"feature_service": feature_service,
                  "feature_names": list(booster.feature_name())},
    )


CHALLENGER = "challenger"
KINDS = ("candidates", "ranker")
# On a ranker version: the candidates version its run registered (serving/artifacts.py reads
# the pair from the ranker's alias alone, so the two alias moves need not be atomic).
PAIR_TAG = "candidates_version"


def client_for(settings: Settings) -> MlflowClient:
    """A client on the settings' tracking server, also used as the registry."""
    return MlflowClient(tracking_uri=settings.mlflow.uri, registry_uri=settings.mlflow.uri)


def model_names(settings: Settings) -> dict[str, str]:
    """{"candidates": registered name, "ranker": registered name}."""
    return {"candidates": settings.mlflow.candidates_model, "ranker": settings.mlflow.ranker_model}


# What MLflow's stores answer for an unset alias (400 INVALID_PARAMETER_VALUE) or an unknown
# model (404 RESOURCE_DOES_NOT_EXIST); anything else is not "no champion".
_UNSET_STATUS = frozenset({400, 404})


def alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version ``name@alias`` points at, or None when the alias (or the model) is unset.

    Any other failure (a 5xx, a refused connection) is raised: taken for "no champion", it
    would let the gate promote a first model over the real champion.
    """
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.get_http_status_code() in _UNSET_STATUS:
            return None
        raise


def is_transient(exc: BaseException) -> bool:
    """Is ``exc`` a registry or network hiccup (retry later) rather than a verdict on the
    artifact? MLflow's REST client raises a 5xx/429 status as such, and a connection failure
    or timeout as an INTERNAL_ERROR (500) MlflowException; also plain connection errors."""
    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(exc, ConnectionError | TimeoutError | requests.ConnectionError
                      | requests.Timeout)


def set_alias(
    client: MlflowClient, name: str, version: str, alias: str, tags: dict[str, str]
) -> None:
    """Tag model version ``name``/``version`` with ``tags`` and point ``alias`` at it."""
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value)[:5000])
    client.set_registered_model_alias(name, alias, version)
    logger.info("models:/%s@%s -> version %s", name, alias, version)


def download_version(client: MlflowClient, settings: Settings, name: str, version: str,
                     dst: Path) -> Path:
    """Download model version files into ``dst`` (resolving the URI ourselves: MLflow 3.17
    resolves ``models:/`` with the process-global registry URI, see serving/artifacts.py)."""
    source = client.get_model_version_download_uri(name, version)
    dst.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=str(dst), tracking_uri=settings.mlflow.uri))


def pair_problems(
    client: MlflowClient, settings: Settings, versions: dict[str, str],
    rows: np.ndarray | None = None, expected: np.ndarray | None = None,
) -> list[str]:
    """Download both versions and load them back (training/validate.py); the problems found.

    A download that fails is a problem too: an alias must never point at what cannot load.
    """
    names = model_names(settings)
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="recstack-validate-") as tmp:
        for kind in KINDS:
            try:
                root = download_version(client, settings, names[kind], versions[kind],
                                        Path(tmp) / kind)
            except Exception as exc:  # noqa: BLE001 - any failure to fetch is a rejection
                problems.append(f"{kind} v{versions[kind]} download failed: {exc}")
                continue
            if kind == "candidates":
                found = candidate_problems(root)
            else:
                found = ranker_problems(root, rows, expected)
            problems += [f"{kind} v{versions[kind]}: {p}" for p in found]
    return problems


def load_champion_ranker(client: MlflowClient, settings: Settings, version: str) -> Any:
    """The champion's native booster, downloaded and checked (raises ValueError if broken)."""
    with tempfile.TemporaryDirectory(prefix="recstack-champion-") as tmp:
        root = download_version(client, settings, settings.mlflow.ranker_model, version,
                                Path(tmp))
        problems = ranker_problems(root)
        if problems:
            raise ValueError("; ".join(problems))
        return lgb.Booster(model_file=str(min(root.rglob("*.lgb"))))


def champion_pair(client: MlflowClient, settings: Settings) -> dict[str, str] | None:
    """{"candidates": v, "ranker": v} of the serving alias, or None if either is unset."""
    alias = settings.mlflow.serving_alias
    pair = {k: alias_version(client, n, alias) for k, n in model_names(settings).items()}
    return None if None in pair.values() else pair  # type: ignore[return-value]


def paired_versions(client: MlflowClient, settings: Settings, ranker_version: str
                    ) -> dict[str, str]:
    """The candidates version registered by the same run as ranker ``ranker_version``."""
    names = model_names(settings)
    ranker = client.get_model_version(names["ranker"], str(ranker_version))
    if (ranker.tags or {}).get(PAIR_TAG):
        return {"candidates": str(ranker.tags[PAIR_TAG]), "ranker": str(ranker.version)}
    found = [v for v in client.search_model_versions(f"name='{names['candidates']}'")
             if v.run_id == ranker.run_id]
    if not found:
        raise LookupError(f"no {names['candidates']} version from run {ranker.run_id} "
                          f"(ranker v{ranker_version})")
    return {"candidates": str(found[0].version), "ranker": str(ranker.version)}


def promote_pair(
    client: MlflowClient, settings: Settings, versions: dict[str, str], reason: str, how: str,
) -> None:
    """Point the serving alias at both versions (ranker last: serving resolves both at once,
    see serving/artifacts.py) and record when, how and why on each version."""
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    names = model_names(settings)
    alias = settings.mlflow.serving_alias
    before = champion_pair(client, settings)
    done: list[str] = []
    try:
        for kind in KINDS:
            set_alias(client, names[kind], versions[kind], alias,
                      {"champion_since": now, "promoted_by": how, "gate_reason": reason})
            done.append(kind)
    except Exception:
        # Never leave a mixed pair behind: put back what was moved, then fail loudly.
        for kind in done:
            if before is not None:
                client.set_registered_model_alias(names[kind], alias, before[kind])
            else:
                client.delete_registered_model_alias(names[kind], alias)
        raise


def list_versions(client: MlflowClient, settings: Settings) -> list[dict[str, Any]]:
    """Every ranker version (newest first) with its paired candidates version, aliases, gate
    decision and key holdout metrics (from the version's tags)."""
    names = model_names(settings)
    cands = {v.run_id: v for v in client.search_model_versions(f"name='{names['candidates']}'")}
    # search_model_versions leaves aliases empty in MLflow 3.17; the registered model has them.
    aliases: dict[str, list[str]] = {}
    try:
        for alias, version in client.get_registered_model(names["ranker"]).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    except MlflowException:
        return []
    rows = []
    for v in client.search_model_versions(f"name='{names['ranker']}'"):
        c = cands.get(v.run_id)
        rows.append({
            "ranker": str(v.version),
            "candidates": str(c.version) if c else "-",
            "aliases": ",".join(sorted(aliases.get(str(v.version), []))),
            "gate": v.tags.get("gate_decision", "-") + (
                f" ({v.tags['promoted_by']})" if v.tags.get("promoted_by", "gate") != "gate"
                else ""),
            "reason": v.tags.get("gate_reason", ""),
            "holdout_day": v.tags.get("holdout_day", ""),
            "auc": v.tags.get("ranker_auc", ""),
            "ndcg_at_10": v.tags.get("ranker_ndcg_at_10", ""),
            "recall_at_500": (c.tags.get("candidates_recall_at_500", "") if c else ""),
            "run_id": v.run_id,
        })
    return sorted(rows, key=lambda r: int(r["ranker"]), reverse=True)


def rollback(client: MlflowClient, settings: Settings) -> dict[str, str]:
    """Move the serving alias back to the champion before the current one; returns its pair.

    "Before" is the newest ranker version older than the current champion that was champion
    once (tag ``champion_since``) and still loads. The current champion is tagged
    ``rolled_back_at``; no version is deleted, so the history stays readable.
    """
    current = champion_pair(client, settings)
    if current is None:
        raise LookupError("no champion to roll back from")
    names = model_names(settings)
    previous = sorted(
        (v for v in client.search_model_versions(f"name='{names['ranker']}'")
         if int(v.version) < int(current["ranker"]) and "champion_since" in v.tags
         and "rolled_back_at" not in v.tags),
        key=lambda v: int(v.version), reverse=True,
    )
    for candidate in previous:
        pair = paired_versions(client, settings, str(candidate.version))
        problems = pair_problems(client, settings, pair)
        if problems:
            logger.warning("not rolling back to ranker v%s: %s", candidate.version, problems)
            continue
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        for kind in KINDS:
            client.set_model_version_tag(names[kind], current[kind], "rolled_back_at", now)
        promote_pair(client, settings, pair, f"rollback from ranker v{current['ranker']}",
                     "rollback")
        return pair
    raise LookupError(f"no earlier valid champion before ranker v{current['ranker']}")


def promote_version(client: MlflowClient, settings: Settings, ranker_version: str
                    ) -> dict[str, str]:
    """Make ranker ``ranker_version`` and its paired candidates the champion, by hand.

    The margin is not applied (a human decided) but the artifacts are loaded back first: a
    corrupt or incomplete version is refused with the problems found.
    """
    pair = paired_versions(client, settings, ranker_version)
    problems = pair_problems(client, settings, pair)
    if problems:
        raise ValueError(f"refusing to promote ranker v{ranker_version}: " + "; ".join(problems))
    names = model_names(settings)
    for kind in KINDS:
        client.set_model_version_tag(names[kind], pair[kind], "rolled_back_at", "")
        client.delete_model_version_tag(names[kind], pair[kind], "rolled_back_at")
    promote_pair(client, settings, pair, "promoted by hand", "manual")
    return pair
