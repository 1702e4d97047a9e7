"""Burn-rate math behind the SLO alerts."""

from __future__ import annotations

import pytest

from monitoring.slo import FAST, SIM_SCALE, SLOW, budget_spent, burn_rate, firing


def test_burn_rate_is_error_ratio_over_budget() -> None:
    assert burn_rate(0.01, 0.99) == pytest.approx(1.0)
    assert burn_rate(0.144, 0.99) == pytest.approx(14.4)
    with pytest.raises(ValueError):
        burn_rate(0.1, 1.0)


def test_fast_and_slow_windows_spend_2_and_5_percent_of_a_month() -> None:
    assert budget_spent(FAST.factor, FAST.long_s) == pytest.approx(0.02)
    assert budget_spent(SLOW.factor, SLOW.long_s) == pytest.approx(0.05)


def test_alert_needs_both_windows() -> None:
    assert firing(FAST, long_ratio=0.2, short_ratio=0.2)
    assert not firing(FAST, long_ratio=0.2, short_ratio=0.0)  # the burn has stopped
    assert not firing(FAST, long_ratio=0.03, short_ratio=0.2)  # a blip, not a burn
    assert firing(SLOW, long_ratio=0.07, short_ratio=0.07)
    assert not firing(SLOW, long_ratio=0.05, short_ratio=0.07)


def test_scaled_windows_match_the_sim_rules() -> None:
    fast = FAST.scaled(SIM_SCALE)
    slow = SLOW.scaled(SIM_SCALE)
    assert (fast.long_s, fast.short_s) == (300.0, 25.0)
    assert (slow.long_s, slow.short_s) == (1800.0, 150.0)
    assert fast.factor == FAST.factor
