"""The drift experiment's figures from a synthetic timeline: detection delay, recovery
fraction and time, for the live arm and the frozen counterfactual."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from experiments.drift.drift import DriftConfig, summarize

T0 = dt.datetime(2026, 1, 6, tzinfo=dt.UTC)


def _timeline() -> pd.DataFrame:
    rows = []
    for hour in range(96):
        live = 0.5 if hour < 24 else (0.3 if hour < 40 else 0.49)  # shift at 24h, fixed at 40h
        frozen = 0.5 if hour < 24 else 0.3
        for arm, frac in (("live", live), ("frozen", frozen)):
            rows.append({"arm": arm, "hour": hour, "impressions": 100, "clicks": 5,
                         "expected_clicks": 10 * frac, "oracle_clicks": 10.0})
    return pd.DataFrame(rows)


def test_summary_figures() -> None:
    at = lambda h: (T0 + dt.timedelta(hours=h)).isoformat()  # noqa: E731
    marks = [{"kind": "shift", "at": at(24)}, {"kind": "alert", "at": at(10)},
             {"kind": "alert", "at": at(30)}, {"kind": "retrain", "at": at(30)},
             {"kind": "promotion", "at": at(40)}]
    out = summarize(_timeline(), marks, T0 + dt.timedelta(hours=24), T0, DriftConfig())
    assert out["alerts_before_shift"] == 1
    assert out["drift_detection_delay_sim_days"] == pytest.approx(6 / 24, abs=1e-3)
    assert out["retrains"] == 1 and out["promotions"] == 1
    assert out["live_pre_shift_fraction_of_oracle"] == pytest.approx(0.5)
    assert out["live_ctr_recovery_fraction"] == pytest.approx(0.98)
    assert out["frozen_ctr_recovery_fraction"] == pytest.approx(0.6)
    # live: the 6-hour mean is back over 0.45 once 0.49 dominates the window (hour 43-45)
    assert 19 / 24 <= out["live_ctr_recovery_time_sim_days"] <= 22 / 24
    assert out["frozen_ctr_recovery_time_sim_days"] is None
