"""Offline metrics on the holdout day, for the models and for the baselines they must beat.

Pure numpy / scikit-learn functions:
- ranker (per impression): AUC, log loss, NDCG@10 per request (mean over requests with a click);
- candidates (per user): Recall@K of the items a user clicked on the holdout day;
- baselines on the same rows: popularity (train-days click counts) and random scores.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss as _sk_log_loss
from sklearn.metrics import roc_auc_score

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC; NaN when ``labels`` has a single class (AUC is undefined then)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, scores))


def log_loss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean binary cross-entropy, probabilities clipped to [EPS, 1 - EPS]."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1 - EPS)
    return float(_sk_log_loss(np.asarray(labels), p, labels=[0, 1]))


def calibrate(probabilities: np.ndarray, negative_rate: float) -> np.ndarray:
    """Undo negative down-sampling: a model trained with negatives kept at ``negative_rate``
    over-states the odds by 1 / rate, so true odds = model odds * rate."""
    p = np.asarray(probabilities, dtype=np.float64)
    return p * negative_rate / (p * negative_rate + (1.0 - p))


def dcg(gains: np.ndarray) -> float:
    """Discounted cumulative gain of ``gains`` in ranked order (log2 discount, rank 1 -> 1)."""
    gains = np.asarray(gains, dtype=np.float64)
    return float(np.sum(gains / np.log2(np.arange(2, len(gains) + 2))))


def ndcg_at_k(
    labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int = 10
) -> float:
    """Mean NDCG@k over groups (requests) of two or more rows with at least one positive; NaN
    if none (a request of one item has nothing to rank: it would score a perfect 1).

    Within a group, rows are ranked by descending score; ties keep input order (stable sort), so
    a constant scorer gets the logging policy's order.
    """
    df = pd.DataFrame({"y": np.asarray(labels, dtype=np.float64),
                       "s": np.asarray(scores, dtype=np.float64), "g": np.asarray(groups)})
    values = []
    for _, grp in df.groupby("g", sort=False):
        y = grp["y"].to_numpy()
        if y.sum() <= 0 or len(y) < 2:
            continue
        order = np.argsort(-grp["s"].to_numpy(), kind="stable")
        ideal = dcg(np.sort(y)[::-1][:k])
        values.append(dcg(y[order][:k]) / ideal)
    return float(np.mean(values)) if values else float("nan")


def recall_at_k(
    retrieved: Mapping[int, Iterable[int]], relevant: Mapping[int, Iterable[int]], k: int
) -> float:
    """Mean over users with relevant items of |top-k retrieved ∩ relevant| / |relevant|.

    Users in ``relevant`` that have no retrieved list count as recall 0.
    """
    values = []
    for user, items in relevant.items():
        rel = set(items)
        if not rel:
            continue
        top = set(list(retrieved.get(user, []))[:k])
        values.append(len(top & rel) / len(rel))
    return float(np.mean(values)) if values else float("nan")


def ranking_metrics(
    prefix: str, holdout: pd.DataFrame, scores: np.ndarray, probabilities: np.ndarray | None
) -> dict[str, float]:
    """``{prefix}_auc``, ``{prefix}_ndcg_at_10`` and, given probabilities, ``{prefix}_logloss``.

    ``holdout`` needs ``label`` and ``request_id`` columns, rows aligned with ``scores``.
    """
    y = holdout["label"].to_numpy()
    out = {
        f"{prefix}_auc": auc(y, scores),
        f"{prefix}_ndcg_at_10": ndcg_at_k(y, scores, holdout["request_id"].to_numpy(), 10),
    }
    if probabilities is not None:
        out[f"{prefix}_logloss"] = log_loss(y, probabilities)
    return out


def popularity_scores(train_clicks: pd.DataFrame, item_ids: np.ndarray) -> np.ndarray:
    """Per item in ``item_ids``: its number of clicks in ``train_clicks`` (item_id column)."""
    counts = train_clicks["item_id"].value_counts()
    return counts.reindex(np.asarray(item_ids)).fillna(0).to_numpy(dtype=np.float64)


def random_scores(n: int, seed: int = 0) -> np.ndarray:
    """Uniform random scores: the floor every model must clear."""
    return np.random.default_rng(seed).random(n)


def calibration_bins(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10
) -> pd.DataFrame:
    """Observed vs predicted click rate per equal-frequency bin of the predicted probability.

    Out: one row per non-empty bin (``bin``, ``n``, ``predicted`` mean, ``observed`` CTR).
    Equal-frequency bins, because with a CTR of a few percent equal-width bins leave all but
    the first one nearly empty.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if len(p) == 0:
        return pd.DataFrame(columns=["bin", "n", "predicted", "observed"])
    order = np.argsort(p, kind="stable")
    bins = np.empty(len(p), dtype=np.int64)
    bins[order] = np.arange(len(p)) * n_bins // len(p)
    df = pd.DataFrame({"bin": bins, "p": p, "y": y})
    out = df.groupby("bin").agg(n=("y", "size"), predicted=("p", "mean"), observed=("y", "mean"))
    return out.reset_index()


def expected_calibration_error(
    labels: np.ndarray, probabilities: np.ndarray, n_bins: int = 10
) -> float:
    """ECE: the bins' |observed - predicted|, weighted by their share of rows (0 = perfect)."""
    bins = calibration_bins(labels, probabilities, n_bins)
    if bins.empty:
        return float("nan")
    weights = bins["n"] / bins["n"].sum()
    return float((weights * (bins["observed"] - bins["predicted"]).abs()).sum())


def catalogue_coverage(lists: Mapping[int, Iterable[int]], n_catalogue: int) -> float:
    """Share of the catalogue that appears in at least one of the recommendation ``lists``."""
    if n_catalogue <= 0:
        return float("nan")
    seen: set[int] = set()
    for items in lists.values():
        seen.update(int(i) for i in items)
    return len(seen) / n_catalogue


def popularity_percentiles(click_counts: Mapping[int, float], catalogue: np.ndarray) -> dict:
    """Per catalogue item: its popularity percentile in (0, 1], 1 = the most clicked item.

    Ties share their average rank, so the many never-clicked items sit together at the bottom.
    """
    counts = pd.Series(np.asarray(catalogue, dtype=np.int64)).map(
        lambda i: click_counts.get(int(i), 0.0)
    )
    pct = counts.rank(method="average", pct=True)
    return dict(zip(np.asarray(catalogue, dtype=np.int64).tolist(), pct.tolist(), strict=True))


def popularity_bias(lists: Mapping[int, Iterable[int]], percentiles: Mapping[int, float]) -> float:
    """Mean popularity percentile of the recommended items (0.5 ~ the catalogue's median item;
    near 1 = the lists are made of the head of the catalogue). Unknown items count as 0."""
    values = [percentiles.get(int(i), 0.0) for items in lists.values() for i in items]
    return float(np.mean(values)) if values else float("nan")
