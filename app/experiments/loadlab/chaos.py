"""``recstack experiment chaos --fault NAME``: a fault under steady load, timed to the second.

Locust offers a constant load (default: 50% of the knee of the latest scale report for the
running replica count, preferring one measured without a CPU budget per replica, as the chaos
replicas run); ``pre_s`` seconds in, the fault is injected; it ends after ``fault_s``
seconds (or, for a killed program, when supervisord has restarted it and it is ready again); the
load goes on for ``post_s`` seconds. ``overload`` instead steps the load itself: 50% of the peak,
2x the peak for the window, 50% again. Every request is logged (status, latency, ``degraded``
reasons) and the replicas' /metrics are scraped each second (breaker state, degraded counters),
which gives the per-second timeline and the figures: errors during the fault, time to the first
degraded answer, time to recover after the fault ends.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from app.experiments.loadlab import plots
from app.experiments.loadlab.analysis import (
    baseline,
    first_degraded_s,
    reasons_seen,
    recommendations,
    recovery_s,
    timeline,
    window_counts,
)
from app.experiments.loadlab.faults import DESCRIPTIONS, FaultError, KillProgram, make_fault
from app.experiments.loadlab.loadgen import LoadRun, clients_for, run_load, users_for
from app.experiments.loadlab.probes import program_pids
from app.experiments.report import ReportFolder
from app.experiments.report import folders as report_folders
from app.stack import runner
from app.stack.services import api_ports
from recstack.machine import load_average
from recstack.settings import Settings

logger = logging.getLogger(__name__)

# The targets, by summary key.
TARGETS: dict[str, dict[str, float]] = {
    "kill-replica": {"kill_replica_failed_request_fraction": 0.001, "kill_replica_recover_s": 10},
    "stop-redis": {"stop_redis_http_5xx_count": 0, "stop_redis_first_degraded_s": 1,
                   "stop_redis_recover_s": 10},
    "overload": {"overload_goodput_fraction_of_peak": 0.9, "overload_accepted_p99_over_slo": 2},
}
# Which way each target goes: True when the measured figure must be at least the target.
AT_LEAST = {"overload_goodput_fraction_of_peak"}
# Requests/s per simulated user under overload (many users: the in-flight count is not capped
# by the generator).
OVERLOAD_USER_RPS = 0.5
# Longest a killed program may take to come back before the experiment gives up on it.
KILL_WAIT_S = 90.0
# Seconds after the fault ends still counted as "during the fault" (the recovery target).
AFTERMATH_S = 10.0


@dataclass
class ChaosConfig:
    """The experiment's knobs (the CLI's flags)."""

    fault: str
    rps: float | None = None
    pre_s: int = 10
    fault_s: int = 15
    post_s: int = 20
    slo_ms: float = 100.0
    processes: int = 1
    user_rps: float = 4.0


@dataclass
class FaultTimes:
    """Epoch seconds: when the fault began and ended (NaN until known)."""

    start: float = math.nan
    end: float = math.nan
    notes: list[str] = field(default_factory=list)


def scale_summary(settings: Settings) -> dict[str, Any] | None:
    """The newest scale report measured like chaos runs, without a CPU budget per replica (a
    budgeted knee understates what unlimited replicas serve); else the newest one."""
    found: dict[str, Any] | None = None
    for folder in reversed(report_folders(settings, "scale")):
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except (OSError, ValueError):
            continue
        summary["report_folder"] = folder.name
        if not summary.get("replica_cpu_budget_cores"):
            return summary
        found = found or summary
    return found


def peak_rps(summary: dict[str, Any] | None, replicas: int) -> float | None:
    """The knee for ``replicas`` api replicas in a scale summary (else its 1-replica knee, a
    lower bound), if there is one."""
    if not summary:
        return None
    word = "replica" if replicas == 1 else "replicas"
    value = summary.get(f"max_rps_at_slo_{replicas}_{word}")
    if not value:  # no knee at this count (or not measured): the 1-replica knee, a lower bound
        value = summary.get("max_rps_at_slo_1_replica")
    return float(value) if value else None


def _api_count(settings: Settings) -> int:
    return sum(1 for name in program_pids(settings) if name.startswith("api-"))


def run_chaos(settings: Settings, cfg: ChaosConfig, console: Console | None = None) -> Path:
    """Run the experiment on the running native stack; returns the report folder."""
    console = console or Console(stderr=True)
    replicas = _api_count(settings)
    if replicas == 0:
        raise FaultError("no api replica is running; start the stack with `recstack up`")
    fault = make_fault(settings, cfg.fault, replicas)
    measured = scale_summary(settings)
    peak, base_rps, stages = _offered_load(cfg, peak_rps(measured, replicas))

    runner.wait_ready(settings, settings.stack.start_timeout_s)  # a clean "before"
    fault.prepare()
    report = ReportFolder.create(settings, "chaos", title=f"Chaos experiment: {cfg.fault}")
    times = FaultTimes()
    duration = cfg.pre_s + cfg.fault_s + cfg.post_s
    open_ended = stages is None  # a fault that ends when the stack healed: stop after post_s
    if open_ended:
        duration += int(KILL_WAIT_S)
    ports = api_ports(settings, replicas)
    with console.status(f"chaos {cfg.fault}: {base_rps:.0f} RPS offered, up to {duration}s "
                        f"(fault at {cfg.pre_s}s)"):
        run = run_load(
            settings, report.path / "raw", users=max(1, round(base_rps / cfg.user_rps)),
            duration_s=duration, user_rps=cfg.user_rps, stages=stages,
            processes=cfg.processes, metric_ports=lambda: ports,
            during=_fault_schedule(fault, cfg, times, open_ended),
            stop_when_done=open_ended,
        )
    times.notes = fault.notes
    df, t0, tl = _per_second(cfg, run, times)
    window = (times.start - t0, times.end - t0)
    summary = chaos_figures(cfg, df, tl, times, t0, base_rps, peak)
    summary |= {"fault": cfg.fault, "api_replicas": replicas, "slo_p99_ms": cfg.slo_ms,
                "locust_cpu_cores_mean": _r(run.locust_cpu_cores),
                "load_average_1m": _load1(),
                "load_from_scale_report": (measured or {}).get("report_folder")
                if not cfg.rps else None}
    report.csv("requests", df)
    report.csv("timeline", tl)
    _write_report(report, cfg, tl, window, summary, times, run.top_failures)
    path = report.finish(summary, settings_used={**asdict(cfg), "serving_mode": settings.serving.mode,
                                                 "breaker_threshold": settings.serving.breaker_threshold,
                                                 "breaker_cooldown_s": settings.serving.breaker_cooldown_s,
                                                 "max_in_flight": settings.serving.max_in_flight})
    console.print(_headline(cfg.fault, summary))
    console.print(f"report: {path / 'report.md'}")
    return path


def _offered_load(cfg: ChaosConfig, peak: float | None
                  ) -> tuple[float | None, float, list[tuple[float, int]] | None]:
    """The load to offer: for ``overload`` the peak (``--rps`` or the scale report's knee) and
    stages of 50% / 200% / 50% of it (``cfg.user_rps`` lowered to ``OVERLOAD_USER_RPS``); else
    a constant ``--rps`` or 50% of the knee. Returns the peak, the base RPS the users really
    offer, and the stages (None: constant load). Raises ``FaultError`` without a load."""
    if cfg.fault == "overload":
        peak = cfg.rps or peak
        if not peak:
            raise FaultError("overload needs the peak: run `recstack experiment scale` first or "
                             "pass --rps PEAK")
        # Many slow users, not a few fast ones: each user waits for its answer, so the users
        # bound the requests in flight; overload must be able to push past the shedding limit.
        cfg.user_rps = min(cfg.user_rps, OVERLOAD_USER_RPS)
        base_rps, high_rps = 0.5 * peak, 2.0 * peak
        low, high = users_for(base_rps, cfg.user_rps), users_for(high_rps, cfg.user_rps)
        stages: list[tuple[float, int]] | None = [
            (cfg.pre_s, low), (cfg.pre_s + cfg.fault_s, high),
            (cfg.pre_s + cfg.fault_s + cfg.post_s, low)]
    else:
        base_rps = cfg.rps or (0.5 * peak if peak else None)
        if not base_rps:
            raise FaultError("no offered load: run `recstack experiment scale` first (50% of its "
                             "knee is used) or pass --rps")
        # Open loop from at least MIN_CONNECTIONS users, each a Poisson stream of a share.
        clients = clients_for(base_rps, "poisson", cfg.user_rps)
        cfg.user_rps = clients.user_rps
        return peak, clients.rps, None
    base_rps = users_for(base_rps, cfg.user_rps) * cfg.user_rps  # what the users really offer
    return peak, base_rps, stages


def _fault_schedule(fault: Any, cfg: ChaosConfig, times: FaultTimes, open_ended: bool
                    ) -> Callable[[float], None]:
    """What ``run_load`` runs once the first requests flow (at epoch ``first``): ``pre_s`` later
    inject the fault, clear it after ``fault_s`` (a killed program: once supervisord restarted
    it and it is ready), recording both moments in ``times``; open-ended, go on for ``post_s``."""

    def during(first: float) -> None:
        time.sleep(max(0.0, first + cfg.pre_s - time.time()))
        times.start = time.time()
        fault.inject()
        if isinstance(fault, KillProgram):
            fault.clear()  # returns once supervisord restarted it and it is ready
        else:
            time.sleep(max(0.0, times.start + cfg.fault_s - time.time()))
            fault.clear()
        times.end = time.time()
        if open_ended:
            time.sleep(cfg.post_s)

    return during


def _per_second(cfg: ChaosConfig, run: LoadRun, times: FaultTimes
                ) -> tuple[pd.DataFrame, float, pd.DataFrame]:
    """The run's requests, the first request's start (``t0``) and the per-second timeline with
    the samples merged in (the last, cut-short second dropped); for ``overload`` the fault
    window is set to the load's own high stage."""
    df = run.requests
    t0 = float(df["start_s"].min())
    if cfg.fault == "overload":  # the window is the load's own high stage
        times.start = t0 + cfg.pre_s
        times.end = t0 + cfg.pre_s + cfg.fault_s
    tl = timeline(df, t0)
    tl = tl[tl["t_s"] < tl["t_s"].max()]  # the last second is cut short by the end of the run
    tl = merge_samples(tl, run.samples, t0)
    return df, t0, tl


def merge_samples(tl: pd.DataFrame, samples: pd.DataFrame, t0: float) -> pd.DataFrame:
    """Adds the per-second samples (CPU, breaker state, /metrics degraded rate) to a timeline."""
    if len(samples) == 0:
        return tl
    s = samples.copy()
    s["t_s"] = np.floor(s["t"] - t0).astype(int)
    if "degraded_total" in s:
        s["metrics_degraded_per_s"] = s["degraded_total"].diff().clip(lower=0) / \
            s["t"].diff().replace(0, np.nan)
    cols = [c for c in s.columns if c.startswith("cpu_cores_")] + \
        [c for c in ("breaker_state_max", "replicas_up", "metrics_degraded_per_s") if c in s]
    per_s = s.groupby("t_s")[cols].max()
    return tl.merge(per_s, left_on="t_s", right_index=True, how="left")


def chaos_figures(cfg: ChaosConfig, df: pd.DataFrame, tl: pd.DataFrame, times: FaultTimes,
                  t0: float, base_rps: float, peak: float | None) -> dict[str, Any]:
    """The summary figures of one run (keys prefixed by the fault, units in the names)."""
    p = cfg.fault.replace("-", "_")
    ws, we = times.start - t0, times.end - t0
    base = baseline(tl, 2, ws)
    during = window_counts(df, times.start, times.end + AFTERMATH_S)
    whole = window_counts(df, t0, math.inf)
    events = df[df["name"] == "/events"]
    in_window = df[(df["start_s"] >= times.start) & (df["start_s"] < times.end)]
    rec_window = recommendations(in_window)
    out: dict[str, Any] = {
        f"{p}_offered_rps": _r(base_rps),
        f"{p}_baseline_rps": _r(base.rps),
        f"{p}_fault_window_s": _r(times.end - times.start),
        f"{p}_requests_during_fault": during["requests"],
        f"{p}_failed_requests": during["failed"],
        f"{p}_failed_request_fraction": _r(during["failed_fraction"], 5),
        f"{p}_failed_request_fraction_whole_run": _r(whole["failed_fraction"], 5),
        f"{p}_http_5xx_count": during["http_5xx"],
        f"{p}_http_5xx_count_whole_run": whole["http_5xx"],
        f"{p}_shed_503_count": whole["shed_503"],
        f"{p}_events_http_5xx_count": int((events["status"] >= 500).sum()),
        f"{p}_degraded_fraction_during_fault": _r(during["degraded_fraction"]),
        f"{p}_first_degraded_s": _r(first_degraded_s(
            df, times.start, ignore=reasons_seen(df, t0, times.start))),
        f"{p}_recover_s": _r(recovery_s(tl, we, base)),
        f"{p}_p99_ms_during_fault": _r(float(np.percentile(rec_window["response_ms"], 99))
                                       if len(rec_window) else math.nan),
        f"{p}_p99_ms_before_fault": _r(base.p99_ms),
    }
    if "breaker_state_max" in tl:
        out[f"{p}_breaker_opened"] = bool((tl["breaker_state_max"] >= 2).any())
    if cfg.fault == "overload":
        high = rec_window[rec_window["start_s"] >= times.start + 2]  # past the ramp
        span = max(times.end - times.start - 2, 1e-9)
        ok = high[high["ok"] == 1]
        goodput = len(ok) / span
        out |= {
            "overload_peak_rps": _r(peak),
            "overload_offered_rps": _r(2 * (peak or math.nan)),
            "overload_achieved_rps": _r(len(high) / span),
            "overload_goodput_rps": _r(goodput),
            "overload_goodput_fraction_of_peak": _r(goodput / peak if peak else math.nan),
            "overload_accepted_p99_ms": _r(float(np.percentile(ok["response_ms"], 99))
                                           if len(ok) else math.nan),
            "overload_shed_fraction": _r(float((high["status"] == 503).mean())
                                         if len(high) else math.nan),
        }
        out["overload_accepted_p99_over_slo"] = _r(
            (out["overload_accepted_p99_ms"] or math.nan) / cfg.slo_ms)
    return out


def verdicts(fault: str, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per target of this fault: measured, target, met."""
    rows = []
    for key, target in TARGETS.get(fault, {}).items():
        value = summary.get(key)
        if value is None:
            met = False
        else:
            met = value >= target if key in AT_LEAST else value <= target
        rows.append({"figure": key, "measured": value,
                     "target": f"{'≥' if key in AT_LEAST else '≤'} {target:g}",
                     "met": "yes" if met else "no"})
    return rows


def _headline(fault: str, s: dict[str, Any]) -> str:
    p = fault.replace("-", "_")
    parts = [f"{fault}: failed {s.get(f'{p}_failed_request_fraction')}",
             f"5xx {s.get(f'{p}_http_5xx_count')}",
             f"first degraded {s.get(f'{p}_first_degraded_s')} s",
             f"recover {s.get(f'{p}_recover_s')} s"]
    if fault == "overload":
        parts += [f"goodput/peak {s.get('overload_goodput_fraction_of_peak')}",
                  f"accepted p99 {s.get('overload_accepted_p99_ms')} ms"]
    return ", ".join(parts)


def _write_report(report: ReportFolder, cfg: ChaosConfig, tl: pd.DataFrame,
                  window: tuple[float, float], summary: dict[str, Any], times: FaultTimes,
                  failures: list[str]) -> None:
    p = cfg.fault.replace("-", "_")
    report.text(
        f"**Fault**: {DESCRIPTIONS[cfg.fault]}. Load: {summary.get(f'{p}_offered_rps')} RPS "
        f"offered (open loop: Poisson arrivals, {cfg.user_rps:.3g} requests/s per simulated "
        f"user, latency from each request's due time), {summary['api_replicas']} api "
        f"replica(s); fault from {window[0]:.1f} s to {window[1]:.1f} s after the first request. "
        + (" ".join(times.notes) if times.notes else "")
    )
    report.text(
        "Definitions: *during the fault* is from the injection to "
        f"{AFTERMATH_S:.0f} s after it ended; *first degraded* is the time from the injection to "
        "the first recommendation answered failed, or degraded for a reason not seen before the "
        "fault (by its arrival); *recover* is the "
        "time from the end of the fault until 3 consecutive seconds have at least 90% of the "
        "pre-fault throughput, no failed request and the pre-fault share of non-degraded answers "
        "(within 2 points); NaN means it did not happen within the run."
    )
    other = tl["cpu_cores_other"].mean() if "cpu_cores_other" in tl else math.nan
    report.text(
        f"The generator (Locust) used {summary.get('locust_cpu_cores_mean')} cores on average"
        + (f"; processes outside the stack and the generator (other tenants of this shared "
           f"machine) used {other:.2f} cores" if not math.isnan(other) else "")
        + f"; load average {summary.get('load_average_1m')} at the end."
    )
    rows = verdicts(cfg.fault, summary)
    if rows:
        report.text("### Against the targets")
        report.table(rows)
    report.figure("timeline", plots.chaos_timeline(tl, window, cfg.slo_ms,
                                                   f"{cfg.fault}: per second"),
                  "Per second: throughput, latency, error and degraded rates (by reason, from "
                  "the responses), breaker state (from /metrics) and CPU; fault window shaded.")
    headline = {k: summary.get(f"{p}_{k}") for k in
                ("failed_request_fraction", "first_degraded_s", "recover_s")}
    if cfg.fault == "overload":
        headline = {"goodput_fraction_of_peak": summary.get("overload_goodput_fraction_of_peak"),
                    "accepted_p99_over_slo": summary.get("overload_accepted_p99_over_slo"),
                    "shed_fraction": summary.get("overload_shed_fraction")}
    targets = {k.removeprefix(f"{p}_"): v for k, v in TARGETS.get(cfg.fault, {}).items()}
    report.figure("figures", plots.chaos_figures(
        {k: (math.nan if v is None else float(v)) for k, v in headline.items()}, targets,
        cfg.fault), "The headline figures against the issue's targets (red).")
    report.text("### Every figure\n")
    report.table([{"figure": k, "value": v} for k, v in summary.items()
                  if k.startswith(p) or k.startswith("overload")])
    if failures:
        report.text("### Most frequent failures\n" + "\n".join(f"- `{f}`" for f in failures))


def _r(x: Any, nd: int = 3) -> Any:
    if x is None:
        return None
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(x) else round(float(x), nd)
    return x


def _load1() -> float | None:
    load = load_average()
    return round(load[0], 2) if load else None
