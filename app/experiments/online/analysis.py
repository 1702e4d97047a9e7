"""From an experiment's log to its verdict: per-arm CTR, lift, test, SRM, guardrails, decision.

Input: an :class:`app.experiments.online.simulate.ExperimentLog` (per day, user and arm) and the arm
weights. Output: a JSON-ready dict (the report's ``summary.json`` figures) and the daily
cumulative series the plots draw.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from app.experiments.online import stats
from app.experiments.online.simulate import ExperimentLog


def per_user(rows: pd.DataFrame) -> pd.DataFrame:
    """Sum each user's rows per arm (the unit of analysis is the user)."""
    cols = ["requests", "impressions", "clicks", "expected_clicks", "errors"]
    return rows.groupby(["arm", "user_id"], as_index=False)[cols].sum()


def arm_table(rows: pd.DataFrame, arms: Sequence[str], alpha: float) -> dict[str, stats.ArmStats]:
    users = per_user(rows)
    out = {}
    for arm in arms:
        u = users[users["arm"] == arm]
        out[arm] = stats.ratio_stats(u["clicks"].to_numpy(), u["impressions"].to_numpy(), alpha)
    return out


def daily_series(log: ExperimentLog, control: str, treatment: str,
                 alpha: float) -> pd.DataFrame:
    """Cumulative CTR per arm with intervals, and the cumulative lift, at the end of each day."""
    out = []
    for day in sorted(log.rows["day"].unique()):
        upto = log.rows[log.rows["day"] <= day]
        table = arm_table(upto, [control, treatment], alpha)
        cmp = stats.compare(table[control], table[treatment], alpha)
        row: dict[str, Any] = {"day": int(day) + 1}
        for arm, s in table.items():
            row |= {f"{arm}_ctr": s.ctr, f"{arm}_ci_low": s.ci_low, f"{arm}_ci_high": s.ci_high,
                    f"{arm}_users": s.users, f"{arm}_impressions": s.impressions}
        row |= {"lift": cmp.lift, "lift_ci_low": cmp.lift_ci_low,
                "lift_ci_high": cmp.lift_ci_high, "p_value": cmp.p_value}
        out.append(row)
    return pd.DataFrame(out)


def guardrails(log: ExperimentLog, control: str, treatment: str, ab: Any) -> dict[str, Any]:
    """p99 latency and error rate of every arm, and the treatment's catalogue coverage
    relative to the control's; each with its limit and whether it held."""
    users = per_user(log.rows)
    out: dict[str, Any] = {"arms": {}, "ok": True, "failed": []}
    for arm in (control, treatment):
        u = users[users["arm"] == arm]
        requests = int(u["requests"].sum())
        errors = int(u["errors"].sum())
        lat = log.latency_s.get(arm)
        p99_ms = float(np.quantile(lat, 0.99) * 1000) if lat is not None and lat.size else None
        shown = log.shown.get(arm)
        coverage = float(shown.mean()) if shown is not None else None
        error_rate = errors / requests if requests else 0.0
        out["arms"][arm] = {"requests": requests, "errors": errors, "error_rate": error_rate,
                            "p99_latency_ms": p99_ms, "coverage": coverage}
        if error_rate > ab.max_error_rate:
            out["failed"].append(f"{arm} error rate {error_rate:.2%} > {ab.max_error_rate:.2%}")
        if p99_ms is not None and p99_ms > ab.max_p99_ms:
            out["failed"].append(f"{arm} p99 latency {p99_ms:.1f} ms > {ab.max_p99_ms:.0f} ms")
    c_cov = out["arms"][control]["coverage"]
    t_cov = out["arms"][treatment]["coverage"]
    if c_cov and t_cov is not None:
        ratio = t_cov / c_cov
        out["coverage_ratio"] = ratio
        if ratio < ab.min_coverage_ratio:
            out["failed"].append(f"{treatment} coverage {t_cov:.1%} is {ratio:.2f}x the "
                                 f"control's {c_cov:.1%} (< {ab.min_coverage_ratio:g}x)")
    out["limits"] = {"max_error_rate": ab.max_error_rate, "max_p99_ms": ab.max_p99_ms,
                     "min_coverage_ratio": ab.min_coverage_ratio}
    out["ok"] = not out["failed"]
    return out


def analyse(log: ExperimentLog, arms: Sequence[tuple[str, float]], ab: Any,
            srm_alpha: float = 0.001) -> dict[str, Any]:
    """The verdict of a two-arm experiment; ``arms`` = [(control, weight), (treatment, weight)].

    Test: fixed-horizon two-sided z-test at ``ab.alpha`` on the users' ratio CTR (delta
    method); power for a relative lift ``ab.mde``; SRM chi-square on users per arm.
    """
    (control, w_c), (treatment, w_t) = arms
    table = arm_table(log.rows, [control, treatment], ab.alpha)
    cmp = stats.compare(table[control], table[treatment], ab.alpha)
    c = table[control]
    se_diff = float(np.hypot(c.se, table[treatment].se))
    power = stats.achieved_power(c.ctr, se_diff, ab.mde, ab.alpha)
    needed = stats.required_users(c.ctr, c.se, c.users, ab.mde, ab.alpha, ab.power)
    users_per_arm = [table[control].users, table[treatment].users]
    chi2, p_srm = stats.srm(users_per_arm, [w_c, w_t])
    guards = guardrails(log, control, treatment, ab)
    decision, why = stats.decide(cmp, guards["ok"], p_srm >= srm_alpha, power, ab.power)
    expected = {}
    users = per_user(log.rows)
    for arm in (control, treatment):
        u = users[users["arm"] == arm]
        imps = u["impressions"].sum()
        expected[arm] = float(u["expected_clicks"].sum() / imps) if imps else None
    return {
        "arms": {arm: {**table[arm].as_dict(), "weight": w, "expected_ctr": expected[arm]}
                 for arm, w in ((control, w_c), (treatment, w_t))},
        "test": {"name": "fixed-horizon two-sided z-test, users' ratio CTR, delta method",
                 **cmp.as_dict()},
        "power": {"mde_relative": ab.mde, "target": ab.power, "achieved": power,
                  "required_users_per_arm": needed, "users_per_arm": users_per_arm},
        "srm": {"chi2": chi2, "p_value": p_srm, "alpha": srm_alpha, "ok": p_srm >= srm_alpha,
                "users": dict(zip([control, treatment], users_per_arm, strict=True))},
        "guardrails": guards,
        "decision": decision,
        "reason": why,
        "backend": log.backend,
    }
