"""The standard offline protocol for interaction data: a temporal split, full-catalogue top-K.

Train is every event before the split time T; test is the clicks at or after T. A user is
evaluated when they have an event before T and a test click on an item they had no event with
before T (the targets). Each model, fitted on train only, ranks the whole catalogue for each
evaluated user with the items of the user's train events left out (the seen items: the
``shown`` policy of ``settings.seen`` with no window), and is scored on its top 50:
NDCG@10 (binary gains), Recall@10 and @50, HR@10 (a target in the top 10), MRR@50 and
coverage@10 (distinct items over all top-10 lists / catalogue size).

Models: ``popularity`` (train clicks), ``item_knn`` (cosine item-item, ``implicit``),
``als`` (``implicit``'s alternating least squares on the click matrix) and ``candidates``
(the project's own candidate model, ``training.candidates.fit_candidate_model``, alone).
T defaults to the time that leaves the last ``test_fraction`` of clicks for the test.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
from implicit.als import AlternatingLeastSquares
from implicit.nearest_neighbours import ItemItemRecommender
from sklearn.preprocessing import normalize
from threadpoolctl import threadpool_limits

from recstack import lake
from recstack.schemas import EventType
from recstack.settings import Settings
from training.candidates import fit_candidate_model

CUTOFFS = (10, 50)
MODELS = ("popularity", "item_knn", "als", "candidates")
USERS_PER_BLOCK = 1024


@dataclass(frozen=True)
class Split:
    """The temporal split: train events, the targets of each evaluated user, the catalogue."""

    at: pd.Timestamp
    train: pd.DataFrame
    targets: dict[int, np.ndarray]  # user -> test-click items with no train event
    user_ids: np.ndarray  # users with a train event, sorted
    item_ids: np.ndarray  # the catalogue, sorted


@dataclass
class ModelResult:
    name: str
    metrics: dict[str, float]
    fit_s: float
    score_s: float
    notes: str = ""


@dataclass
class OfflineReport:
    split_at: str
    n_train_events: int
    n_users: int
    n_targets: int
    n_items: int
    results: list[ModelResult] = field(default_factory=list)

    def table_md(self) -> str:
        names = ["ndcg@10", "recall@10", "recall@50", "hr@10", "mrr@50", "coverage@10"]
        lines = ["| model | " + " | ".join(names) + " | fit s |",
                 "|---|" + "---|" * (len(names) + 1)]
        for r in self.results:
            cells = " | ".join(f"{r.metrics[n]:.4f}" for n in names)
            lines.append(f"| {r.name} | {cells} | {r.fit_s:.1f} |")
        return "\n".join(lines)


def split_at_time(events: pd.DataFrame, catalogue: np.ndarray, test_fraction: float = 0.1,
                  at: dt.datetime | None = None) -> Split:
    """Train before ``at`` (default: the time leaving ``test_fraction`` of clicks after it)."""
    clicks = events[events["event_type"] == EventType.CLICK.value]
    if clicks.empty:
        raise ValueError("the lake holds no clicks: nothing to evaluate against")
    cut = (pd.Timestamp(at) if at is not None
           else clicks["ts"].sort_values().iloc[int(len(clicks) * (1 - test_fraction))])
    train = events[events["ts"] < cut]
    test = clicks[clicks["ts"] >= cut]
    if train.empty or test.empty:
        raise ValueError(f"split at {cut} leaves an empty train or test part")
    user_ids = np.unique(train["user_id"].to_numpy(np.int64))
    seen = set(zip(train["user_id"].to_numpy(np.int64), train["item_id"].to_numpy(np.int64),
                   strict=True))
    targets: dict[int, set[int]] = {}
    known = set(user_ids.tolist())
    for user, item in zip(test["user_id"].to_numpy(np.int64), test["item_id"].to_numpy(np.int64),
                          strict=True):
        if int(user) in known and (user, item) not in seen:
            targets.setdefault(int(user), set()).add(int(item))
    items = np.unique(np.concatenate([np.asarray(catalogue, np.int64),
                                      events["item_id"].to_numpy(np.int64)]))
    return Split(cut, train, {u: np.array(sorted(v), np.int64) for u, v in targets.items()},
                 user_ids, items)


def click_matrix(split: Split) -> sp.csr_matrix:
    """Users x items, the number of train clicks (rows: ``split.user_ids``)."""
    clicks = split.train[split.train["event_type"] == EventType.CLICK.value]
    rows = np.searchsorted(split.user_ids, clicks["user_id"].to_numpy(np.int64))
    cols = np.searchsorted(split.item_ids, clicks["item_id"].to_numpy(np.int64))
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                         shape=(len(split.user_ids), len(split.item_ids)))


def seen_matrix(split: Split) -> sp.csr_matrix:
    """Users x items, 1 where the user had any train event with the item."""
    rows = np.searchsorted(split.user_ids, split.train["user_id"].to_numpy(np.int64))
    cols = np.searchsorted(split.item_ids, split.train["item_id"].to_numpy(np.int64))
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                      shape=(len(split.user_ids), len(split.item_ids)))
    m.data[:] = 1.0
    return m


Scorer = Callable[[np.ndarray], np.ndarray]  # user rows -> [len(rows), n_items] scores


def fit_popularity(split: Split, clicks: sp.csr_matrix, seed: int) -> Scorer:
    counts = np.asarray(clicks.sum(axis=0)).ravel().astype(np.float32)
    return lambda rows: np.broadcast_to(counts, (len(rows), len(counts))).copy()


def fit_item_knn(split: Split, clicks: sp.csr_matrix, seed: int, neighbours: int = 100) -> Scorer:
    model = ItemItemRecommender(K=neighbours)  # on cosine-normalised columns: item-item cosine
    model.fit(normalize(clicks.T.tocsr()).T.tocsr().astype(np.float64), show_progress=False)
    similarity = model.similarity.tocsr()  # items x items
    return lambda rows: np.asarray((clicks[rows] @ similarity).todense(), dtype=np.float32)


def fit_als(split: Split, clicks: sp.csr_matrix, seed: int, factors: int = 64) -> Scorer:
    model = AlternatingLeastSquares(factors=factors, regularization=0.05, iterations=15,
                                    random_state=seed)
    model.fit(clicks, show_progress=False)
    users, items = np.asarray(model.user_factors), np.asarray(model.item_factors)
    return lambda rows: users[rows] @ items.T


def fit_candidates(split: Split, clicks: sp.csr_matrix, seed: int, dim: int = 32,
                   half_life_days: float | None = None) -> Scorer:
    model = fit_candidate_model(split.train, split.item_ids, dim, seed, half_life_days)
    user_row = np.searchsorted(model.user_ids, split.user_ids)
    item_row = np.searchsorted(model.item_ids, split.item_ids)
    users, items = model.user_embeddings[user_row], model.item_embeddings[item_row]
    return lambda rows: users[rows] @ items.T


FITTERS: dict[str, Callable[..., Scorer]] = {
    "popularity": fit_popularity, "item_knn": fit_item_knn, "als": fit_als,
    "candidates": fit_candidates,
}


def top_items(scores: np.ndarray, seen: sp.csr_matrix, k: int) -> np.ndarray:
    """Column indices of each row's ``k`` best scores, seen columns left out, best first
    (-1 where fewer than ``k`` columns have a finite score)."""
    scores = np.array(scores, dtype=np.float32)
    coo = seen.tocoo()
    scores[coo.row, coo.col] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    # A model that cannot rank an item (-inf: seen, or outside the served candidates) does not
    # list it: such slots are -1, never a hit.
    return np.where(np.isneginf(np.take_along_axis(scores, top, axis=1)), -1, top)


def list_metrics(top: np.ndarray, targets: list[np.ndarray], n_items: int) -> dict[str, float]:
    """Mean NDCG@10, Recall@10/@50, HR@10, MRR@50 over users, and coverage@10."""
    discounts = 1.0 / np.log2(np.arange(2, top.shape[1] + 2))
    ndcg, rec10, rec50, hr10, mrr = [], [], [], [], []
    for ranked, wanted in zip(top, targets, strict=True):
        hit = np.isin(ranked, wanted)
        ideal = discounts[: min(len(wanted), 10)].sum()
        ndcg.append(float((hit[:10] * discounts[:10]).sum() / ideal))
        rec10.append(hit[:10].sum() / len(wanted))
        rec50.append(hit[:50].sum() / len(wanted))
        hr10.append(float(hit[:10].any()))
        first = np.flatnonzero(hit)
        mrr.append(1.0 / (first[0] + 1) if len(first) else 0.0)
    return {"ndcg@10": float(np.mean(ndcg)), "recall@10": float(np.mean(rec10)),
            "recall@50": float(np.mean(rec50)), "hr@10": float(np.mean(hr10)),
            "mrr@50": float(np.mean(mrr)),
            "coverage@10": len(np.setdiff1d(np.unique(top[:, :10]), [-1])) / n_items}


def evaluate_offline(events: pd.DataFrame, catalogue: np.ndarray, *, test_fraction: float = 0.1,
                     at: dt.datetime | None = None, models: tuple[str, ...] = MODELS,
                     seed: int = 0, dim: int = 32,
                     progress: Callable[[str], None] = lambda name: None,
                     extra: dict[str, Callable[..., Scorer]] | None = None) -> OfflineReport:
    """Fit every model on the train part and score its top 50 against the targets.

    ``extra``: more models by name, fitters with FITTERS' signature (the training run adds the
    served pipeline, ``training.holdout.served_fitter``), scored after ``models``."""
    split = split_at_time(events, catalogue, test_fraction, at)
    if not split.targets:
        raise ValueError(f"no user with events before {split.at} clicked a new item after it: "
                         "nothing to evaluate; try a larger test fraction")
    users = np.array(sorted(split.targets), np.int64)
    rows = np.searchsorted(split.user_ids, users)
    targets = [np.searchsorted(split.item_ids, split.targets[int(u)]) for u in users]
    clicks, seen = click_matrix(split), seen_matrix(split)
    report = OfflineReport(str(split.at), len(split.train), len(users),
                           sum(len(t) for t in targets), len(split.item_ids))
    fitters = {**FITTERS, **(extra or {})}
    for name in (*models, *(extra or {})):
        progress(name)
        t = time.perf_counter()
        with threadpool_limits(1, "blas"):  # implicit warns (and slows) with threaded BLAS
            kwargs = {"dim": dim} if name == "candidates" else {}
            scorer = fitters[name](split, clicks, seed, **kwargs)
            fit_s = time.perf_counter() - t
            t = time.perf_counter()
            tops = [top_items(scorer(rows[i:i + USERS_PER_BLOCK]),
                              seen[rows[i:i + USERS_PER_BLOCK]], max(CUTOFFS))
                    for i in range(0, len(rows), USERS_PER_BLOCK)]
        top = np.concatenate(tops) if tops else np.empty((0, max(CUTOFFS)), np.int64)
        report.results.append(ModelResult(name, list_metrics(top, targets, len(split.item_ids)),
                                          fit_s, time.perf_counter() - t))
    return report


def evaluate_lake(settings: Settings, *, test_fraction: float = 0.1,
                  at: dt.datetime | None = None, models: tuple[str, ...] = MODELS,
                  progress: Callable[[str], None] = lambda name: None,
                  ) -> tuple[OfflineReport, Path]:
    """The protocol on ``settings``' lake; writes ``report.md`` and ``summary.json`` to
    ``$RECSTACK_HOME/reports/evaluate-<time>/`` and returns the report and that folder."""
    events = lake.read_events(settings.lake_dir).to_pandas()
    catalogue = lake.read_items(settings.lake_dir)["item_id"].to_numpy()
    report = evaluate_offline(events, catalogue, test_fraction=test_fraction, at=at,
                              models=models, seed=settings.sim.seed,
                              dim=settings.train.embedding_dim, progress=progress)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = settings.reports_dir / f"evaluate-{stamp}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps(asdict(report), indent=2))
    (folder / "report.md").write_text(
        f"# Offline evaluation ({stamp})\n\n{PROTOCOL_MD}\n\n"
        f"Split at {report.split_at}: {report.n_train_events:,} train events, "
        f"{report.n_users:,} users with {report.n_targets:,} targets, "
        f"{report.n_items:,} catalogue items (lake: {settings.lake_dir}).\n\n"
        f"{report.table_md()}\n")
    return report, folder


PROTOCOL_MD = (
    "Temporal split: train is every event before T, the targets are a user's clicks after T on "
    "items they had no event with before T. Every model ranks the full catalogue with the "
    "user's train items left out; metrics are means over users with a target (top 50 scored; "
    "coverage: distinct items in all top-10 lists / catalogue). See training/offline.py.")
