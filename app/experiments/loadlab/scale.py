"""``recstack experiment scale``: step the offered load per replica count until p99 breaks the SLO.

For each replica count the service is scaled (``app.stack.runner.scale``), then Locust offers
a constant throughput that grows by ``growth`` each step (``step_s`` seconds, the first
``warmup_s`` not measured) until a step breaks the SLO (p99 over it, more than 1% errors, or less
than 90% of the offered load delivered). The knee is the highest achieved RPS within the SLO;
the scaling efficiency is RPS(n) / (n * RPS(1)). CPU per request comes from /proc for the
service's processes (and nginx, Redis and Locust, to see where the cores went).

With ``replica_cpus`` each replica runs under a CPU quota of that many cores (a cgroup per
replica, ``cpubudget.py``): n replicas then have n times the CPU of one, as pods with CPU limits
do, instead of sharing whatever the machine has left. Without it the replicas compete for the
same cores with nginx, Redis and the generator, and the efficiency measures that contention.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from app.experiments.loadlab import plots
from app.experiments.loadlab.analysis import (
    StepStats,
    breaks_slo,
    find_knee,
    scaling_efficiency,
    step_stats,
)
from app.experiments.loadlab.cpubudget import CpuBudget, CpuBudgetError
from app.experiments.loadlab.loadgen import MIN_CONNECTIONS, LoadRun, clients_for, run_load
from app.experiments.loadlab.probes import program_pids, tree_pids
from app.experiments.report import ReportFolder
from app.stack import runner
from app.stack.services import api_ports, stage_ports
from recstack.machine import load_average
from recstack.settings import Settings

logger = logging.getLogger(__name__)

CPU_GROUPS = ("api", "candidates", "ranking", "nginx", "redis", "locust")


@dataclass
class ScaleConfig:
    """The experiment's knobs (the CLI's flags)."""

    replicas: list[int] = field(default_factory=lambda: [1, 2])
    service: str = "api"
    slo_ms: float = 100.0
    step_s: int = 15
    warmup_s: float = 3.0
    start_rps: float = 40.0
    growth: float = 1.15  # fine steps: an efficiency is the ratio of two knees, each this coarse
    max_steps: int = 16
    user_rps: float = 4.0  # paced: each user's rate; poisson: the most one user offers
    # Open loop by default: Poisson arrivals from at least `connections` simulated users, latency
    # from each request's due time (loadtests/pacing.py); "paced" is the closed loop of before.
    arrivals: str = "poisson"
    connections: int = MIN_CONNECTIONS
    # Knees reported besides the one at slo_ms (same steps: each is the highest achieved RPS
    # whose p99 is within that target).
    other_slos_ms: list[float] = field(default_factory=lambda: [30.0])
    processes: int = 1
    max_error_rate: float = 0.01
    confirm_retries: int = 1  # a breaking step is repeated this often to confirm the break
    replica_cpus: float = 0.0  # > 0: each replica's CPU quota in cores (cgroup); 0: no limit
    # Counts after the first start their steps at this fraction of the linear expectation
    # n x knee(1) (not below start_rps): no minutes spent far below the knee.
    start_fraction: float = 0.5


# Cores left to nginx, Redis and the load generator when the budget is chosen automatically:
# what they use at the knee plus a margin for other tenants (see README.md, "Why the defaults
# are what they are").
AUTO_RESERVED_CORES = 0.8
AUTO_MIN_CPUS = 0.2


def auto_replica_cpus(cores: int, replicas: list[int]) -> float:
    """A CPU budget per replica such that the largest count still leaves ``AUTO_RESERVED_CORES``
    to the rest of the stack, rounded down to 0.05 cores; 0 (no limit) when that would be below
    ``AUTO_MIN_CPUS`` or no cgroup quota can be set here."""
    per = math.floor(20 * (cores - AUTO_RESERVED_CORES) / max(replicas)) / 20
    if per < AUTO_MIN_CPUS:
        return 0.0
    try:
        CpuBudget.detect(per).release()
    except CpuBudgetError as exc:
        logger.warning("no CPU budget per replica: %s", exc)
        return 0.0
    return per


def first_step_rps(cfg: ScaleConfig, n: int, knees: dict[int, float]) -> float:
    """Where the steps for ``n`` replicas start: ``start_rps``, or for counts after the first
    ``start_fraction`` of n x knee(smallest count) per replica."""
    measured = {c: k for c, k in knees.items() if k and not math.isnan(k)}
    if not measured:
        return cfg.start_rps
    c = min(measured)
    return max(cfg.start_rps, cfg.start_fraction * n * measured[c] / c)


def _replica_word(n: int) -> str:
    return f"{n}_replica" if n == 1 else f"{n}_replicas"


def _replica_programs(settings: Settings, service: str) -> dict[str, int]:
    """The running replicas of ``service``: supervised program name -> pid."""
    return {name: pid for name, pid in program_pids(settings).items()
            if name.split("-", 1)[0] == service}


def _running_count(settings: Settings, service: str) -> int:
    return len(_replica_programs(settings, service))


def metric_ports(settings: Settings, service: str, replicas: int) -> list[int]:
    """Where the replicas of ``service`` answer /metrics."""
    if service == "api":
        return api_ports(settings, replicas)
    return stage_ports(settings, service, replicas)


def replica_pids(settings: Settings, service: str) -> dict[str, list[int]]:
    """The running replicas of ``service``: program name -> its pid and its children's."""
    return {name: tree_pids(pid) for name, pid in _replica_programs(settings, service).items()}


def step_cpu(run: LoadRun, stats: StepStats, warmup_s: float) -> dict[str, float]:
    """Mean cores per process group over the measured part of a step, and CPU ms per
    recommendation (cores / achieved RPS)."""
    out: dict[str, float] = {}
    samples = run.samples
    if len(samples) == 0 or stats.requests == 0:
        return out
    start = float(run.requests["start_s"].min()) + warmup_s
    window = samples[samples["t"] >= start]
    for group in CPU_GROUPS:
        col = f"cpu_cores_{group}"
        if col in window and window[col].notna().any():
            cores = float(window[col].mean())
            out[f"cpu_cores_{group}"] = cores
            out[f"cpu_ms_per_request_{group}"] = 1000 * cores / stats.achieved_rps \
                if stats.achieved_rps > 0 else math.nan
    for group in ("other", "machine"):  # whole-machine figures: cores only
        col = f"cpu_cores_{group}"
        if col in window and window[col].notna().any():
            out[col] = float(window[col].mean())
    return out


@dataclass
class _Bench:
    """What every step of the experiment works with: the stack's settings, the knobs, the CPU
    budget per replica (None: no limit), where the raw Locust runs go, and the console."""

    settings: Settings
    cfg: ScaleConfig
    budget: CpuBudget | None
    raw: Path
    console: Console


def run_scale(settings: Settings, cfg: ScaleConfig, console: Console | None = None) -> Path:
    """Run the experiment on the running native stack; returns the report folder."""
    console = console or Console(stderr=True)
    report = ReportFolder.create(settings, "scale", title=f"Scaling experiment: {cfg.service}")
    raw = report.path / "raw"
    original = _running_count(settings, cfg.service)
    rows: list[dict[str, Any]] = []
    knees: dict[int, float] = {}
    knee_rows: dict[int, dict[str, Any]] = {}
    loads: list[float] = []
    other_knees: dict[float, dict[int, tuple[float, float]]] = {}  # slo -> n -> (rps, p99)
    budget = CpuBudget.detect(cfg.replica_cpus) if cfg.replica_cpus > 0 else None
    bench = _Bench(settings, cfg, budget, raw, console)
    try:
        for n in cfg.replicas:
            with console.status(f"scaling {cfg.service} to {n} replica(s)"):
                runner.scale(settings, cfg.service, n)
                runner.wait_ready(settings, settings.stack.start_timeout_s)
            steps, count_rows = _steps_until_break(bench, n, first_step_rps(cfg, n, knees))
            rows += count_rows
            loads += [row["load_1m"] for row in count_rows]
            knee = find_knee(steps, cfg.slo_ms, cfg.max_error_rate)
            knees[n] = knee.achieved_rps if knee else math.nan
            for slo in cfg.other_slos_ms:
                other = find_knee(steps, slo, cfg.max_error_rate)
                other_knees.setdefault(slo, {})[n] = (
                    (other.achieved_rps, other.p99_ms) if other else (math.nan, math.nan))
            if knee:
                knee_rows[n] = next(r for r in rows if r["replicas"] == n
                                    and r["achieved_rps"] == knee.achieved_rps)
    finally:
        _release_and_scale_back(settings, cfg, budget, original)
    steps_df = pd.DataFrame(rows)
    eff = scaling_efficiency(knees)
    summary = _summary(cfg, knees, eff, knee_rows, loads)
    for slo, by_n in other_knees.items():
        for n, (rps, p99) in by_n.items():
            summary[f"max_rps_at_p99_{slo:g}ms_{_replica_word(n)}"] = _r(rps)
            summary[f"p99_ms_at_knee_{slo:g}ms_{_replica_word(n)}"] = _r(p99)
    _write_report(report, cfg, steps_df, knees, eff, knee_rows, summary)
    path = report.finish(summary, settings_used={**asdict(cfg), "serving_mode": settings.serving.mode,
                                                 "n_users": settings.sim.n_users,
                                                 "n_items": settings.sim.n_items})
    console.print(f"report: {path / 'report.md'}")
    return path


def _steps_until_break(bench: _Bench, n: int, rps: float
                       ) -> tuple[list[StepStats], list[dict[str, Any]]]:
    """With ``n`` replicas running: steps of offered load from ``rps``, growing by ``growth``,
    until a step breaks the SLO (and its repeat too, ``confirm_retries`` times) or
    ``max_steps``; returns every run's statistics and row (repeats included)."""
    cfg = bench.cfg
    ports = metric_ports(bench.settings, cfg.service, n)
    steps: list[StepStats] = []
    rows: list[dict[str, Any]] = []
    retries = cfg.confirm_retries
    i = run_index = 0  # i: offered-load step; run_index: Locust runs (repeats included)
    while i < cfg.max_steps:
        rps = clients_for(rps, cfg.arrivals, cfg.user_rps, cfg.connections).rps  # as offered
        stats, row, reason = _run_step(bench, n, i, run_index, rps, ports)
        run_index += 1
        steps.append(stats)
        rows.append(row)
        if reason and retries > 0:
            # On a shared machine one burst of someone else's work can break a p99 of a
            # few hundred samples: a break counts only if the repeated step breaks too.
            retries -= 1
            row["breaks_slo"] = f"{reason} (repeated to confirm)"
            continue
        if reason:
            break
        rps *= cfg.growth
        i += 1
        retries = cfg.confirm_retries
    return steps, rows


def _run_step(bench: _Bench, n: int, i: int, run_index: int, rps: float, ports: list[int]
              ) -> tuple[StepStats, dict[str, Any], str | None]:
    """One Locust run of ``step_s`` at ``rps`` offered (the replicas held to their CPU budget,
    their throttling counted), printed on the console; returns its statistics, its row of the
    steps table and why it breaks the SLO (None: it does not)."""
    settings, cfg, budget, console = bench.settings, bench.cfg, bench.budget, bench.console
    label = f"{n} replica(s), step {i + 1}/{cfg.max_steps}: {rps:.0f} RPS offered"
    replicas = replica_pids(settings, cfg.service)
    if budget is not None:  # again each step: a restarted replica has a new pid
        for name, pids in replicas.items():
            budget.limit(name, pids)
    before = {name: budget.stats(name) for name in replicas} if budget else {}
    clients = clients_for(rps, cfg.arrivals, cfg.user_rps, cfg.connections)
    with console.status(f"{label} for {cfg.step_s}s"):
        run = run_load(
            settings, bench.raw / f"r{n}-s{run_index}", users=clients.users,
            duration_s=cfg.step_s, user_rps=clients.user_rps, processes=cfg.processes,
            metric_ports=lambda ports=ports: ports, arrivals=cfg.arrivals,
        )
    stats = step_stats(run.requests, rps, cfg.warmup_s)
    cpu = step_cpu(run, stats, cfg.warmup_s)
    if budget is not None and before:
        deltas = [budget.stats(name) - b for name, b in before.items()]
        cpu["throttled_fraction"] = sum(d.throttled_fraction for d in deltas) / len(deltas)
    reason = breaks_slo(stats, cfg.slo_ms, cfg.max_error_rate)
    locust_cores = cpu.get("cpu_cores_locust", math.nan)
    row = {"replicas": n, "step": i, **stats.as_dict(), **cpu,
           "users": clients.users, "arrivals": cfg.arrivals,
           "generator_saturated": bool(locust_cores >= 0.85 * cfg.processes),
           "breaks_slo": reason or "", "load_1m": _load1()}
    console.print(
        f"{label}: {stats.achieved_rps:6.1f} RPS, p50 {stats.p50_ms:5.1f} ms, "
        f"p99 {stats.p99_ms:6.1f} ms, errors {stats.error_rate:.2%}, "
        f"degraded {stats.degraded_rate:.2%}, "
        + (f"send lag p99 {stats.lag_p99_ms:.1f} ms, " if cfg.arrivals == "poisson" else "")
        + ("[yellow]achieved off offered by > 2%[/yellow], " if stats.rate_off else "")
        + f"{cfg.service} CPU {cpu.get(f'cpu_cores_{cfg.service}', math.nan):.2f} cores, "
        f"Locust {locust_cores:.2f} cores, other tenants "
        f"{cpu.get('cpu_cores_other', math.nan):.2f} cores"
        + (f", quota used up in {cpu['throttled_fraction']:.0%} of periods"
           if "throttled_fraction" in cpu else "")
        + (f"  [red]{reason}[/red]" if reason else "")
    )
    return stats, row, reason


def _release_and_scale_back(settings: Settings, cfg: ScaleConfig, budget: CpuBudget | None,
                            original: int) -> None:
    """Release the CPU budgets and give the service back the replica count it had (a warning,
    not an error, when that fails: the report is still written)."""
    if budget is not None:
        budget.release()
    if original and original != (cfg.replicas[-1] if cfg.replicas else original):
        try:
            runner.scale(settings, cfg.service, original)
            runner.wait_ready(settings, settings.stack.start_timeout_s)
        except Exception:
            logger.warning("could not scale %s back to %d", cfg.service, original,
                           exc_info=True)


def _load1() -> float:
    load = load_average()
    return load[0] if load else math.nan


def _summary(cfg: ScaleConfig, knees: dict[int, float], eff: dict[int, float],
             knee_rows: dict[int, dict[str, Any]], loads: list[float]) -> dict[str, Any]:
    s: dict[str, Any] = {"service": cfg.service, "slo_p99_ms": cfg.slo_ms,
                         "arrivals": cfg.arrivals,
                         "connections_min": cfg.connections if cfg.arrivals == "poisson" else None,
                         "replica_counts": cfg.replicas, "step_s": cfg.step_s,
                         "replica_cpu_budget_cores": cfg.replica_cpus or None}
    for n, knee in knees.items():
        w = _replica_word(n)
        s[f"max_rps_at_slo_{w}"] = _r(knee)
        row = knee_rows.get(n, {})
        for key in ("p50_ms", "p95_ms", "p99_ms"):
            s[f"{key.removesuffix('_ms')}_ms_at_knee_{w}"] = _r(row.get(key, math.nan))
        for group in CPU_GROUPS:
            if f"cpu_ms_per_request_{group}" in row:
                s[f"cpu_ms_per_request_{group}_at_knee_{w}"] = _r(row[f"cpu_ms_per_request_{group}"])
                s[f"cpu_cores_{group}_at_knee_{w}"] = _r(row[f"cpu_cores_{group}"])
        s[f"generator_saturated_at_knee_{w}"] = bool(row.get("generator_saturated", False))
        if "throttled_fraction" in row:
            s[f"quota_throttled_period_fraction_at_knee_{w}"] = _r(row["throttled_fraction"])
    other = [r.get("cpu_cores_other") for r in knee_rows.values() if r.get("cpu_cores_other")]
    if other:
        s["other_tenants_cpu_cores_at_knees_mean"] = _r(sum(other) / len(other))
    for n, e in eff.items():
        if n != 1:
            s[f"scaling_efficiency_1_to_{n}"] = _r(e)
    finite = [x for x in loads if not math.isnan(x)]
    s["load_average_1m_mean"] = _r(sum(finite) / len(finite)) if finite else None
    s["load_average_1m_max"] = _r(max(finite)) if finite else None
    return s


def _r(x: Any, nd: int = 3) -> Any:
    if isinstance(x, float):
        return None if math.isnan(x) else round(x, nd)
    return x


def _write_report(report: ReportFolder, cfg: ScaleConfig, steps: pd.DataFrame,
                  knees: dict[int, float], eff: dict[int, float],
                  knee_rows: dict[int, dict[str, Any]], summary: dict[str, Any]) -> None:
    load = (f"open loop: Poisson arrivals from at least {cfg.connections} simulated users "
            "(connections), each latency measured from the request's due time, so a stall "
            "counts for every request due during it"
            if cfg.arrivals == "poisson" else
            f"closed loop: {cfg.user_rps:g} requests/s per simulated user, paced; latency from "
            "the actual send")
    report.text(
        f"Offered load ({load}) "
        f"grows x{cfg.growth:g} every {cfg.step_s} s step (the first {cfg.warmup_s:g} s of each "
        f"step are not measured) until p99 of `GET /recommendations` exceeds the SLO of "
        f"{cfg.slo_ms:.0f} ms, errors exceed {cfg.max_error_rate:.0%}, or less than 90% of the "
        f"offered load is delivered; a breaking step is repeated (up to {cfg.confirm_retries} "
        "time(s)) and counts only if the repeat breaks too: the machine is shared. The knee is the highest achieved RPS within the SLO. "
        f"Locust ran as {cfg.processes} process(es); its CPU is measured so that a saturated "
        "generator is not read as a saturated service."
    )
    if cfg.replica_cpus:
        report.text(
            f"**CPU budget per replica: {cfg.replica_cpus:g} cores** (a cgroup CFS quota each, "
            "10 ms period, like a pod's CPU limit): n replicas had n times the CPU of one, and "
            "the rest of the machine was left to nginx, Redis and the load generator. The column "
            "`throttled_fraction` is the share of 10 ms periods in which a replica used its whole "
            "quota: near the knee it rises, i.e. the replica is bound by its budget. Run with "
            "`--replica-cpus 0` to let the replicas share the whole machine instead."
        )
    table = [{"replicas": n, "max RPS at SLO": knees[n],
              "p99 at knee (ms)": knee_rows.get(n, {}).get("p99_ms"),
              **{f"max RPS at p99 ≤ {slo:g} ms": summary.get(
                  f"max_rps_at_p99_{slo:g}ms_{_replica_word(n)}") for slo in cfg.other_slos_ms},
              f"{cfg.service} CPU ms/request": knee_rows.get(n, {}).get(
                  f"cpu_ms_per_request_{cfg.service}"),
              "Locust cores": knee_rows.get(n, {}).get("cpu_cores_locust"),
              **({"quota throttled": knee_rows.get(n, {}).get("throttled_fraction")}
                 if cfg.replica_cpus else {}),
              "efficiency": eff.get(n)} for n in sorted(knees)]
    report.table(table)
    if len(steps):
        report.csv("steps", steps)
        report.figure("latency_curves", plots.latency_curves(steps, knees, cfg.slo_ms),
                      "p50/p95/p99 against achieved RPS per replica count; red: the SLO, "
                      "green: the knee.")
        report.figure("throughput", plots.throughput(steps), "Achieved against offered RPS.")
        report.figure("cpu_per_request", plots.cpu_per_request(steps),
                      "CPU milliseconds per recommendation by process group (from /proc).")
        report.figure("efficiency", plots.efficiency(knees, eff),
                      "Knee RPS per replica count against linear scaling.")
        cols = ["replicas", "offered_rps", "achieved_rps", "p50_ms", "p95_ms", "p99_ms",
                "error_rate", *[c for c in steps.columns if c.startswith("cpu_cores_")],
                "throttled_fraction", "breaks_slo"]
        report.text("### Every step")
        report.table(steps[[c for c in cols if c in steps]].to_dict("records"))
    report.text(explain_efficiency(cfg, knees, eff, knee_rows))


def explain_efficiency(cfg: ScaleConfig, knees: dict[int, float], eff: dict[int, float],
                       knee_rows: dict[int, dict[str, Any]]) -> str:
    """Why the efficiency is what it is, in the measured numbers."""
    lines = ["## Why the scaling efficiency falls where it falls"]
    if cfg.replica_cpus:
        lines.append(
            f"- **CPU budget**: each replica had {cfg.replica_cpus:g} cores; the service had "
            + ", ".join(f"{n * cfg.replica_cpus:g} cores with {n}" for n in sorted(knees))
            + ". The budget makes a replica a fixed unit of capacity, so the knee per replica "
            "is what a capacity plan multiplies; what is left of the efficiency's shortfall is "
            "the shared part: nginx, Redis and the generator on the remaining cores, and "
            "balancing."
        )
    for n in sorted(knee_rows):
        row = knee_rows[n]
        groups = [(g, row.get(f"cpu_cores_{g}")) for g in CPU_GROUPS]
        used = [(g, c) for g, c in groups if c is not None and not math.isnan(c)]
        total = sum(c for _, c in used)
        parts = ", ".join(f"{g} {c:.2f}" for g, c in used)
        other = row.get("cpu_cores_other")
        others = (f"; other processes on the machine (other tenants) took {other:.2f} cores"
                  if other is not None and not math.isnan(other) else "")
        lines.append(
            f"- At the knee with {n} replica(s) ({knees[n]:.0f} RPS) the cores went to: {parts} "
            f"(total {total:.2f} of the machine's 2 cores){others}."
        )
        api = row.get(f"cpu_cores_{cfg.service}") or 0.0
        machine = row.get("cpu_cores_machine")
        busy = machine is not None and (machine >= 1.8 or (other or 0.0) >= 1.0)
        if busy and api < 0.7 * n:
            lines.append(
                f"  The machine was busy ({machine:.2f} of 2 cores, {other or 0.0:.2f} of them "
                f"outside the stack) while the "
                f"{cfg.service} replicas used only {api:.2f} cores: latency here is time spent "
                "waiting for a core, not work; the knee measures the machine's spare CPU more "
                f"than the service (at {row.get(f'cpu_ms_per_request_{cfg.service}', 0):.1f} CPU "
                "ms per request one free core would serve "
                f"~{1000 / max(row.get(f'cpu_ms_per_request_{cfg.service}') or 1, 0.1):.0f} RPS)."
            )
    for n in sorted(knees):
        if n not in knee_rows:
            lines.append(f"- With {n} replica(s) even the first step broke the SLO: no knee "
                         "(a lower `--start-rps` finds it, if the machine allows one).")
    if cfg.replica_cpus:
        used = [f"{row.get(f'cpu_cores_{cfg.service}', 0.0) / (n * cfg.replica_cpus):.0%} with {n}"
                for n, row in sorted(knee_rows.items())]
        lines.append(
            "- **Budget used at the knee**: " + ", ".join(used) + " of the replicas' quota. "
            "Where more replicas reach their knee at a lower share of their budget, they waited "
            "for a core, not for quota: the budgets and the shared processes together come "
            "closer to the machine's 2 cores, and a replica with quota left still queues behind "
            "nginx, Redis or the generator.")
    else:
        lines.append(
            "- **2 cores**: every replica, nginx, Redis and the load generator share the same two "
            "cores, so a second replica adds a process but no core. Once the measured CPU total "
            "nears 2 cores, the extra replica only helps while one replica alone was waiting "
            "(on Redis, on its event loop) rather than computing. A CPU budget per replica "
            "(`--replica-cpus`) measures scaling with the CPU that each replica brings.")
    lines += [
        "- **The generator**: Locust's simulated users (ground-truth clicks, event batches) cost "
        "CPU per request on the same cores; its share grows with the offered load. When its "
        "process nears one core (`generator_saturated`), the latency it measures includes its "
        "own queueing.",
        "- **Redis** is one single-threaded process serving every replica's user-feature reads "
        "and event appends; its CPU per request is small but it serializes them.",
        "- **nginx** (the balancer) adds a proxy hop and its own CPU per request, the same for "
        "one or many replicas; least_conn balancing is near-perfect at these rates.",
    ]
    lines.append(
        f"- **Step granularity**: the offered load grows x{cfg.growth:g} per step, so each knee "
        f"is known to within that factor; an efficiency is the ratio of two such knees."
    )
    e2 = eff.get(2)
    if e2 is not None and not math.isnan(e2):
        verdict = "meets" if e2 >= 0.8 else "misses"
        lines.append(f"- Measured efficiency 1→2: **{e2:.2f}** ({verdict} the ≥ 0.8 target).")
    return "\n".join(lines)


def compare_arrivals(settings: Settings, cfg: ScaleConfig, modes: list[str],
                     console: Console | None = None) -> Path:
    """The experiment once per arrival mode (``cfg`` otherwise unchanged), one after the other
    in this run, and a report with their knees side by side; returns its folder."""
    console = console or Console(stderr=True)
    runs = {}
    for mode in modes:
        console.print(f"[bold]arrivals: {mode}[/bold]")
        path = run_scale(settings, replace(cfg, arrivals=mode), console)
        runs[mode] = (path, json.loads((path / "summary.json").read_text()))
    report = ReportFolder.create(settings, "scale-arrivals",
                                 title="Knees by arrival process: open vs closed loop")
    report.text(
        "The same stepped experiment once per arrival process, one after the other: `poisson` "
        f"is open loop (Poisson arrivals from at least {cfg.connections} simulated users, "
        "latency from each request's due time), `paced` the closed loop of earlier runs "
        f"({cfg.user_rps:g} requests/s per user, latency from the actual send). Each run's own "
        "report holds its steps and plots: " + ", ".join(
            f"`{m}`: {p}" for m, (p, _) in runs.items()) + ".")
    rows = []
    for n in cfg.replicas:
        w = _replica_word(n)
        for mode, (_, summary) in runs.items():
            row = {"replicas": n, "arrivals": mode,
                   f"max RPS at p99 ≤ {cfg.slo_ms:g} ms": summary.get(f"max_rps_at_slo_{w}"),
                   "p50 at knee (ms)": summary.get(f"p50_ms_at_knee_{w}"),
                   "p99 at knee (ms)": summary.get(f"p99_ms_at_knee_{w}")}
            for slo in cfg.other_slos_ms:
                row[f"max RPS at p99 ≤ {slo:g} ms"] = summary.get(f"max_rps_at_p99_{slo:g}ms_{w}")
            row[f"{cfg.service} CPU ms/request"] = summary.get(
                f"cpu_ms_per_request_{cfg.service}_at_knee_{w}")
            rows.append(row)
    report.table(rows)
    path = report.finish({m: s for m, (_, s) in runs.items()},
                         settings_used={**asdict(cfg), "arrivals": modes})
    console.print(f"report: {path / 'report.md'}")
    return path
