"""The statistics of an online A/B test on CTR, with users as the unit of randomisation.

CTR is a ratio metric: clicks / impressions summed over an arm's users. A user's impressions
are correlated (the same taste, the same fatigue), so treating impressions as independent trials
understates the variance and inflates false positives. Instead each arm's CTR variance comes
from the delta method over per-user (clicks, impressions) pairs (Deng et al., "Applying the
Delta Method in Metric Analytics", 2018). The test is a **fixed-horizon two-sided z-test** on
the CTR difference at level ``alpha``, valid for one look at the end of the planned duration;
the power calculation says how many users per arm detect a relative lift of ``mde``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class ArmStats:
    """One arm's CTR with a normal (delta-method) confidence interval."""

    users: int
    impressions: int
    clicks: int
    ctr: float
    se: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def z_of(alpha: float) -> float:
    """The two-sided critical value."""
    return float(stats.norm.ppf(1 - alpha / 2))


def ratio_stats(clicks: np.ndarray, impressions: np.ndarray, alpha: float = 0.05) -> ArmStats:
    """CTR = sum(clicks) / sum(impressions) over users, with the delta-method standard error."""
    x = np.asarray(clicks, dtype=np.float64)
    y = np.asarray(impressions, dtype=np.float64)
    keep = y > 0
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n == 0:
        return ArmStats(0, 0, 0, float("nan"), float("nan"), float("nan"), float("nan"))
    mx, my = x.mean(), y.mean()
    ctr = float(x.sum() / y.sum())
    if n < 2:
        se = float("nan")
    else:
        vx, vy = x.var(ddof=1), y.var(ddof=1)
        cxy = float(np.cov(x, y, ddof=1)[0, 1])
        var = (vx / my**2 - 2 * mx * cxy / my**3 + mx**2 * vy / my**4) / n
        se = math.sqrt(max(var, 0.0))
    z = z_of(alpha)
    return ArmStats(n, int(y.sum()), int(x.sum()), ctr, se, ctr - z * se, ctr + z * se)


@dataclass(frozen=True)
class Comparison:
    """Treatment vs control: absolute and relative difference, the z-test, the lift interval."""

    diff: float
    z: float
    p_value: float
    significant: bool
    lift: float  # relative: treatment / control - 1
    lift_ci_low: float
    lift_ci_high: float
    alpha: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compare(control: ArmStats, treatment: ArmStats, alpha: float = 0.05) -> Comparison:
    """Two-sided z-test of CTR_t - CTR_c; the lift's interval by the delta method on the log
    ratio (so it is not symmetric around the lift)."""
    diff = treatment.ctr - control.ctr
    se = math.sqrt(control.se**2 + treatment.se**2)
    if not se > 0 or not math.isfinite(se):
        return Comparison(diff, float("nan"), 1.0, False, float("nan"), float("nan"),
                          float("nan"), alpha)
    z = diff / se
    p = float(2 * stats.norm.sf(abs(z)))
    lift = treatment.ctr / control.ctr - 1 if control.ctr > 0 else float("nan")
    if control.ctr > 0 and treatment.ctr > 0:
        se_log = math.sqrt((control.se / control.ctr) ** 2 + (treatment.se / treatment.ctr) ** 2)
        log_ratio = math.log(treatment.ctr / control.ctr)
        zc = z_of(alpha)
        low, high = math.exp(log_ratio - zc * se_log) - 1, math.exp(log_ratio + zc * se_log) - 1
    else:
        low = high = float("nan")
    return Comparison(diff, z, p, p < alpha, lift, low, high, alpha)


def required_users(ctr: float, se: float, users: int, mde: float, alpha: float = 0.05,
                   power: float = 0.8) -> int | None:
    """Users per arm that detect a relative lift ``mde`` of ``ctr`` with ``power`` at ``alpha``
    (two-sided, equal arms). The per-user variance comes from an arm with ``users`` users whose
    CTR has standard error ``se``: sigma^2 = users * se^2."""
    if not (ctr > 0 and se > 0 and users > 0):
        return None
    sigma2 = users * se**2
    delta = mde * ctr
    n = (z_of(alpha) + stats.norm.ppf(power)) ** 2 * 2 * sigma2 / delta**2
    return int(math.ceil(n))


def achieved_power(ctr: float, se_diff: float, mde: float, alpha: float = 0.05) -> float:
    """Power of the test as run (its standard error of the difference) for a lift ``mde``."""
    if not se_diff > 0:
        return float("nan")
    shift = mde * ctr / se_diff
    z = z_of(alpha)
    return float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))


def srm(observed: list[int], weights: list[float]) -> tuple[float, float]:
    """Sample-ratio-mismatch check: chi-square statistic and p-value of the users per arm
    against the configured weights (p < 0.001 is the usual alarm)."""
    obs = np.asarray(observed, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    keep = w > 0
    if obs[~keep].sum() > 0:  # users in an arm that should have none
        return float("inf"), 0.0
    obs, w = obs[keep], w[keep]
    if obs.size < 2 or obs.sum() == 0:
        return 0.0, 1.0
    expected = obs.sum() * w / w.sum()
    chi2, p = stats.chisquare(obs, expected)
    return float(chi2), float(p)


def decide(comparison: Comparison, guardrails_ok: bool, srm_ok: bool, power: float,
           target_power: float) -> tuple[str, str]:
    """``(decision, why)``: promote, keep or inconclusive.

    promote: a significant positive lift, guardrails held, no sample-ratio mismatch.
    keep: a significant negative lift, or broken guardrails, or an adequately powered test that
    found nothing. inconclusive: the sample ratio is off (the test is not trustworthy), or not
    significant and underpowered for the minimum detectable effect.
    """
    if not srm_ok:
        return "inconclusive", "sample ratio mismatch: the assignment or logging is broken"
    if not guardrails_ok:
        return "keep", "a guardrail failed"
    if comparison.significant and comparison.diff > 0:
        return "promote", f"significant lift (p={comparison.p_value:.3g})"
    if comparison.significant:
        return "keep", f"significant loss (p={comparison.p_value:.3g})"
    if power >= target_power:
        return "keep", (f"no significant difference with power {power:.2f} for the "
                        "minimum detectable effect")
    return "inconclusive", (f"not significant (p={comparison.p_value:.3g}) and underpowered "
                            f"({power:.2f} < {target_power:.2f}): run longer")
