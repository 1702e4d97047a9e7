"""``recstack train``: candidates + faiss index and the ranker, evaluated, logged, registered.

In:  the lake (events, items), the feature tables (labels, popular) and the Feast feature
     service ``settings.feast.feature_service`` (point-in-time features).
Out: MLflow run in ``settings.mlflow.experiment`` with params, metrics, data window and git
     sha; model versions ``candidates`` (pyfunc + CANDIDATE_ARTIFACTS) and ``ranker`` (native
     LightGBM), both aliased ``settings.mlflow.serving_alias`` (champion).
"""

from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recstack.lake import read_events, read_items
from recstack.schemas import CANDIDATE_SCORE_FEATURE, POPULAR_FILE, RANKER_FEATURES, EventType
from recstack.settings import Settings
from training import evaluate as ev
from training.candidates import CandidateModel, build_index, fit_candidate_model, save_artifacts
from training.candidates import search as candidate_search
from training.datasets import TrainingDataError, build_ranker_dataset, time_split
from training.ranker import predict, train_ranker

logger = logging.getLogger(__name__)

RECALL_KS = (100,)  # plus settings.serving.n_candidates


@dataclass
class TrainResult:
    """What one training run registered, and its holdout metrics."""

    candidates_version: str
    ranker_version: str
    metrics: dict[str, float]
    run_id: str
    timings_s: dict[str, float] = field(default_factory=dict)


def load_events(settings: Settings) -> pd.DataFrame:
    """Lake events as a DataFrame (user_id, item_id, event_type, ts, day)."""
    events = read_events(settings.lake_dir).to_pandas()
    if events.empty:
        raise TrainingDataError(f"no events in {settings.lake_dir}: run `recstack simulate` first")
    events = events[["user_id", "item_id", "event_type", "ts"]].copy()
    events["day"] = pd.to_datetime(events["ts"], utc=True).dt.date
    return events


def read_popular(settings: Settings) -> list[int]:
    """Item ids of ``features_dir/popular.parquet``, most popular (rank 1) first."""
    path = settings.features_dir / POPULAR_FILE
    if not path.exists():
        raise TrainingDataError(f"no popular table at {path}: run `recstack pipeline` first")
    popular = pd.read_parquet(path, columns=["item_id", "clicks", "rank"])
    popular = popular.sort_values(["rank", "clicks"], ascending=[True, False], kind="stable")
    return popular["item_id"].drop_duplicates().astype("int64").tolist()


def catalogue_items(settings: Settings, *frames: pd.DataFrame) -> np.ndarray:
    """Every known item id: the lake's catalogue plus any item seen in ``frames``."""
    ids = [read_items(settings.lake_dir).column("item_id").to_numpy()]
    ids += [f["item_id"].to_numpy() for f in frames]
    return np.unique(np.concatenate([np.asarray(i, dtype=np.int64) for i in ids]))


def add_candidate_scores(
    rows: pd.DataFrame, events: pd.DataFrame, item_ids: np.ndarray, dim: int, seed: int
) -> tuple[pd.DataFrame, dict[dt.date, CandidateModel]]:
    """Add CANDIDATE_SCORE_FEATURE to ``rows``, scoring each day's rows with a candidate model
    fit on events of strictly earlier days; returns (rows, {day: that model}).

    Why not the served model: it was fit on the same clicks these rows are labelled with, so its
    dot products would leak the label and the ranker would learn to trust cand_score far more
    than it deserves at serving time, where the score is always about the future.
    """
    rows = rows.copy()
    rows[CANDIDATE_SCORE_FEATURE] = np.float32(0.0)
    models: dict[dt.date, CandidateModel] = {}
    for day in sorted(rows["day"].unique()):
        model = fit_candidate_model(events[events["day"] < day], item_ids, dim, seed)
        mask = (rows["day"] == day).to_numpy()
        rows.loc[mask, CANDIDATE_SCORE_FEATURE] = model.score(
            rows.loc[mask, "user_id"].to_numpy(), rows.loc[mask, "item_id"].to_numpy()
        )
        models[day] = model
    return rows, models


def evaluate_holdout(
    holdout: pd.DataFrame,
    probabilities: np.ndarray,
    negative_rate: float,
    train_events: pd.DataFrame,
    holdout_events: pd.DataFrame,
    prior_model: CandidateModel,
    n_candidates: int,
    base_rate: float,
    seed: int,
) -> dict[str, float]:
    """Ranker and candidate metrics on the holdout day, side by side with the baselines."""
    train_clicks = train_events[train_events["event_type"] == EventType.CLICK.value]
    pop = ev.popularity_scores(train_clicks, holdout["item_id"].to_numpy())
    metrics = {
        **ev.ranking_metrics("ranker", holdout, probabilities,
                             ev.calibrate(probabilities, negative_rate)),
        **ev.ranking_metrics("candscore", holdout, holdout[CANDIDATE_SCORE_FEATURE].to_numpy(),
                             None),
        **ev.ranking_metrics("popularity", holdout, pop, None),
        **ev.ranking_metrics("random", holdout, ev.random_scores(len(holdout), seed), None),
        "base_rate_logloss": ev.log_loss(holdout["label"], np.full(len(holdout), base_rate)),
        "holdout_ctr": float(holdout["label"].mean()),
    }
    # Recall@K of stage 1: the items each user clicked on the holdout day, retrieved by a model
    # that never saw that day.
    clicks = holdout_events[holdout_events["event_type"] == EventType.CLICK.value]
    relevant = clicks.groupby("user_id")["item_id"].apply(set).to_dict()
    users = np.fromiter(relevant, dtype=np.int64, count=len(relevant))
    index = build_index(prior_model.item_embeddings)
    pop_ranked = train_clicks["item_id"].value_counts().index.to_numpy(dtype=np.int64)
    rng = np.random.default_rng(seed)
    for k in sorted({*RECALL_KS, n_candidates}):
        ids = candidate_search(prior_model, index, users, k)[0] if len(users) else []
        retrieved = {int(u): row.tolist() for u, row in zip(users, ids, strict=True)}
        metrics[f"candidates_recall_at_{k}"] = ev.recall_at_k(retrieved, relevant, k)
        metrics[f"popularity_recall_at_{k}"] = ev.recall_at_k(
            {int(u): pop_ranked[:k].tolist() for u in users}, relevant, k
        )
        metrics[f"random_recall_at_{k}"] = ev.recall_at_k(
            {int(u): rng.permutation(prior_model.item_ids)[:k].tolist() for u in users},
            relevant, k,
        )
    return {k: float(v) for k, v in metrics.items()}


def train_and_register(settings: Settings, store: Any | None = None) -> TrainResult:
    """Train both models on the lake + Feast, evaluate on the last day, register as champion.

    ``store`` defaults to ``open_store(settings)`` (tests pass a fake with the same two
    methods). Raises TrainingDataError with a clear message when inputs are missing.
    """
    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    seed, dim = settings.sim.seed, settings.train.embedding_dim
    with clock("setup_s"):
        _check_mlflow(settings.mlflow.uri)  # before minutes of work, not after
        from training import registry

    with clock("dataset_s"):
        data = build_ranker_dataset(settings, store)
        events = load_events(settings)
        popular = read_popular(settings)
        item_ids = catalogue_items(settings, events, data)
    holdout_day: dt.date = data.attrs["holdout_day"]
    negative_rate: float = data.attrs["negative_rate"]

    with clock("candidate_scores_s"):
        data, prior_models = add_candidate_scores(data, events, item_ids, dim, seed)
    train, holdout = time_split(data, holdout_day)

    with clock("ranker_s"):
        booster = train_ranker(train, settings.train.ranker_rounds,
                               settings.train.ranker_learning_rate, seed)
    with clock("evaluate_s"):
        probabilities = predict(booster, holdout)
        base_rate = float(ev.calibrate(np.array([train["label"].mean()]), negative_rate)[0])
        metrics = evaluate_holdout(
            holdout, probabilities, negative_rate,
            events[events["day"] < holdout_day], events[events["day"] == holdout_day],
            prior_models[holdout_day], settings.serving.n_candidates, base_rate, seed,
        )

    days = sorted(events["day"].unique())
    window = {
        "data_start": days[0].isoformat(), "data_end": days[-1].isoformat(),
        "train_days": ",".join(d.isoformat() for d in sorted(train["day"].unique())),
        "holdout_day": holdout_day.isoformat(),
    }
    with clock("candidates_fit_s"):
        served = fit_candidate_model(events, item_ids, dim, seed)  # all days, for serving
    counts = {
        "n_events": len(events), "n_train_rows": len(train), "n_holdout_rows": len(holdout),
        "n_dead_label_rows": int(data.attrs.get("n_dead", 0)),
    }
    import mlflow

    with clock("mlflow_setup_s"):
        sha = registry.git_sha()
        mlflow.set_tracking_uri(settings.mlflow.uri)
        mlflow.set_registry_uri(settings.mlflow.uri)
        mlflow.set_experiment(settings.mlflow.experiment)
    with clock("mlflow_s"), tempfile.TemporaryDirectory(prefix="recstack-candidates-") as tmp:
        save_artifacts(served, Path(tmp), popular, {**window, **counts, "git_sha": sha})
        with mlflow.start_run(run_name=f"train-{window['data_end']}") as run:
            mlflow.set_tags({"git_sha": sha, "feature_service": settings.feast.feature_service,
                             **window})
            mlflow.log_params({
                "embedding_dim": dim, "ranker_rounds": settings.train.ranker_rounds,
                "ranker_learning_rate": settings.train.ranker_learning_rate,
                "negatives_per_positive": settings.train.negatives_per_positive,
                "negative_rate": round(negative_rate, 6), "seed": seed,
                "feature_service": settings.feast.feature_service,
                "ranker_features": ",".join(RANKER_FEATURES), "git_sha": sha,
                **window, **counts,
            })
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
            mlflow.log_dict({**window, **counts}, "data_window.json")
            cand_info = registry.log_candidates(
                Path(tmp), settings.mlflow.candidates_model,
                pd.DataFrame({"user_id": served.user_ids[:3].astype("int64")}),
            )
            rank_info = registry.log_ranker(
                booster, settings.mlflow.ranker_model,
                holdout[RANKER_FEATURES].astype("float32").head(5),
            )
            mlflow.log_metrics({f"time_{k}": v for k, v in timings.items()})
        client = mlflow.MlflowClient()
        tags = {"git_sha": sha, "feature_service": settings.feast.feature_service,
                "run_id": run.info.run_id, **window,
                **{k: f"{v:.5f}" for k, v in metrics.items()
                   if k.startswith(("ranker_", "candidates_"))}}
        result = TrainResult(
            candidates_version=str(cand_info.registered_model_version),
            ranker_version=str(rank_info.registered_model_version),
            metrics=metrics, run_id=run.info.run_id, timings_s=timings,
        )
        registry.promote(client, settings.mlflow.candidates_model, result.candidates_version,
                         settings.mlflow.serving_alias, tags)
        registry.promote(client, settings.mlflow.ranker_model, result.ranker_version,
                         settings.mlflow.serving_alias, tags)
    logger.info("trained and registered: %s", result)
    return result


def _check_mlflow(uri: str) -> None:
    """Fail in a second with a clear message, instead of MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return
    import httpx

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=3.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise ConnectionError(
            f"MLflow tracking server at {uri} is not reachable ({exc}); start it with "
            "`recstack up --services mlflow`"
        ) from exc


class _Stopwatch:
    """``with clock("name_s"):`` adds the block's wall seconds to ``timings[name_s]``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, name: str) -> "_Stopwatch":
        self.name = name
        return self

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self.name] = self.timings.get(self.name, 0.0) + time.perf_counter() - self.t0
