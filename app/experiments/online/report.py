"""The A/B report folder: plots, tables, ``summary.json`` (via app.experiments.report.ReportFolder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from app.experiments.report import ReportFolder
from recstack.settings import Settings


def plot_ctr(series: pd.DataFrame, arms: list[str], alpha: float = 0.05) -> Any:
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, colour in zip(arms, ("tab:blue", "tab:orange"), strict=False):
        ax.plot(series["day"], series[f"{arm}_ctr"], marker="o", color=colour, label=arm)
        ax.fill_between(series["day"], series[f"{arm}_ci_low"], series[f"{arm}_ci_high"],
                        color=colour, alpha=0.2)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("cumulative CTR")
    ax.set_title(f"Cumulative CTR per arm (shaded: {1 - alpha:.0%} confidence interval)")
    _integer_days(ax)
    ax.legend()
    ax.grid(alpha=0.3)
    return fig


def plot_lift(series: pd.DataFrame, alpha: float = 0.05) -> Any:
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(series["day"], 100 * series["lift"], marker="o", color="tab:green", label="lift")
    ax.fill_between(series["day"], 100 * series["lift_ci_low"], 100 * series["lift_ci_high"],
                    color="tab:green", alpha=0.2)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("simulated day")
    ax.set_ylabel("relative CTR lift, treatment vs control (%)")
    ax.set_title(f"Cumulative lift over time (shaded: {1 - alpha:.0%} confidence interval)")
    _integer_days(ax)
    ax.grid(alpha=0.3)
    return fig


def _integer_days(ax: Any) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def write_report(settings: Settings, result: dict[str, Any], series: pd.DataFrame,
                 params: dict[str, Any]) -> Path:
    """``$RECSTACK_HOME/reports/ab-<stamp>/``: report.md, summary.json, ctr.png, lift.png,
    daily.csv; returns the folder."""
    arms = list(result["arms"])
    control, treatment = arms
    folder = ReportFolder.create(settings, "ab", f"A/B test: {params['treatment']} vs "
                                 f"{params['control']}")
    test, power, srm, guards = (result["test"], result["power"], result["srm"],
                                result["guardrails"])
    folder.text(
        f"**Decision: {result['decision']}** ({result['reason']}).\n\n"
        f"Traffic: {params['sim_days']} simulated days through {result['backend']}; users "
        f"assigned by `blake2b(salt:user_id)` with salt `{params['salt']}`, weights "
        f"{params['weights']}. Test: {test['name']} at alpha = {test['alpha']:g}, one look at "
        f"the planned end (fixed horizon)."
    )
    folder.table([
        {"arm": arm, "models": params["arm_models"].get(arm, ""),
         "versions": params["arm_versions"].get(arm, ""), "users": s["users"],
         "impressions": s["impressions"], "clicks": s["clicks"], "CTR": s["ctr"],
         "CI low": s["ci_low"], "CI high": s["ci_high"], "expected CTR": s["expected_ctr"]}
        for arm, s in result["arms"].items()
    ])
    folder.text(
        f"Relative lift {100 * test['lift']:+.2f}% (CI {100 * test['lift_ci_low']:+.2f}% to "
        f"{100 * test['lift_ci_high']:+.2f}%), z = {test['z']:.2f}, p = {test['p_value']:.3g} "
        f"({'significant' if test['significant'] else 'not significant'}).\n\n"
        f"Power: {power['achieved']:.2f} to detect a {100 * power['mde_relative']:g}% relative "
        f"lift (target {power['target']:g}); {power['required_users_per_arm']} users per arm "
        f"needed, {power['users_per_arm']} observed.\n\n"
        f"Sample ratio: chi2 = {srm['chi2']:.2f}, p = {srm['p_value']:.3g} "
        f"({'ok' if srm['ok'] else 'MISMATCH'} at {srm['alpha']:g})."
    )
    folder.figure("ctr", plot_ctr(series, [control, treatment], test["alpha"]),
                  "Cumulative CTR per arm by simulated day, with confidence intervals.")
    folder.figure("lift", plot_lift(series, test["alpha"]), "Cumulative relative lift by simulated day.")
    folder.text("The daily figures are for watching, not for stopping early: their intervals "
                "are pointwise and the test is valid at the planned end only.")
    plt.close("all")
    folder.text("## Guardrails" + ("" if guards["ok"] else
                                   "\n\nFailed: " + "; ".join(guards["failed"])))
    folder.table([{"arm": arm, **g} for arm, g in guards["arms"].items()])
    folder.csv("daily", series)
    folder.text("`daily.csv` has the cumulative figures per day.")
    return folder.finish({**result, "params": params, "daily": series.to_dict("records")},
                         settings.ab.model_dump())
