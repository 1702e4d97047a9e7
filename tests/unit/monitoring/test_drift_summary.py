"""The drift experiment's figures from a synthetic timeline: detection delay, recovery
fraction and time, for the live arm and the frozen counterfactual."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pytest

from app.experiments.drift.drift import DriftConfig, summarize

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


def test_recovery_time_is_the_first_sustained_return_not_a_brief_crossing() -> None:
    """Live is back at 0.49 for hours 40-46 only, drops again, and is back for good from hour
    60: a 6-hour mean crosses 90% of the pre-shift level briefly near hour 45 and for good
    near hour 65; the recovery time is the second (it must hold 6 simulated hours)."""
    rows = []
    for hour in range(96):
        live = 0.5 if hour < 24 else (0.49 if 40 <= hour < 47 or hour >= 60 else 0.3)
        rows.append({"arm": "live", "hour": hour, "impressions": 100, "clicks": 5,
                     "expected_clicks": 10 * live, "oracle_clicks": 10.0})
        rows.append({"arm": "frozen", "hour": hour, "impressions": 100, "clicks": 5,
                     "expected_clicks": 5.0, "oracle_clicks": 10.0})
    out = summarize(pd.DataFrame(rows), [], T0 + dt.timedelta(hours=24), T0, DriftConfig())
    assert (64 - 24) / 24 <= out["live_ctr_recovery_time_sim_days"] <= (66 - 24) / 24
    assert out["frozen_ctr_recovery_time_sim_days"] == 0.0  # never dipped


def _segment_timeline() -> pd.DataFrame:
    """A third of the oracle's clicks come from users the scenario affects: they drop from 0.5
    to 0.2 at the shift (hour 48); live brings them back to 0.45 at hour 70. The others stay
    at 0.5, except a warm-up slope before hour 36 (the pre-shift window must not see it)."""
    rows = []
    for hour in range(96):
        rest = 0.6 if hour < 36 else 0.5
        hit = 0.5 if hour < 48 else 0.2
        for arm in ("live", "frozen"):
            mine = 0.45 if (arm == "live" and hour >= 70) else hit
            rows.append({"arm": arm, "hour": hour, "impressions": 100, "clicks": 5,
                         "expected_clicks": 10 * rest + 5 * mine, "oracle_clicks": 15.0,
                         "affected_expected_clicks": 5 * mine, "affected_oracle_clicks": 5.0})
    return pd.DataFrame(rows)


def test_summary_splits_the_affected_segment_from_the_rest() -> None:
    shift = T0 + dt.timedelta(hours=48)
    out = summarize(_segment_timeline(), [], shift, T0, DriftConfig())
    for arm in ("live", "frozen"):
        assert out[f"{arm}_unaffected_pre_shift_fraction_of_oracle"] == pytest.approx(0.5)
        assert out[f"{arm}_unaffected_ctr_recovery_fraction"] == pytest.approx(1.0)
        assert out[f"{arm}_affected_pre_shift_fraction_of_oracle"] == pytest.approx(0.5)
        # the 12 h before the pre-shift window (hours 24-35) are still on the warm-up slope
        assert out[f"{arm}_pre_shift_previous_12h_fraction_of_oracle"] == pytest.approx(
            (10 * 0.6 + 5 * 0.5) / 15, abs=1e-4)
    assert out["live_affected_ctr_recovery_fraction"] == pytest.approx(0.9)
    # The headline segment's own recovery: its 6-hour mean passes 0.45 (90% of 0.5) once the
    # window is all 0.45 (hour 75) and stays; the frozen arm's segment never recovers.
    assert out["live_affected_ctr_recovery_time_sim_days"] == pytest.approx((75 - 48) / 24,
                                                                              abs=1.01 / 24)
    assert out["frozen_affected_ctr_recovery_time_sim_days"] is None
    assert out["frozen_affected_ctr_recovery_fraction"] == pytest.approx(0.4)
    # the whole population's ratio mixes both: (10*0.5 + 5*0.45) / 15 over 0.5
    assert out["live_ctr_recovery_fraction"] == pytest.approx((5 + 2.25) / 15 / 0.5, abs=1e-3)


def test_summary_without_segment_columns_has_no_segment_figures() -> None:
    out = summarize(_timeline(), [], T0 + dt.timedelta(hours=24), T0, DriftConfig())
    assert not [k for k in out if "affected" in k]


def test_config_check_keeps_a_watched_pre_shift_day_and_a_recovery_window() -> None:
    DriftConfig().check()  # the defaults fit
    with pytest.raises(ValueError, match="shift_day"):
        DriftConfig(burn_in_days=3).check()  # the shift would fall into the burn-in
    with pytest.raises(ValueError, match="shift_day"):
        DriftConfig(live_days=4).check()  # no live day after the shift


def test_affected_users_are_the_shifted_segment_only() -> None:
    from app.experiments.drift.drift import affected_users, shifted_scenario
    from recstack.settings import SimSettings
    from simulator.world import World

    world = World.generate(SimSettings(n_users=300, n_items=80, n_categories=8, seed=3, days=2))
    taste = shifted_scenario("taste-shift", 1)
    mask = affected_users(taste, world, 1)
    assert mask.any() and not mask.all()
    assert (mask == world.segment_mask("us")).all()
    assert not affected_users(taste, world, 0).any()  # before the shift's day
    assert not affected_users(shifted_scenario("hot-item", 1), world, 1).any()
