"""``recstack train``: candidates + faiss index and the ranker, evaluated, logged, registered.

In:  the lake (events, items), the feature tables (labels, popular) and the Feast feature
     service ``settings.feast.feature_service`` (point-in-time features).
Out: MLflow run in ``settings.mlflow.experiment`` with params, metrics, data window and git
     sha, the evaluation table, calibration bins and feature reference statistics; model
     versions ``candidates`` (pyfunc + CANDIDATE_ARTIFACTS) and ``ranker`` (native LightGBM),
     both aliased ``challenger``, and ``champion`` only if the promotion gate lets them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd

from recstack.clock import day_start
from recstack.featurestore import open_store
from recstack.lake import read_events, read_items
from recstack.schemas import (
    CANDIDATE_SCORE_FEATURE,
    CROSS_FEATURES,
    POPULAR_FILE,
    RANKER_V2_ITEM_FEATURES,
    cross_code,
)
from recstack.settings import GateSettings, Settings
from training import evaluate as ev
from training import registry
from training.candidates import (
    CandidateModel,
    fit_candidate_model,
    recency_weights,
    save_artifacts,
)
from training.datasets import (
    TrainingDataError,
    build_ranker_dataset,
    features_as_of,
    item_categories,
    time_split,
)
from training.gate import Verdict, decide, latency_within_budget, sanity_failures
from training.gate import aborted as gate_aborted
from training.holdout import Evaluation, Holdout, popular_before, served_fitter
from training.holdout import evaluate as evaluate_holdout
from training.offline import PROTOCOL_MD, OfflineReport, evaluate_offline
from training.pitjoin import AsOfStore
from training.ranker import predict, ranker_params, train_ranker
from training.sources import fresh_items

logger = logging.getLogger(__name__)


class TrainingAborted(RuntimeError):
    """A stop was requested before the first MLflow write: nothing was logged or registered."""


@dataclass
class TrainResult:
    """What one training run registered, and its holdout metrics."""

    candidates_version: str
    ranker_version: str
    metrics: dict[str, float]
    run_id: str
    timings_s: dict[str, float] = field(default_factory=dict)
    promoted: bool = False
    gate_reason: str = ""
    table_md: str = ""


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
    rows: pd.DataFrame, events: pd.DataFrame, item_ids: np.ndarray, dim: int, seed: int,
    half_life_days: float | None = None,
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
        model = fit_candidate_model(events[events["day"] < day], item_ids, dim, seed,
                                    half_life_days)
        mask = (rows["day"] == day).to_numpy()
        rows.loc[mask, CANDIDATE_SCORE_FEATURE] = model.score(
            rows.loc[mask, "user_id"].to_numpy(), rows.loc[mask, "item_id"].to_numpy()
        )
        models[day] = model
    return rows, models


def training_rows(train: pd.DataFrame) -> pd.DataFrame:
    """The training days' rows the ranker learns from: all but the first labelled day.

    Why: the first day has no earlier day, so every stored feature is NaN and the candidate
    score is 0 for all its rows; they teach nothing but the base rate, yet were a third of the
    demo's training set. With a single training day, that day is kept (better than nothing).
    """
    days = sorted(train["day"].unique())
    if len(days) < 2:
        return train
    return train[train["day"] > days[0]].reset_index(drop=True)


def ranker_feature_names(stored: list[str]) -> list[str]:
    """The ranker's columns: the feature service's stored features in its order, the crosses
    of stored codes (CROSS_FEATURES) whose parts it has, then the request-time candidate score
    (serving builds exactly these, by name)."""
    crosses = [n for n, parts in CROSS_FEATURES.items() if all(p in stored for p in parts)]
    return [*stored, *crosses, CANDIDATE_SCORE_FEATURE]


def add_cross_features(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with every CROSS_FEATURES column whose parts it has (schemas.cross_code)."""
    for name, (a, b) in CROSS_FEATURES.items():
        if a in rows.columns and b in rows.columns:
            rows[name] = cross_code(rows[a].to_numpy(), rows[b].to_numpy())
    return rows


# Every item-level feature (v1 and v2 views): summarised per item in the drift reference.
ITEM_FEATURE_NAMES = frozenset(RANKER_V2_ITEM_FEATURES)


def feature_reference(rows: pd.DataFrame, names: list[str]) -> dict[str, dict[str, float]]:
    """Per ranker feature: count, NaN share, mean, std and quantiles of ``rows`` (the reference
    a drift monitor compares live features against).

    Called with the holdout day's rows: every impression of the newest day, with the values
    serving read then. Not the training rows: negatives are sampled there (active users weigh
    more), and their early days have half-filled 7- and 28-day windows - both differ from live
    traffic with no drift at all, and the monitor raised feature alerts every hour. Item
    features count each item once (its last row): the monitor samples items from the catalogue,
    because per impression they would follow the serving policy rather than the world."""
    per_item = rows.drop_duplicates("item_id", keep="last") if "item_id" in rows else rows
    out = {}
    for name in names:
        col = (per_item if name in ITEM_FEATURE_NAMES else rows)[name].astype("float64")
        q = col.quantile([0.01, 0.1, 0.5, 0.9, 0.99]).to_dict() if col.notna().any() else {}
        out[name] = {"n": len(col), "nan_share": float(col.isna().mean()),
                     "mean": float(col.mean()), "std": float(col.std()),
                     **{f"q{int(k * 100):02d}": float(v) for k, v in q.items()}}
    return out


def build_holdout(
    settings: Settings, store: Any, holdout: pd.DataFrame, events: pd.DataFrame,
    prior_model: CandidateModel, item_ids: np.ndarray, holdout_day: dt.date,
    names: list[str],
) -> Holdout:
    """The holdout day and what was known before it (features as of its midnight)."""
    start = day_start(holdout_day)
    train_events = events[events["day"] < holdout_day]
    day_events = events[events["day"] == holdout_day]
    categories = item_categories(settings)
    snapshot = features_as_of(
        store, settings.feast.feature_service, np.unique(day_events["user_id"].to_numpy()),
        item_ids, start, categories=categories.unique())
    return Holdout(
        day=holdout_day, rows=holdout, train_events=train_events, day_events=day_events,
        prior_model=prior_model, catalogue=item_ids, popular=popular_before(train_events),
        fresh=fresh_items(read_items(settings.lake_dir).to_pandas(), start),
        features=snapshot, item_categories=categories, feature_names=names,
    )


@dataclass
class RankerData:
    """The ranker's rows split by day, and what they were built from: the fitting phases' input."""

    events: pd.DataFrame  # the lake's events, with their day
    popular: list[int]  # popular.parquet's item ids, most popular first
    item_ids: np.ndarray  # the catalogue plus every item seen
    holdout_day: dt.date
    negative_rate: float  # the dataset's negative sampling rate (calibration undoes it)
    prior_models: dict[dt.date, CandidateModel]  # per day: fit on the days before it
    train: pd.DataFrame
    holdout: pd.DataFrame
    features: list[str]  # the ranker's columns, in order
    last_day: dt.date  # the newest day of events
    window: dict[str, str]  # data_start, data_end, train_days, holdout_day
    counts: dict[str, int]  # n_events, n_train_rows, n_holdout_rows, ...


@dataclass
class ChallengerEvaluation:
    """The new ranker judged on the holdout day: what the run logs and the gate decides on."""

    hold: Holdout
    evaluation: Evaluation  # metrics (plus ranker_batch_* latency), table, calibration
    base_rate: float  # the training rows' click rate, calibrated
    scores: np.ndarray  # the ranker's scores of the holdout rows
    latency: dict[str, float]

    @property
    def metrics(self) -> dict[str, float]:
        return self.evaluation.metrics


def train_and_register(settings: Settings, store: Any | None = None,
                       gate: GateSettings | None = None,
                       stop: threading.Event | None = None) -> TrainResult:
    """Train both models, evaluate them on the last day, register them, run the gate.

    In: the lake, the feature tables and Feast (``store`` defaults to ``open_store(settings)``,
    read through the as-of join of training/pitjoin.py unless ``settings.train.pit_join`` is
    "feast"; a store passed in is used as given: tests pass a fake with the same methods); ``gate`` defaults to ``settings.gate``.
    Out: a :class:`TrainResult`. Both new versions get the alias ``challenger``; they get
    ``champion`` only if the gate passes (training/gate.py), else the champion stays and the
    reason is on the run, on the versions (tags ``gate_decision``, ``gate_reason``) and in
    the log. Any exception before the gate leaves the champion untouched. Raises
    TrainingDataError with a clear message when inputs are missing, and TrainingAborted when
    ``stop`` is set before the first MLflow write (after it, the run completes).
    """
    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    seed, dim = settings.sim.seed, settings.train.embedding_dim
    gate = gate or settings.gate
    with clock("setup_s"):
        _check_mlflow(settings.mlflow.uri)  # before minutes of work, not after
    if store is None:
        store = open_store(settings)
        if settings.train.pit_join == "asof":
            store = AsOfStore(store)

    data = prepare_ranker_data(settings, store, clock, stop)
    _check_stop(stop, "the candidate scores")
    with clock("ranker_s"):
        booster = fit_ranker(settings, data.train, data.features)
    _check_stop(stop, "the ranker")
    judged = evaluate_challenger(settings, store, gate, data, booster, clock)
    offline = None
    if settings.train.offline_models:
        with clock("offline_eval_s"):
            offline = offline_evaluation(settings, data, judged, booster)
    with clock("candidates_fit_s"):
        served = fit_candidate_model(data.events, data.item_ids, dim, seed,  # all days, for serving
                                     settings.train.recency_half_life_days)
    _check_stop(stop, "the evaluation")  # the last point: then it logs, registers, gates

    with clock("mlflow_setup_s"):
        sha = registry.git_sha(settings=settings)
        mlflow.set_tracking_uri(settings.mlflow.uri)
        mlflow.set_registry_uri(settings.mlflow.uri)
        mlflow.set_experiment(settings.mlflow.experiment)
    client = registry.client_for(settings)
    with clock("mlflow_s"), tempfile.TemporaryDirectory(prefix="recstack-candidates-") as tmp:
        save_candidate_artifacts(settings, served, Path(tmp), data, sha)
        with mlflow.start_run(run_name=f"train-{data.window['data_end']}") as run:
            log_run(settings, gate, data, judged, sha)
            if offline is not None:
                log_offline(offline)
            versions = log_models(settings, Path(tmp), served, booster, data)
            mlflow.log_metrics({f"time_{k}": v for k, v in timings.items()})
            mark_challengers(settings, client, versions, data, judged.metrics, sha,
                             run.info.run_id)
            with clock("gate_s"):
                verdict = run_gate(settings, client, gate, versions, data.holdout, booster,
                                   judged.scores, judged.latency["cpu_p99_ms"],
                                   data.negative_rate,
                                   popularity_baseline(data.holdout, judged.hold.popular,
                                                       judged.base_rate))
            record_verdict(settings, client, versions, verdict)
    result = TrainResult(
        candidates_version=versions["candidates"], ranker_version=versions["ranker"],
        metrics=judged.metrics, run_id=run.info.run_id, timings_s=timings,
        promoted=verdict.promote, gate_reason=verdict.reason,
        table_md=judged.evaluation.table_md + (offline_md(offline) if offline else ""),
    )
    logger.info("trained and registered: run %s, versions %s", result.run_id, versions)
    return result


def prepare_ranker_data(settings: Settings, store: Any, clock: _Stopwatch,
                        stop: threading.Event | None) -> RankerData:
    """The dataset and lake reads, candidate scores and crosses, split into train and holdout."""
    seed, dim = settings.sim.seed, settings.train.embedding_dim
    with clock("dataset_s"):
        data = build_ranker_dataset(settings, store)
        events = load_events(settings)
        popular = read_popular(settings)
        item_ids = catalogue_items(settings, events, data)
    holdout_day: dt.date = data.attrs["holdout_day"]
    negative_rate: float = data.attrs["negative_rate"]
    _check_stop(stop, "the dataset")

    with clock("candidate_scores_s"):
        data, prior_models = add_candidate_scores(
            data, events, item_ids, dim, seed, settings.train.recency_half_life_days)
    data = add_cross_features(data)
    train_all, holdout = time_split(data, holdout_day)
    train = training_rows(train_all)
    days = sorted(events["day"].unique())
    return RankerData(
        events=events, popular=popular, item_ids=item_ids, holdout_day=holdout_day,
        negative_rate=negative_rate, prior_models=prior_models, train=train, holdout=holdout,
        features=ranker_feature_names(data.attrs["stored_features"]), last_day=days[-1],
        window={
            "data_start": days[0].isoformat(), "data_end": days[-1].isoformat(),
            "train_days": ",".join(d.isoformat() for d in sorted(train["day"].unique())),
            "holdout_day": holdout_day.isoformat(),
        },
        counts={
            "n_events": len(events), "n_train_rows": len(train), "n_holdout_rows": len(holdout),
            "n_dead_label_rows": int(data.attrs.get("n_dead", 0)),
            "n_train_rows_dropped_first_day": len(train_all) - len(train),
        },
    )


def fit_ranker(settings: Settings, train: pd.DataFrame, features: list[str]) -> Any:
    """The LightGBM ranker on the training rows, recency-weighted when a half-life is set."""
    half_life = settings.train.recency_half_life_days
    return train_ranker(train, settings.train.ranker_rounds,
                        settings.train.ranker_learning_rate, settings.sim.seed, features,
                        recency_weights(train["event_timestamp"], half_life)
                        if half_life else None)


def evaluate_challenger(settings: Settings, store: Any, gate: GateSettings, data: RankerData,
                        booster: Any, clock: _Stopwatch) -> ChallengerEvaluation:
    """Holdout metrics against the baselines, then the ranker's batch latency (a gate input)."""
    with clock("evaluate_s"):
        hold = build_holdout(settings, store, data.holdout, data.events,
                             data.prior_models[data.holdout_day], data.item_ids,
                             data.holdout_day, data.features)
        base_rate = float(ev.calibrate(np.array([data.train["label"].mean()]),
                                       data.negative_rate)[0])
        evaluation = evaluate_holdout(
            hold, lambda x: booster.predict(x, num_threads=1), data.negative_rate, base_rate,
            settings.serving.n_candidates, settings.sim.seed)
    metrics = evaluation.metrics
    holdout_scores = predict(booster, data.holdout)
    with clock("latency_s"):
        batch = data.holdout[data.features].to_numpy(np.float32)
        batch = np.resize(batch, (gate.latency_rows, batch.shape[1])) if len(batch) else batch
        latency = latency_within_budget(lambda x: booster.predict(x, num_threads=1), batch,
                                        gate)
    metrics.update({f"ranker_batch_{k}": v for k, v in latency.items()})
    return ChallengerEvaluation(hold=hold, evaluation=evaluation, base_rate=base_rate,
                                scores=holdout_scores, latency=latency)


def offline_evaluation(settings: Settings, data: RankerData, judged: ChallengerEvaluation,
                       booster: Any) -> OfflineReport:
    """The full-catalogue protocol of training/offline.py split at the holdout day's start:
    ``settings.train.offline_models`` and the served pipeline (this run's candidates and
    ranker, ``served``), each fit on the days before the holdout day only."""
    served = served_fitter(judged.hold, lambda x: booster.predict(x, num_threads=1),
                           settings.serving.n_candidates)
    return evaluate_offline(
        data.events, data.item_ids, at=day_start(data.holdout_day),
        models=tuple(settings.train.offline_models), seed=settings.sim.seed,
        dim=settings.train.embedding_dim, extra={"served": served})


def offline_md(report: OfflineReport) -> str:
    return (f"\n\nFull catalogue, split at the holdout day ({report.n_users:,} users with "
            f"{report.n_targets:,} targets, {report.n_items:,} items; served = candidates -> "
            f"ranker of this run):\n\n{report.table_md()}\n\n{PROTOCOL_MD}")


def log_offline(report: OfflineReport) -> None:
    """Metrics ``offline_<model>_<metric>`` (``@k`` as ``_at_k``) and ``offline.md``."""
    mlflow.log_metrics({
        f"offline_{r.name}_{k.replace('@', '_at_')}": v
        for r in report.results for k, v in r.metrics.items() if np.isfinite(v)})
    mlflow.log_text(offline_md(report).strip(), "offline.md")


def save_candidate_artifacts(settings: Settings, served: CandidateModel, artifact_dir: Path,
                             data: RankerData, sha: str) -> None:
    """The served candidate model's files, with the items fresh on the day after the data."""
    fresh_now = fresh_items(read_items(settings.lake_dir).to_pandas(),
                            day_start(data.last_day + dt.timedelta(days=1)))
    save_artifacts(served, artifact_dir, data.popular,
                   {**data.window, **data.counts, "git_sha": sha, "fresh_items": fresh_now},
                   fresh=fresh_now, item_categories=item_categories(settings))


def run_params(settings: Settings, gate: GateSettings, data: RankerData, sha: str
               ) -> dict[str, Any]:
    """The run's MLflow params: training settings, data window and counts, gate settings."""
    service = settings.feast.feature_service
    return {
        "embedding_dim": settings.train.embedding_dim,
        "ranker_rounds": settings.train.ranker_rounds,
        "recency_half_life_days": settings.train.recency_half_life_days,
        "ranker_learning_rate": settings.train.ranker_learning_rate,
        "negatives_per_positive": settings.train.negatives_per_positive,
        "negative_rate": round(data.negative_rate, 6), "seed": settings.sim.seed,
        "feature_service": service, "ranker_features": ",".join(data.features),
        "git_sha": sha,
        **{f"ranker_{k}": v for k, v in ranker_params(0.0).items()
           if k in ("num_leaves", "min_data_in_leaf", "objective")},
        **{f"gate_{k}": v for k, v in gate.model_dump().items()},
        **data.window, **data.counts,
    }


def log_run(settings: Settings, gate: GateSettings, data: RankerData,
            judged: ChallengerEvaluation, sha: str) -> None:
    """Tags, params, metrics and the evaluation artifacts of the active MLflow run."""
    service = settings.feast.feature_service
    evaluation = judged.evaluation
    mlflow.set_tags({"git_sha": sha, "feature_service": service, **data.window})
    mlflow.log_params(run_params(settings, gate, data, sha))
    mlflow.log_metrics({k: v for k, v in judged.metrics.items() if np.isfinite(v)})
    mlflow.log_dict({**data.window, **data.counts}, "data_window.json")
    mlflow.log_text(evaluation.table_md, "evaluation.md")
    mlflow.log_text(evaluation.calibration.to_markdown(index=False)
                    if _has_tabulate() else evaluation.calibration.to_string(index=False),
                    "calibration.md")
    mlflow.log_dict({"feature_service": service, "feature_names": data.features},
                    "ranker_features.json")
    mlflow.log_dict(feature_reference(data.holdout, data.features), "feature_reference.json")


def log_models(settings: Settings, artifact_dir: Path, served: CandidateModel, booster: Any,
               data: RankerData) -> dict[str, str]:
    """Log and register both models in the active run; returns {kind: new version}."""
    cand_info = registry.log_candidates(
        artifact_dir, settings.mlflow.candidates_model,
        pd.DataFrame({"user_id": served.user_ids[:3].astype("int64")}),
    )
    rank_info = registry.log_ranker(
        booster, settings.mlflow.ranker_model,
        data.holdout[data.features].astype("float32").head(5), settings.feast.feature_service,
    )
    return {"candidates": str(cand_info.registered_model_version),
            "ranker": str(rank_info.registered_model_version)}


def mark_challengers(settings: Settings, client: Any, versions: dict[str, str],
                     data: RankerData, metrics: dict[str, float], sha: str, run_id: str) -> None:
    """Pair the new versions and alias both ``challenger``, tagged with the run's provenance."""
    tags = {"git_sha": sha, "feature_service": settings.feast.feature_service,
            "run_id": run_id, **data.window,
            **{k: f"{v:.5f}" for k, v in metrics.items()
               if k.startswith(("ranker_", "candidates_recall"))}}
    names = registry.model_names(settings)
    # Before any alias moves: serving resolves the pair from the ranker version alone.
    client.set_model_version_tag(names["ranker"], versions["ranker"], registry.PAIR_TAG,
                                 versions["candidates"])
    for kind in registry.KINDS:
        registry.set_alias(client, names[kind], versions[kind], registry.CHALLENGER, tags)


def record_verdict(settings: Settings, client: Any, versions: dict[str, str],
                   verdict: Verdict) -> None:
    """The gate's decision on the run and both versions; the pair promoted if it passed."""
    names = registry.model_names(settings)
    mlflow.set_tags({"gate_decision": verdict.decision, "gate_reason": verdict.reason})
    for kind in registry.KINDS:
        client.set_model_version_tag(names[kind], versions[kind], "gate_decision",
                                     verdict.decision)
        client.set_model_version_tag(names[kind], versions[kind], "gate_reason",
                                     verdict.reason[:5000])
    if verdict.promote:
        registry.promote_pair(client, settings, versions, verdict.reason, "gate")
        logger.info("gate: promoted candidates v%s + ranker v%s to @%s: %s",
                    versions["candidates"], versions["ranker"],
                    settings.mlflow.serving_alias, verdict.reason)
    else:
        logger.warning("gate: champion unchanged, challenger ranker v%s %s: %s",
                       versions["ranker"], verdict.decision, verdict.reason)


def run_gate(
    settings: Settings, client: Any, gate: GateSettings, versions: dict[str, str],
    holdout: pd.DataFrame, booster: Any, scores: np.ndarray, latency_p99_ms: float,
    negative_rate: float, baseline: dict[str, float],
) -> Verdict:
    """Sanity checks, the artifacts loaded back from MLflow, then challenger vs champion on the
    same holdout rows (the champion's ranker re-scored here, not its logged metrics); with no
    champion (or a broken one), challenger vs the popularity ``baseline`` on those rows.

    A registry error while looking up or loading the champion that is transient (5xx,
    connection refused or reset, timeout) aborts the gate: the champion stays.
    """
    x = holdout[booster.feature_name()].to_numpy(np.float32)
    probe = x[: min(len(x), 200)]
    problems = registry.pair_problems(client, settings, versions, probe,
                                      booster.predict(probe, num_threads=1))
    failures = sanity_failures(scores, latency_p99_ms, problems, gate)
    mine = _ranker_metrics(holdout, scores, negative_rate)
    try:
        champion = registry.champion_pair(client, settings)
    except Exception as exc:  # noqa: BLE001 - unknown whether a champion exists: judge nothing
        return _abort(f"looking up @{settings.mlflow.serving_alias} failed", exc)
    if champion is None:
        return decide(failures, mine, None, gate, baseline=baseline)
    try:
        old = registry.load_champion_ranker(client, settings, champion["ranker"])
        old_run = client.get_model_version(settings.mlflow.ranker_model, champion["ranker"]).run_id
        old_rate = float(client.get_run(old_run).data.params.get("negative_rate", negative_rate))
    except Exception as exc:  # noqa: BLE001 - a champion that cannot be evaluated cannot defend its title
        if registry.is_transient(exc):
            return _abort(f"loading champion ranker v{champion['ranker']} failed", exc)
        return decide(failures, mine, None, gate, champion_problem=f"{type(exc).__name__}: {exc}",
                      baseline=baseline)
    lacking = [n for n in old.feature_name() if n not in holdout.columns]
    if lacking:
        # A champion reading features this run did not fetch (another feature service) cannot
        # be compared on these rows; promoting blind could lose quality: keep the champion.
        failures = [*failures, f"champion ranker v{champion['ranker']} reads {lacking[:5]}, "
                    "which this run's feature service lacks: no comparison, champion kept"]
        return decide(failures, mine, None, gate, baseline=baseline)
    theirs = _ranker_metrics(
        holdout, old.predict(holdout[old.feature_name()].to_numpy(np.float32), num_threads=1),
        old_rate)
    logger.info("gate: challenger %s vs champion ranker v%s %s on %d holdout rows",
                mine, champion["ranker"], theirs, len(holdout))
    return decide(failures, mine, theirs, gate)


def popularity_baseline(holdout: pd.DataFrame, popular: list[int], base_rate: float
                        ) -> dict[str, float]:
    """What a first model must beat, on the gate's holdout rows: popularity's AUC and NDCG@10
    (items scored by their rank in the popular list serving had before the day) and, for
    ``gate.metric=logloss``, the constant base rate's log loss."""
    ranks = dict(zip(popular, range(len(popular), 0, -1), strict=True))
    scores = np.array([ranks.get(int(i), 0) for i in holdout["item_id"]], dtype=np.float64)
    m = ev.ranking_metrics("p", holdout, scores, None)
    y = holdout["label"].to_numpy()
    return {"auc": m["p_auc"], "ndcg_at_10": m["p_ndcg_at_10"],
            "logloss": ev.log_loss(y, np.full(len(y), base_rate))}


def _abort(what: str, exc: BaseException) -> Verdict:
    verdict = gate_aborted(f"{what}: {type(exc).__name__}: {exc}")
    logger.warning("gate: %s", verdict.reason)
    return verdict


def _ranker_metrics(holdout: pd.DataFrame, scores: np.ndarray, negative_rate: float
                    ) -> dict[str, float]:
    m = ev.ranking_metrics("r", holdout, scores, ev.calibrate(scores, negative_rate))
    return {k.removeprefix("r_"): v for k, v in m.items()}


def _check_stop(stop: threading.Event | None, after: str) -> None:
    if stop is not None and stop.is_set():
        raise TrainingAborted(f"stop requested before registration (checked after {after}); "
                              "nothing logged or registered")


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401 - optional: pandas' to_markdown needs it
    except ImportError:
        return False
    return True


def _check_mlflow(uri: str) -> None:
    """Fail in a second with a clear message, instead of MLflow's minutes of retries."""
    if not uri.startswith(("http://", "https://")):
        return

    try:
        httpx.get(f"{uri.rstrip('/')}/health", timeout=3.0).raise_for_status()
    except httpx.HTTPError as exc:
        raise ConnectionError(
            f"MLflow tracking server at {uri} is not reachable ({exc}); start it with "
            "`recstack up --services mlflow`"
        ) from exc


class _Stopwatch:
    """``with clock("name_s"):`` adds the block's wall seconds to ``timings[name_s]``; blocks
    may nest (each ``clock(...)`` is its own timer)."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
