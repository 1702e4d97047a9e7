"""Promotion gate decisions, without MLflow."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.settings import GateSettings, Settings
from training.gate import compare, decide, measure_latency_ms, sanity_failures

GATE = GateSettings(metric="auc", margin=0.01, max_ndcg_drop=0.02)
GOOD_SCORES = np.linspace(0.01, 0.3, 500)


POPULARITY = {"auc": 0.55, "ndcg_at_10": 0.4}


def test_first_model_becomes_champion_when_it_beats_popularity() -> None:
    v = decide([], {"auc": 0.6}, None, GATE, baseline=POPULARITY)
    assert v.promote and "first model" in v.reason


def test_better_by_margin_is_promoted_worse_or_equal_is_not() -> None:
    champion = {"auc": 0.60, "ndcg_at_10": 0.55}
    assert decide([], {"auc": 0.615, "ndcg_at_10": 0.55}, champion, GATE).promote
    same = decide([], dict(champion), champion, GATE)
    assert not same.promote and "margin" in same.reason
    worse = decide([], {"auc": 0.58, "ndcg_at_10": 0.56}, champion, GATE)
    assert not worse.promote and worse.decision == "rejected"


def test_auc_win_with_an_ndcg_collapse_is_rejected() -> None:
    wins, why = compare({"auc": 0.65, "ndcg_at_10": 0.50}, {"auc": 0.60, "ndcg_at_10": 0.55},
                        GATE)
    assert not wins and "ndcg_at_10" in why


def test_logloss_gate_wants_lower() -> None:
    gate = GateSettings(metric="logloss", margin=0.001)
    assert compare({"logloss": 0.190}, {"logloss": 0.195}, gate)[0]
    assert not compare({"logloss": 0.196}, {"logloss": 0.195}, gate)[0]


def test_sanity_failures_block_even_a_better_model() -> None:
    v = decide(["3 NaN/inf holdout scores"], {"auc": 0.9}, {"auc": 0.5}, GATE)
    assert not v.promote and "NaN" in v.reason
    assert not decide(["x"], {"auc": 0.9}, None, GATE).promote  # not even the first model


@pytest.mark.parametrize(
    ("scores", "latency", "problems", "expected"),
    [
        (GOOD_SCORES, 1.0, [], []),
        (np.r_[GOOD_SCORES, np.nan], 1.0, [], ["1 NaN/inf"]),
        (np.full(500, 0.1), 1.0, [], ["score spread", "distinct scores"]),
        (GOOD_SCORES, 9.5, [], ["p99 9.50 ms > 8.0 ms"]),
        (GOOD_SCORES, 1.0, ["ranker v3: unreadable"], ["unreadable"]),
        (np.array([]), 1.0, [], ["no holdout scores"]),
    ],
)
def test_sanity_checks(scores, latency, problems, expected) -> None:
    failures = sanity_failures(scores, latency, problems, GateSettings())
    assert len(failures) == len(expected), failures
    for failure, text in zip(failures, expected, strict=True):
        assert text in failure


def test_broken_champion_is_replaced_by_a_sane_challenger() -> None:
    v = decide([], {"auc": 0.57}, None, GATE, champion_problem="booster unreadable",
               baseline=POPULARITY)
    assert v.promote and "unusable" in v.reason


def test_latency_is_measured() -> None:
    out = measure_latency_ms(lambda x: x.sum(), np.ones((500, 9)), repeats=20)
    assert 0 < out["median_ms"] <= out["p99_ms"] < 50
    assert 0 <= out["cpu_median_ms"] <= out["cpu_p99_ms"] < 50


def test_gate_settings_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("RECSTACK_GATE__MARGIN", "0.05")
    monkeypatch.setenv("RECSTACK_GATE__METRIC", "ndcg_at_10")
    monkeypatch.setenv("RECSTACK_TRAINER__EVERY_SIM_DAYS", "2")
    cfg = Settings()
    assert cfg.gate.margin == 0.05 and cfg.gate.metric == "ndcg_at_10"
    assert cfg.trainer.every_sim_days == 2.0
    monkeypatch.setenv("RECSTACK_GATE__METRIC", "accuracy")
    with pytest.raises(ValueError):
        Settings()
