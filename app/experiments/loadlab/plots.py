"""The load lab's figures (matplotlib, Agg backend: files only, no display)."""

from __future__ import annotations

import math
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd


def _plt() -> Any:
    matplotlib.use("Agg")

    return plt


def latency_curves(steps: pd.DataFrame, knees: dict[int, float], slo_ms: float) -> Any:
    """p50/p95/p99 against achieved RPS, one panel per replica count, the SLO and the knee."""
    plt = _plt()
    counts = sorted(steps["replicas"].unique())
    fig, axes = plt.subplots(1, len(counts), figsize=(5.5 * len(counts), 4), squeeze=False,
                             sharey=True)
    for ax, n in zip(axes[0], counts, strict=True):
        s = steps[steps["replicas"] == n].sort_values("offered_rps")
        for col, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
            ax.plot(s["achieved_rps"], s[col], style, label=col.removesuffix("_ms"))
        ax.axhline(slo_ms, color="red", ls="--", lw=1, label=f"SLO p99 {slo_ms:.0f} ms")
        knee = knees.get(n)
        if knee and not math.isnan(knee):
            ax.axvline(knee, color="green", ls=":", lw=1.5, label=f"knee {knee:.0f} RPS")
        ax.set_title(f"{n} replica{'s' if n > 1 else ''}")
        ax.set_xlabel("achieved RPS (recommendations)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("latency (ms, log scale)")
    fig.tight_layout()
    return fig


def throughput(steps: pd.DataFrame) -> Any:
    """Achieved against offered RPS per replica count (the diagonal is "keeps up")."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    top = float(steps["offered_rps"].max()) if len(steps) else 1.0
    ax.plot([0, top], [0, top], color="grey", ls="--", lw=1, label="achieved = offered")
    for n, s in steps.groupby("replicas"):
        s = s.sort_values("offered_rps")
        ax.plot(s["offered_rps"], s["achieved_rps"], "o-", label=f"{n} replica(s)")
    ax.set_xlabel("offered RPS")
    ax.set_ylabel("achieved RPS")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def cpu_per_request(steps: pd.DataFrame) -> Any:
    """CPU milliseconds per request by process group, per step, per replica count."""
    plt = _plt()
    cols = [c for c in steps.columns if c.startswith("cpu_ms_per_request_")]
    counts = sorted(steps["replicas"].unique())
    fig, axes = plt.subplots(1, len(counts), figsize=(5.5 * len(counts), 4), squeeze=False,
                             sharey=True)
    for ax, n in zip(axes[0], counts, strict=True):
        s = steps[steps["replicas"] == n].sort_values("offered_rps")
        bottom = None
        x = list(range(len(s)))  # repeated steps get their own bar
        for col in cols:
            values = s[col].fillna(0).to_numpy()
            ax.bar(x, values, bottom=bottom, label=col.removeprefix("cpu_ms_per_request_"))
            bottom = values if bottom is None else bottom + values
        ax.set_xticks(x, [f"{r:.0f}" for r in s["offered_rps"]])
        ax.set_title(f"{n} replica(s)")
        ax.set_xlabel("offered RPS")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].set_ylabel("CPU ms per recommendation")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def efficiency(knees: dict[int, float], eff: dict[int, float]) -> Any:
    """Knee RPS per replica count against perfect linear scaling, with the efficiency."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    counts = sorted(knees)
    base = knees.get(1, math.nan)
    x = list(range(len(counts)))  # positions; the counts are the tick labels
    ax.bar(x, [knees[n] for n in counts], label="measured knee RPS")
    if base and not math.isnan(base):
        ax.plot(x, [n * base for n in counts], "k--o", label="linear")
    ax.set_xticks(x, [str(n) for n in counts])
    for i, n in enumerate(counts):
        e = eff.get(n, math.nan)
        if not math.isnan(e):
            ax.annotate(f"eff {e:.2f}", (i, knees[n]), ha="center", va="bottom", fontsize=9)
    ax.set_xlabel("replicas")
    ax.set_ylabel("max RPS within the SLO")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def chaos_timeline(tl: pd.DataFrame, window: tuple[float, float], slo_ms: float,
                   title: str) -> Any:
    """RPS, p99, error and degraded rates (by reason), breaker state and CPU, per second, with the
    fault window shaded."""
    plt = _plt()
    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    t = tl["t_s"]

    def shade(ax: Any) -> None:
        ax.axvspan(window[0], window[1], color="orange", alpha=0.2, label="fault window")
        ax.grid(alpha=0.3)

    ax = axes[0]
    ax.plot(t, tl["rps"], label="requests/s")
    ax.plot(t, tl["ok_rps"], label="answered/s")
    ax.plot(t, tl["good_rps"], label="answered, not degraded/s")
    ax.set_ylabel("RPS")
    shade(ax)
    ax.legend(fontsize=8, loc="lower left")
    ax.set_title(title)

    ax = axes[1]
    ax.plot(t, tl["p99_ms"], label="p99 (all)")
    ax.plot(t, tl["p99_ok_ms"], label="p99 (answered)")
    ax.plot(t, tl["p50_ms"], label="p50 (all)", alpha=0.7)
    ax.axhline(slo_ms, color="red", ls="--", lw=1, label="SLO")
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms)")
    shade(ax)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[2]
    ax.plot(t, tl["error_rate"], "k-", lw=2, label="error rate")
    for col in [c for c in tl.columns if c.startswith("degraded_") and c != "degraded_rate"]:
        ax.plot(t, tl[col].fillna(0), label=col.replace("degraded_", "degraded: "))
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(-0.02, 1.02)
    shade(ax)
    ax.legend(fontsize=8, loc="upper left")

    ax = axes[3]
    if "breaker_state_max" in tl:
        ax.step(t, tl["breaker_state_max"], where="post", color="purple",
                label="breaker (0 closed, 1 half-open, 2 open)")
    ax.set_ylabel("breaker state")
    ax.set_ylim(-0.1, 2.1)
    shade(ax)
    ax2 = ax.twinx()
    for col in [c for c in tl.columns if c.startswith("cpu_cores_")]:
        ax2.plot(t, tl[col], lw=1, alpha=0.7, label=col.replace("cpu_cores_", "CPU "))
    ax2.set_ylabel("CPU cores")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper left", ncol=3)
    axes[-1].set_xlabel("seconds since the load started")
    fig.tight_layout()
    return fig


def chaos_figures(figures: dict[str, float], targets: dict[str, float], title: str) -> Any:
    """The headline figures next to their targets (one small panel each)."""
    plt = _plt()
    names = list(figures)
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        value = figures[name]
        ax.bar([0], [0 if value is None or math.isnan(value) else value], color="C0")
        ax.set_xticks([0], ["measured"])
        if name in targets:
            ax.axhline(targets[name], color="red", ls="--", label=f"target {targets[name]:g}")
            ax.legend(fontsize=7)
        shown = "n/a" if value is None or math.isnan(value) else f"{value:.3g}"
        ax.set_title(f"{name}\n{shown}", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
