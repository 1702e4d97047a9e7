"""The drift experiment's timeline plot."""

from __future__ import annotations

import datetime as dt
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd

COLORS = {"shift": "black", "alert": "tab:red", "retrain": "tab:orange",
          "promotion": "tab:green", "hold": "tab:purple"}


def timeline_figure(timeline: pd.DataFrame, marks: list[dict[str, Any]], t0: dt.datetime,
                    cfg: Any) -> Any:
    matplotlib.use("Agg")

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1.3]})
    for arm, style in (("live", "-"), ("frozen", "--")):
        t = timeline[timeline["arm"] == arm].sort_values("hour")
        days = t["hour"] / 24
        frac = (t["expected_clicks"].rolling(6, min_periods=1).sum()
                / t["oracle_clicks"].rolling(6, min_periods=1).sum())
        label = ("live: drift monitor retrains" if arm == "live"
                 else "frozen: retraining disabled")
        line, = ax.plot(days, frac, style, label=label, lw=1.8)
        if "affected_oracle_clicks" in t and t["affected_oracle_clicks"].sum() > 0:
            # The users the scenario changes, apart: where the loss (and any recovery) is.
            seg = (t["affected_expected_clicks"].rolling(6, min_periods=1).sum()
                   / t["affected_oracle_clicks"].rolling(6, min_periods=1).sum())
            ax.plot(days, seg, style, lw=0.9, alpha=0.6, color=line.get_color(),
                    label=f"{arm}: affected users only")
        ctr = t["clicks"].rolling(6, min_periods=1).sum() / t["impressions"].rolling(
            6, min_periods=1).sum()
        ax2.plot(days, ctr, style, lw=1.2, label=f"{arm} realized CTR")
    seen = set()
    for m in marks:
        kind = m["kind"] if m["kind"] in COLORS else None
        if kind is None:
            continue
        x = (dt.datetime.fromisoformat(m["at"]) - t0).total_seconds() / 86400
        lab = kind if kind not in seen else None
        seen.add(kind)
        for a in (ax, ax2):
            a.axvline(x, color=COLORS[kind], lw=1.0, alpha=0.7,
                      ls=":" if kind == "alert" else "-", label=lab if a is ax else None)
    ax.set_ylabel("expected clicks / oracle's (6 h)")
    ax.set_title(f"{cfg.scenario}: {cfg.requests_per_hour} requests per simulated hour, "
                 f"{cfg.n_users} users x {cfg.n_items} items")
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    ax2.set_ylabel("CTR (6 h)")
    ax2.set_xlabel(f"simulated days since {t0:%Y-%m-%d} (first live day)")
    ax2.legend(loc="lower left", fontsize=8)
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    return fig
