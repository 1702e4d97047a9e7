"""Honest offline evaluation on the holdout day: the ranker and every baseline, side by side.

In:  a :class:`Holdout` — the held-out day's impressions (features as of their time and a
     candidate score from a model that never saw that day), the events before and on that
     day, every user's and item's features as of the day's start, the popular and fresh lists
     as they were known before the day — and the trained booster.
Out: :class:`Evaluation`: flat metrics (logged to MLflow), the Markdown table printed by
     ``recstack train`` and logged as an artifact, and the calibration bins.

Rows of the table: the ranker (stage 2 over the merged candidates), the candidate model alone
(its score, no ranker), popularity, random, a constant base rate (for log loss), and the
logged order as a reference that no model can serve (the policy's own positions, which the
simulated position bias rewards).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recstack.schemas import (
    CANDIDATE_SCORE_FEATURE,
    CROSS_FEATURES,
    RANKER_FEATURES,
    EventType,
    cross_code,
)
from training import evaluate as ev
from training.candidates import CandidateModel, build_index, search
from training.datasets import NO_CATEGORY, Snapshot
from training.offline import Scorer, Split
from training.sources import SOURCES, merge_candidates

if TYPE_CHECKING:
    import faiss

TOP_N = 20
RECALL_KS = (100, 500)
MAX_LIST_USERS = 1000  # users whose full top-20 lists are built (coverage, bias, Recall@20)


@dataclass
class Holdout:
    """Everything the evaluation may know about the held-out day (see module docstring)."""

    day: dt.date
    rows: pd.DataFrame  # label, request_id, position, user_id, item_id, the ranker's features
    train_events: pd.DataFrame  # events of days < day (user_id, item_id, event_type)
    day_events: pd.DataFrame  # events of the held-out day
    prior_model: CandidateModel  # fit on train_events only
    catalogue: np.ndarray  # every item id
    popular: list[int]  # most clicked before the day, first
    fresh: list[int]  # released in the week before the day, newest first
    features: Snapshot  # stored features of users, items, user x category at the day's start
    item_categories: pd.Series  # category by item_id (the catalogue)
    feature_names: list[str] = field(default_factory=lambda: list(RANKER_FEATURES))


@dataclass
class Evaluation:
    metrics: dict[str, float]
    table_md: str
    calibration: pd.DataFrame
    notes: list[str] = field(default_factory=list)


def popular_before(train_events: pd.DataFrame) -> list[int]:
    """Items by descending clicks before the holdout day (the popular list serving had)."""
    clicks = train_events[train_events["event_type"] == EventType.CLICK.value]
    return clicks["item_id"].value_counts().index.astype("int64").tolist()


def ranker_scores_for(
    predict: Callable[[np.ndarray], np.ndarray], holdout: Holdout, users: np.ndarray,
    items: list[np.ndarray],
) -> list[np.ndarray]:
    """Score each user's candidate items the way serving does: user features broadcast, item
    features by id, the user's row of each item's category, the crosses of codes, the prior
    model's dot product as CANDIDATE_SCORE_FEATURE; columns are ``holdout.feature_names``."""
    names = holdout.feature_names
    lengths = [len(i) for i in items]
    flat_items = np.concatenate(items) if items else np.array([], dtype=np.int64)
    flat_users = np.repeat(users, lengths)
    cats = (holdout.item_categories.reindex(flat_items).fillna(NO_CATEGORY).to_numpy(np.int64)
            if len(flat_items) else np.array([], dtype=np.int64))
    x = holdout.features.for_pairs(names, flat_users, flat_items, cats)
    for name, (a, b) in CROSS_FEATURES.items():
        if name in names:
            x[:, names.index(name)] = cross_code(x[:, names.index(a)], x[:, names.index(b)])
    if CANDIDATE_SCORE_FEATURE in names:
        x[:, names.index(CANDIDATE_SCORE_FEATURE)] = holdout.prior_model.score(
            flat_users, flat_items)
    scores = predict(x) if len(x) else np.array([])
    return np.split(np.asarray(scores), np.cumsum(lengths)[:-1]) if lengths else []


def served_fitter(holdout: Holdout, predict: Callable[[np.ndarray], np.ndarray],
                  n_candidates: int) -> Callable[..., Scorer]:
    """The served pipeline as a model of the offline protocol (training/offline.py), for a
    split at the holdout day's start: stage 1 as serving merges it (the prior model's ANN
    top ``n_candidates`` for users it knows, then fresh and popular items), stage 2 the
    ranker over those candidates with the features as of the split. Items outside a user's
    candidates score -inf, so a list holds only what serving could have shown."""

    def fit(split: Split, clicks: Any, seed: int) -> Scorer:
        index = build_index(holdout.prior_model.item_embeddings)
        known = set(holdout.prior_model.user_ids.tolist())

        def scores(rows: np.ndarray) -> np.ndarray:
            users = split.user_ids[rows]
            ann = search(holdout.prior_model, index, users, n_candidates)[0] if len(users) else []
            cands = [np.asarray(merge_candidates(row if int(u) in known else [],
                                                 holdout.popular, holdout.fresh,
                                                 n_candidates)[0], dtype=np.int64)
                     for u, row in zip(users, ann, strict=True)]
            out = np.full((len(users), len(split.item_ids)), -np.inf, dtype=np.float32)
            for r, (items, s) in enumerate(zip(cands, ranker_scores_for(predict, holdout, users,
                                                                        cands), strict=True)):
                cols = np.searchsorted(split.item_ids, items)
                ok = (cols < len(split.item_ids)) & (split.item_ids[np.minimum(
                    cols, len(split.item_ids) - 1)] == items)
                out[r, cols[ok]] = np.asarray(s, dtype=np.float32)[ok]
            return out

        return scores

    return fit


def evaluate(
    holdout: Holdout,
    predict: Callable[[np.ndarray], np.ndarray],
    negative_rate: float,
    base_rate: float,
    n_candidates: int,
    seed: int,
) -> Evaluation:
    """Every row of the table on the holdout day; ``predict`` maps a matrix of
    ``holdout.feature_names`` to the booster's (uncalibrated) probabilities."""
    rows = holdout.rows
    y = rows["label"].to_numpy()
    raw = np.asarray(predict(rows[holdout.feature_names].to_numpy(np.float32)), dtype=np.float64)
    prob = ev.calibrate(raw, negative_rate)
    pop_counts = dict(zip(holdout.popular, range(len(holdout.popular), 0, -1), strict=True))
    # One random stream for every random baseline, drawn by the three phases in this order.
    rng = np.random.default_rng(seed)
    m = _impression_metrics(rows, y, raw, prob, pop_counts, base_rate, rng)
    retrieval = _Retrieval.of(holdout)
    m.update(_candidate_recall(holdout, retrieval, n_candidates, rng))
    m.update(_list_metrics(holdout, predict, retrieval, pop_counts, n_candidates, rng))
    calibration = ev.calibration_bins(y, prob)
    return Evaluation({k: float(v) for k, v in m.items()}, table_markdown(m, holdout, len(rows)),
                      calibration)


def _impression_metrics(
    rows: pd.DataFrame, y: np.ndarray, raw: np.ndarray, prob: np.ndarray,
    pop_counts: dict[int, int], base_rate: float, rng: np.random.Generator,
) -> dict[str, float]:
    """Per impression of the logged lists: each model's ranking metrics, the ranker's and the
    constant base rate's calibration, the day's CTR and the ranker's mean prediction."""
    pop_scores = np.array([pop_counts.get(int(i), 0) for i in rows["item_id"]], dtype=np.float64)
    return {
        **ev.ranking_metrics("ranker", rows, raw, prob),
        **ev.ranking_metrics("candscore", rows, rows[CANDIDATE_SCORE_FEATURE].to_numpy(), None),
        **ev.ranking_metrics("popularity", rows, pop_scores, None),
        **ev.ranking_metrics("random", rows, rng.random(len(rows)), None),
        **ev.ranking_metrics("logged", rows, -rows["position"].to_numpy(np.float64), None),
        "ranker_ece": ev.expected_calibration_error(y, prob),
        "base_rate_logloss": ev.log_loss(y, np.full(len(y), base_rate)),
        "base_rate_ece": ev.expected_calibration_error(y, np.full(len(y), base_rate)),
        "holdout_ctr": float(y.mean()),
        "ranker_mean_predicted_ctr": float(prob.mean()),
    }


@dataclass
class _Retrieval:
    """What both recall phases need: the day's clicked items per user, the prior model's ANN
    index, and the users it knows (the others get popular + fresh candidates only)."""

    relevant: dict[int, set[int]]
    index: faiss.Index
    known: set[int]

    @classmethod
    def of(cls, holdout: Holdout) -> _Retrieval:
        clicks = holdout.day_events[holdout.day_events["event_type"] == EventType.CLICK.value]
        relevant = {int(u): set(map(int, s)) for u, s in clicks.groupby("user_id")["item_id"]}
        index = build_index(holdout.prior_model.item_embeddings)
        return cls(relevant, index, set(holdout.prior_model.user_ids.tolist()))


def _candidate_recall(
    holdout: Holdout, retrieval: _Retrieval, n_candidates: int, rng: np.random.Generator
) -> dict[str, float]:
    """Stage 1: Recall@K of the merged candidate set against the day's clicks (and of the
    popular and random lists), and the merged set's share of each source."""
    m: dict[str, float] = {}
    relevant = retrieval.relevant
    k_max = max(n_candidates, *RECALL_KS)
    clickers = np.fromiter(relevant, dtype=np.int64, count=len(relevant))
    ann = (search(holdout.prior_model, retrieval.index, clickers, k_max)[0]
           if len(clickers) else [])
    for k in RECALL_KS:
        merged, shares = {}, []
        for u, row in zip(clickers, ann, strict=True):
            hits = row if int(u) in retrieval.known else []  # unknown users: popular + fresh only
            ids, src = merge_candidates(hits, holdout.popular, holdout.fresh, k)
            merged[int(u)] = ids
            shares.append(src)
        m[f"candidates_recall_at_{k}"] = ev.recall_at_k(merged, relevant, k)
        m[f"popularity_recall_at_{k}"] = ev.recall_at_k(
            {u: holdout.popular[:k] for u in relevant}, relevant, k)
        m[f"random_recall_at_{k}"] = ev.recall_at_k(
            {u: rng.choice(holdout.catalogue, min(k, len(holdout.catalogue)), replace=False)
             .tolist() for u in relevant}, relevant, k)
        flat = np.concatenate([np.asarray(s, dtype=object) for s in shares]) if shares else []
        for source in SOURCES:
            share = float(np.mean(np.asarray(flat) == source)) if len(flat) else math.nan
            m[f"candidates_at_{k}_share_{source}"] = share
    return m


def _list_metrics(
    holdout: Holdout, predict: Callable[[np.ndarray], np.ndarray], retrieval: _Retrieval,
    pop_counts: dict[int, int], n_candidates: int, rng: np.random.Generator,
) -> dict[str, float]:
    """Top-20 lists of each model for a sample of the day's users: Recall@20, coverage,
    popularity bias, and the sources of the ranker's lists."""
    day_users = np.unique(holdout.rows["user_id"].to_numpy(np.int64))
    if len(day_users) > MAX_LIST_USERS:
        day_users = np.sort(rng.choice(day_users, MAX_LIST_USERS, replace=False))
    lists, ranker_sources = _top_lists(holdout, predict, retrieval, day_users, n_candidates, rng)
    m: dict[str, float] = {}
    pct = ev.popularity_percentiles(
        {i: c for i, c in pop_counts.items()}, holdout.catalogue)
    rel_sample = {u: retrieval.relevant[u] for u in map(int, day_users)
                  if u in retrieval.relevant}
    for name, per_user in lists.items():
        m[f"{name}_recall_at_{TOP_N}"] = ev.recall_at_k(per_user, rel_sample, TOP_N)
        m[f"{name}_coverage_at_{TOP_N}"] = ev.catalogue_coverage(per_user, len(holdout.catalogue))
        m[f"{name}_popbias_at_{TOP_N}"] = ev.popularity_bias(per_user, pct)
    for source in SOURCES:
        m[f"ranker_top{TOP_N}_share_{source}"] = (
            float(np.mean(np.asarray(ranker_sources) == source)) if ranker_sources else math.nan)
    return m


def _top_lists(
    holdout: Holdout, predict: Callable[[np.ndarray], np.ndarray], retrieval: _Retrieval,
    day_users: np.ndarray, n_candidates: int, rng: np.random.Generator,
) -> tuple[dict[str, dict[int, list[int]]], list[str]]:
    """Each model's top-20 list per user (the ranker and the candidate model over the user's
    merged candidates, popularity, random), and the source of every item the ranker listed."""
    ann_u = (search(holdout.prior_model, retrieval.index, day_users, n_candidates)[0]
             if len(day_users) else [])
    cand_items, cand_src = [], []
    for u, row in zip(day_users, ann_u, strict=True):
        ids, src = merge_candidates(row if int(u) in retrieval.known else [], holdout.popular,
                                    holdout.fresh, n_candidates)
        cand_items.append(np.asarray(ids, dtype=np.int64))
        cand_src.append(np.asarray(src, dtype=object))
    ranker_s = ranker_scores_for(predict, holdout, day_users, cand_items)
    lists: dict[str, dict[int, list[int]]] = {"ranker": {}, "candscore": {}, "popularity": {},
                                                "random": {}}
    ranker_sources = []
    for u, items, src, rs in zip(day_users, cand_items, cand_src, ranker_s, strict=True):
        cs = holdout.prior_model.score(np.full(len(items), u), items)
        top_r = np.argsort(-rs, kind="stable")[:TOP_N]
        lists["ranker"][int(u)] = items[top_r].tolist()
        ranker_sources.extend(src[top_r].tolist())
        lists["candscore"][int(u)] = items[np.argsort(-cs, kind="stable")[:TOP_N]].tolist()
        lists["popularity"][int(u)] = holdout.popular[:TOP_N]
        lists["random"][int(u)] = rng.choice(holdout.catalogue, TOP_N, replace=False).tolist()
    return lists, ranker_sources


def _f(value: float | None, digits: int = 3) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def table_markdown(m: dict[str, float], holdout: Holdout, n_rows: int) -> str:
    """The evaluation table (Markdown), one row per model, plus what each column means."""
    g = m.get
    head = ("| model | AUC | log loss | NDCG@10 | ECE | Recall@20 | Recall@100 | Recall@500 "
            "| coverage@20 | pop. bias@20 |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for label, key, has_p, recall_key in (
        ("ranker (LightGBM over merged candidates)", "ranker", True, None),
        ("candidate model only (dot product)", "candscore", False, "candidates"),
        ("popularity", "popularity", False, "popularity"),
        ("random", "random", False, "random"),
    ):
        lines.append(
            f"| {label} | {_f(g(f'{key}_auc'))} | {_f(g(f'{key}_logloss') if has_p else None)} "
            f"| {_f(g(f'{key}_ndcg_at_10'))} | {_f(g(f'{key}_ece') if has_p else None, 4)} "
            f"| {_f(g(f'{key}_recall_at_{TOP_N}'))} "
            f"| {_f(g(f'{recall_key}_recall_at_100') if recall_key else None)} "
            f"| {_f(g(f'{recall_key}_recall_at_500') if recall_key else None)} "
            f"| {_f(g(f'{key}_coverage_at_{TOP_N}'))} | {_f(g(f'{key}_popbias_at_{TOP_N}'))} |"
        )
    lines.append(f"| constant base rate (train CTR) | — | {_f(g('base_rate_logloss'))} | — "
                 f"| {_f(g('base_rate_ece'), 4)} | — | — | — | — | — |")
    lines.append(f"| logged order (reference, not servable) | {_f(g('logged_auc'))} | — "
                 f"| {_f(g('logged_ndcg_at_10'))} | — | — | — | — | — | — |")
    shares = ", ".join(f"{s} {_f(g(f'candidates_at_500_share_{s}'))}" for s in SOURCES)
    top_shares = ", ".join(f"{s} {_f(g(f'ranker_top{TOP_N}_share_{s}'))}" for s in SOURCES)
    lines += [
        "",
        (f"Holdout: {holdout.day.isoformat()} ({n_rows} impressions, CTR "
         f"{_f(g('holdout_ctr'), 4)}; mean predicted {_f(g('ranker_mean_predicted_ctr'), 4)}); "
         "every model was fit on earlier days only."),
        ("AUC / log loss / NDCG@10 / ECE: per impression of the logged lists (NDCG per request "
         "with a click and two or more items; — when no request has two, as in imported "
         "ratings, for which `recstack evaluate` is the protocol). Recall@K: the day's clicks "
         "retrieved in a user's top K. Coverage: share "
         "of the catalogue in any top-20 list. Pop. bias: mean popularity percentile of listed "
         "items (0.5 = median item, 1 = the head)."),
        f"Merged candidates (K=500) by source: {shares}; ranker top-20 by source: {top_shares}.",
        ("Class imbalance: negatives are down-sampled to a fixed ratio on training days only; "
         "probabilities are corrected by the sampling rate (odds x rate), which ECE checks."),
    ]
    return "\n".join(lines)
