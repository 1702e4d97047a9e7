"""The offline protocol: a temporal split without leakage, seen items left out, metrics that
match a hand computation, and models that learn a planted structure beating popularity."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from typer.testing import CliRunner

from app.cli import app
from recstack.settings import Settings
from simulator.generate import simulate
from training.offline import evaluate_offline, list_metrics, split_at_time, top_items

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def _events(rows: list[tuple[int, int, str, int]]) -> pd.DataFrame:
    """(user, item, event type, hour) rows."""
    return pd.DataFrame({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
        "event_type": [r[2] for r in rows],
        "ts": [T0 + pd.Timedelta(hours=r[3]) for r in rows],
    })


def test_the_split_keeps_the_test_out_of_train_and_targets_new_items() -> None:
    ev = _events([(1, 10, "click", 0), (1, 11, "impression", 1), (1, 11, "click", 5),
                  (1, 12, "click", 6), (2, 10, "click", 2), (3, 13, "click", 7),
                  (2, 10, "click", 8)])
    split = split_at_time(ev, np.array([10, 11, 12, 13, 14]), at=T0 + pd.Timedelta(hours=5))
    assert (split.train["ts"] < split.at).all() and len(split.train) == 3
    # user 1: 11 was shown before T (not a target), 12 is new; user 2 re-clicked 10 (not new);
    # user 3 has no train event (not evaluated).
    assert {u: t.tolist() for u, t in split.targets.items()} == {1: [12]}
    assert split.item_ids.tolist() == [10, 11, 12, 13, 14]


def test_top_items_leave_the_seen_columns_out() -> None:
    scores = np.array([[5.0, 4.0, 3.0, 2.0], [1.0, 2.0, 3.0, 4.0]], np.float32)
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 1]], np.float32))
    assert top_items(scores, seen, 2).tolist() == [[1, 2], [2, 1]]


def test_items_a_model_cannot_rank_are_not_listed_and_never_hit() -> None:
    """The served pipeline scores only its candidates (-inf elsewhere): a short list is padded
    with -1, which no target matches and coverage does not count."""
    scores = np.array([[-np.inf, 2.0, -np.inf, 1.0]], np.float32)
    seen = sp.csr_matrix(np.array([[0, 0, 0, 1]], np.float32))
    top = top_items(scores, seen, 3)
    assert top.tolist() == [[1, -1, -1]]
    m = list_metrics(top, [np.array([0, 2])], n_items=4)
    assert m["recall@50"] == 0.0 and m["coverage@10"] == 0.25


def test_metrics_match_a_hand_computation() -> None:
    top = np.zeros((2, 50), np.int64)
    top[0, :3] = [7, 3, 9]  # targets 3 and 9: hits at ranks 2 and 3
    top[1, :] = np.arange(100, 150)
    top[1, 11] = 5  # target 5 at rank 12: outside the top 10, inside the top 50
    m = list_metrics(top, [np.array([3, 9]), np.array([5])], n_items=200)
    dcg = 1 / math.log2(3) + 1 / math.log2(4)
    ideal = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((dcg / ideal + 0) / 2)
    assert m["recall@10"] == pytest.approx((1.0 + 0.0) / 2)
    assert m["recall@50"] == pytest.approx(1.0)
    assert m["hr@10"] == pytest.approx(0.5)
    assert m["mrr@50"] == pytest.approx((1 / 2 + 1 / 12) / 2)
    distinct = len(set(top[0, :10]) | set(top[1, :10]))
    assert m["coverage@10"] == pytest.approx(distinct / 200)


def _planted(seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Two taste groups with disjoint item sets, plus globally popular items everyone clicks:
    a model that learns co-clicks finds the group's other items, popularity does not."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(300):
        group = np.arange(100, 140) if user % 2 else np.arange(200, 240)
        for hour, item in enumerate(rng.choice(group, 12, replace=False)):
            rows.append((user, int(item), "click", int(hour)))
        for hour, item in enumerate(rng.choice(np.arange(10), 3, replace=False)):
            rows.append((user, int(item), "click", int(hour) + 20))  # popular, late
    return _events(rows), np.arange(0, 300)


def test_models_that_learn_beat_popularity_on_a_planted_structure() -> None:
    events, catalogue = _planted()
    report = evaluate_offline(events, catalogue, at=T0 + pd.Timedelta(hours=8))
    ndcg = {r.name: r.metrics["ndcg@10"] for r in report.results}
    assert set(ndcg) == {"popularity", "item_knn", "als", "candidates"}
    for name in ("item_knn", "als", "candidates"):
        assert ndcg[name] > 1.5 * ndcg["popularity"], ndcg
    assert report.n_users == 300 and report.n_items == 300


def test_recstack_evaluate_prints_the_table_and_writes_the_report(settings: Settings) -> None:
    simulate(settings)
    result = CliRunner().invoke(app, ["evaluate", "--test-fraction", "0.3",
                                      "--model", "popularity", "--model", "candidates"])
    assert result.exit_code == 0, result.output
    assert "| popularity |" in result.output and "| candidates |" in result.output
    (folder,) = settings.reports_dir.glob("evaluate-*")
    summary = json.loads((folder / "summary.json").read_text())
    assert [r["name"] for r in summary["results"]] == ["popularity", "candidates"]
    assert 0 <= summary["results"][0]["metrics"]["ndcg@10"] <= 1
    assert "Temporal split" in (folder / "report.md").read_text()
    bad = CliRunner().invoke(app, ["evaluate", "--model", "nope"])
    assert bad.exit_code != 0 and "unknown model" in bad.output
