"""The A/B statistics: delta-method CTR, the z-test, power, SRM and the decision rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.experiments.online import stats


def test_one_impression_per_user_reduces_to_the_binomial() -> None:
    rng = np.random.default_rng(0)
    clicks = (rng.random(20_000) < 0.1).astype(int)
    s = stats.ratio_stats(clicks, np.ones_like(clicks))
    p = clicks.mean()
    assert s.ctr == pytest.approx(p)
    assert s.se == pytest.approx(math.sqrt(p * (1 - p) / 20_000), rel=1e-3)
    assert s.ci_low < p < s.ci_high


def test_correlated_impressions_widen_the_interval() -> None:
    # Users with their own click rate: the user-level (delta) SE must exceed the naive one.
    rng = np.random.default_rng(1)
    rates = rng.beta(1, 19, size=3000)
    imps = np.full(3000, 20)
    clicks = rng.binomial(imps, rates)
    s = stats.ratio_stats(clicks, imps)
    naive = math.sqrt(s.ctr * (1 - s.ctr) / imps.sum())
    assert s.se > 1.3 * naive


def test_compare_lift_and_its_interval() -> None:
    c = stats.ArmStats(1000, 10_000, 500, 0.05, 0.002, 0, 0)
    t = stats.ArmStats(1000, 10_000, 600, 0.06, 0.002, 0, 0)
    cmp = stats.compare(c, t, 0.05)
    assert cmp.z == pytest.approx(0.01 / math.sqrt(2 * 0.002**2))
    assert cmp.significant and cmp.p_value < 0.001
    assert cmp.lift == pytest.approx(0.2)
    assert cmp.lift_ci_low < 0.2 < cmp.lift_ci_high and cmp.lift_ci_low > 0


def test_power_calculation_is_consistent() -> None:
    # At the required sample size the achieved power is the target.
    ctr, se, users = 0.05, 0.001, 2000
    n = stats.required_users(ctr, se, users, mde=0.05, alpha=0.05, power=0.8)
    se_at_n = se * math.sqrt(users / n)
    power = stats.achieved_power(ctr, math.sqrt(2) * se_at_n, 0.05, 0.05)
    assert power == pytest.approx(0.8, abs=0.01)


def test_srm_flags_a_skewed_split_only() -> None:
    assert stats.srm([50_100, 49_900], [0.5, 0.5])[1] > 0.001
    assert stats.srm([51_000, 49_000], [0.5, 0.5])[1] < 1e-9
    assert stats.srm([9_000, 1_000], [0.9, 0.1])[1] > 0.001
    assert stats.srm([10, 5], [1.0, 0.0]) == (float("inf"), 0.0)  # users in a closed arm


@pytest.mark.parametrize(("sig", "diff", "guards", "srm", "power", "expected"), [
    (True, 0.01, True, True, 0.9, "promote"),
    (True, -0.01, True, True, 0.9, "keep"),
    (True, 0.01, False, True, 0.9, "keep"),
    (True, 0.01, True, False, 0.9, "inconclusive"),
    (False, 0.001, True, True, 0.9, "keep"),
    (False, 0.001, True, True, 0.3, "inconclusive"),
])
def test_decision_rule(sig, diff, guards, srm, power, expected) -> None:
    cmp = stats.Comparison(diff, 2.5 if sig else 0.5, 0.01 if sig else 0.6, sig, 0.1, 0, 0.2,
                           0.05)
    assert stats.decide(cmp, guards, srm, power, 0.8)[0] == expected
