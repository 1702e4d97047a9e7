"""``recstack capacity``: from the measured per-replica figures to replicas, memory and cost.

Reads the latest scale report (knee per replica count, CPU per request by process group), fits
an M/M/c model to the 1-replica knee, checks it against the measured 2-replica knee, and sizes
the api tier, the balancer and Redis for a target QPS and p99. Redis memory per user and per
item is measured on the running stack's Redis (``MEMORY USAGE`` of sampled Feast entity keys)
when it answers. Everything the plan assumes is written into the report.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import redis
from rich.console import Console

from app.experiments.loadlab import mmc
from app.experiments.loadlab.plots import _plt
from app.experiments.report import ReportFolder, latest
from recstack.settings import Settings

logger = logging.getLogger(__name__)

# Used when the stack's Redis does not answer (stated as not measured in the report).
DEFAULT_BYTES_PER_USER = 400.0
DEFAULT_BYTES_PER_ITEM = 600.0
REDIS_OVERHEAD = 1.3  # allocator fragmentation and replication buffers on top of MEMORY USAGE
TARGET_UTILIZATION = 0.7  # for the single-threaded or shared parts sized by CPU (nginx, Redis)
API_REPLICA_RSS_GIB_DEFAULT = 0.5
API_MAX_UTILIZATION = 0.8  # planned api replicas run at most this busy
# Other tenants' mean cores during the scale run above which its knees say more about them.
OTHER_TENANTS_SATURATED_CORES = 1.0


class CapacityError(RuntimeError):
    """No usable scale report (the message says which command produces one)."""


@dataclass(frozen=True)
class CapacityTarget:
    qps: float
    p99_ms: float
    users: int
    items: int
    core_hour_usd: float = 0.04
    gib_hour_usd: float = 0.005


def fit_service_rate(knee_rps: float, slo_s: float) -> float:
    """mu such that one M/M/1 server has p99 == SLO exactly at the measured knee:
    ``ln(100) / (mu - lam) = slo``  =>  ``mu = lam + ln(100) / slo``."""
    return knee_rps + math.log(100) / slo_s


def plan(summary: dict[str, Any], target: CapacityTarget,
         redis_bytes: tuple[float, float, bool]) -> dict[str, Any]:
    """The plan's figures from a scale summary (pure; see the module docstring)."""
    knee1 = summary.get("max_rps_at_slo_1_replica")
    if not knee1:
        raise CapacityError("the latest scale report has no 1-replica knee; run "
                            "`recstack experiment scale --replicas 1,2` first")
    slo_s = float(summary.get("slo_p99_ms", 100.0)) / 1000
    p99_s = target.p99_ms / 1000
    mu = fit_service_rate(float(knee1), slo_s)
    out: dict[str, Any] = {
        "target_qps": target.qps, "target_p99_ms": target.p99_ms,
        "measured_slo_p99_ms": slo_s * 1000,
        "measured_max_rps_at_slo_1_replica": knee1,
        "api_service_rate_per_replica_rps": round(mu, 2),
        "api_mean_service_time_ms": round(1000 / mu, 3),
    }
    cpu_ms = summary.get("cpu_ms_per_request_api_at_knee_1_replica")
    # A replica measured under a CPU budget is a unit of that many cores; else one whole core.
    replica_cores = float(summary.get("replica_cpu_budget_cores") or 1.0)
    out["api_cores_per_replica"] = replica_cores
    if cpu_ms:
        out["api_cpu_ms_per_request"] = cpu_ms
        out["api_service_rate_from_cpu_rps"] = round(replica_cores * 1000 / cpu_ms, 2)
    out |= _check_against_measured_knees(summary, mu, slo_s)
    replicas, api_tier = _api_replicas_fitted(summary, target, float(knee1), mu, p99_s)
    out |= api_tier
    out["api_replicas_needed_fitted_model"] = replicas
    other = summary.get("other_tenants_cpu_cores_at_knees_mean") or 0.0
    out["other_tenants_cpu_cores_during_scale"] = other
    out["plan_model"] = "fitted to the knee"
    if cpu_ms and replica_cores * 1000 / cpu_ms > mu:
        replicas, cpu_model = _api_replicas_cpu_model(target, p99_s, cpu_ms, replica_cores,
                                                      other, replicas)
        out |= cpu_model
    api_cores = replicas * replica_cores  # one uvicorn worker: a core, or its budget
    # The balancer and Redis, sized by their measured CPU per request.
    nginx_ms = summary.get("cpu_ms_per_request_nginx_at_knee_1_replica")
    nginx_cores = math.ceil(target.qps * nginx_ms / 1000 / TARGET_UTILIZATION) if nginx_ms else 0
    redis_ms = summary.get("cpu_ms_per_request_redis_at_knee_1_replica")
    redis_cores = target.qps * redis_ms / 1000 if redis_ms else 0.0
    redis_shards = max(1, math.ceil(redis_cores / TARGET_UTILIZATION))
    out |= {"nginx_cpu_ms_per_request": nginx_ms, "nginx_cores_needed": nginx_cores,
            "redis_cpu_ms_per_request": redis_ms, "redis_cores_busy": round(redis_cores, 2),
            "redis_shards_needed": redis_shards}
    per_user, per_item, measured = redis_bytes
    redis_gib = (target.users * per_user + target.items * per_item) * REDIS_OVERHEAD / 2**30
    shards_for_memory = max(1, math.ceil(redis_gib / 25))  # <= 25 GiB per shard
    redis_shards = max(redis_shards, shards_for_memory)
    out |= {"redis_bytes_per_user": round(per_user, 1), "redis_bytes_per_item": round(per_item, 1),
            "redis_bytes_measured": measured, "redis_memory_gib": round(redis_gib, 2),
            "redis_shards_needed": redis_shards}
    total_cores = api_cores + nginx_cores + redis_shards
    memory_gib = redis_gib + replicas * API_REPLICA_RSS_GIB_DEFAULT
    per_hour = total_cores * target.core_hour_usd + memory_gib * target.gib_hour_usd
    out |= {"total_cores": total_cores, "total_memory_gib": round(memory_gib, 1),
            "cost_usd_per_hour": round(per_hour, 2), "cost_usd_per_month": round(per_hour * 730)}
    return out


def _check_against_measured_knees(summary: dict[str, Any], mu: float, slo_s: float
                                  ) -> dict[str, Any]:
    """M/M/c's knee for each measured multi-replica count, against the measured knee."""
    out: dict[str, Any] = {}
    for key, value in summary.items():
        if key.startswith("max_rps_at_slo_") and value and not key.endswith("_1_replica"):
            n = int(key.removeprefix("max_rps_at_slo_").split("_")[0])
            predicted = mmc.max_rate_at_slo(mu, n, slo_s)
            out[f"mmc_predicted_max_rps_at_slo_{n}_replicas"] = round(predicted, 1)
            out[f"measured_max_rps_at_slo_{n}_replicas"] = value
            out[f"measured_over_predicted_{n}_replicas"] = round(value / predicted, 3)
    return out


def _api_replicas_fitted(summary: dict[str, Any], target: CapacityTarget, knee1: float,
                         mu: float, p99_s: float) -> tuple[int, dict[str, Any]]:
    """The api tier with mu fitted to the knee: the fewest M/M/c replicas meeting the p99 target,
    at most ``API_MAX_UTILIZATION`` busy; with the independent-M/M/1 and measured-efficiency
    bounds. Returns the replicas and the figures."""
    out: dict[str, Any] = {}
    try:
        replicas = mmc.servers_needed(target.qps, mu, p99_s)
    except ValueError as exc:
        raise CapacityError(f"the p99 target cannot be met by adding replicas: {exc}") from exc
    out["api_replicas_needed_mmc_pooled"] = replicas
    # Pooling (one shared queue) is the model's optimism at large c: it allows ~100% utilization.
    # A balancer keeps a queue per replica; headroom also absorbs a lost replica. Cap utilization.
    capped = math.ceil(target.qps / (API_MAX_UTILIZATION * mu))
    # The pessimistic bound: independent M/M/1 queues, each loaded to its own knee.
    out["api_replicas_needed_independent_mm1"] = math.ceil(
        target.qps / mmc.max_rate_at_slo(mu, 1, p99_s)) if mmc.max_rate_at_slo(mu, 1, p99_s) else None
    replicas = max(replicas, capped)
    out["api_replicas_needed"] = replicas
    out["api_utilization_at_target"] = round(target.qps / (replicas * mu), 3)
    out["api_p99_ms_predicted"] = round(1000 * mmc.response_time_quantile(
        0.99, target.qps, mu, replicas), 2)
    eff = summary.get("scaling_efficiency_1_to_2")
    if eff:
        shared = math.ceil(target.qps / (knee1 * float(eff)))
        out["api_replicas_needed_at_measured_efficiency"] = shared
    return replicas, out


def _api_replicas_cpu_model(target: CapacityTarget, p99_s: float, cpu_ms: float,
                            replica_cores: float, other: float, replicas: int
                            ) -> tuple[int, dict[str, Any]]:
    """The same plan with mu from the api's own CPU per request (a dedicated core per replica).
    When other tenants held the measured machine's cores, the fitted mu measures their load
    more than the service: the plan then goes by the CPU model (both are reported). Returns the
    plan's replicas (``replicas``, the fitted model's, unless it goes by the CPU model) and the
    figures."""
    out: dict[str, Any] = {}
    mu_cpu = replica_cores * 1000 / cpu_ms
    try:
        cpu_replicas = max(mmc.servers_needed(target.qps, mu_cpu, p99_s),
                           math.ceil(target.qps / (API_MAX_UTILIZATION * mu_cpu)))
    except ValueError:
        cpu_replicas = None
    out["api_replicas_needed_cpu_model"] = cpu_replicas
    if cpu_replicas and other >= OTHER_TENANTS_SATURATED_CORES:
        replicas, mu = cpu_replicas, mu_cpu
        out["plan_model"] = "CPU per request (the machine was saturated by other tenants)"
        out["api_replicas_needed"] = replicas
        out["api_utilization_at_target"] = round(target.qps / (replicas * mu), 3)
        out["api_p99_ms_predicted"] = round(1000 * mmc.response_time_quantile(
            0.99, target.qps, mu, replicas), 2)
    return replicas, out


def measure_redis_bytes(settings: Settings, sample: int = 300) -> tuple[float, float, bool]:
    """Mean ``MEMORY USAGE`` bytes of a Feast user entity hash and item entity hash in the
    stack's Redis; the defaults (and False) when it does not answer or holds none."""
    try:
        password = settings.redis.secret()
        client = redis.Redis(host=settings.redis.host, port=settings.redis.port,
                             password=password, socket_timeout=2)
        users: list[int] = []
        items: list[int] = []
        for key in client.scan_iter(count=500, _type="HASH"):
            size = client.memory_usage(key, samples=0) or 0
            if b"user_id" in key and len(users) < sample:
                users.append(size)
            elif b"item_id" in key and len(items) < sample:
                items.append(size)
            if len(users) >= sample and len(items) >= sample:
                break
    except Exception as exc:  # no Redis here: the plan uses stated defaults
        logger.info("Redis not measured (%s); using default bytes per entity", exc)
        return DEFAULT_BYTES_PER_USER, DEFAULT_BYTES_PER_ITEM, False
    if not users or not items:
        return DEFAULT_BYTES_PER_USER, DEFAULT_BYTES_PER_ITEM, False
    return sum(users) / len(users), sum(items) / len(items), True


MODEL_TEXT = """## The model

Each api replica is one uvicorn worker process: one event loop on one core (or, when the scale
run gave each replica a CPU budget, on that many cores: `api_cores_per_replica`), so it is
modelled as **one server** of an **M/M/c queue** (c = replicas behind the balancer):

- arrivals are Poisson at the target rate λ; service times are exponential with mean 1/μ;
  requests are served first come, first served; the balancer spreads load evenly (one shared
  queue — least_conn approximates it);
- μ is **fitted to the measured 1-replica knee** λ₁ at the SLO: an M/M/1 queue has
  p99 = ln(100)/(μ − λ), so μ = λ₁ + ln(100)/SLO. This folds in everything that slowed one
  replica on the measured machine (Redis round trips, the balancer hop, GC), not only CPU;
- the probability of waiting is Erlang C, C(c, a) with a = λ/μ; the response time is the wait
  (0 with probability 1 − C, else exponential with rate cμ − λ) plus the service, whose p99 is
  found numerically (`app/experiments/loadlab/mmc.py`); the fewest c with p99 ≤ the target is
  `api_replicas_needed_mmc_pooled`;
- one shared queue is the model's optimism at large c (it lets ~100 % of the capacity be used):
  a balancer keeps a queue per replica, and a lost replica needs headroom. The plan
  (`api_replicas_needed`) therefore also caps utilization at 80 %; the pessimistic bound
  `api_replicas_needed_independent_mm1` treats the replicas as independent M/M/1 queues, each
  loaded up to its own knee;
- a second estimate takes μ from the api's own CPU per request (μ = 1 / CPU seconds per
  request: a replica with a dedicated core, no waiting for one). When other tenants held a core
  or more of the measuring machine during the scale run, the fitted μ measures their load more
  than the service, and the plan (`plan_model`) goes by the CPU estimate; both are listed;
- each replica gets a core of its own in the plan (the measurement machine shares 2 cores between
  every replica, the balancer, Redis and the load generator — which is why measured 2-replica
  throughput falls short of the model there; the check below shows by how much);
- nginx and Redis are sized by their measured CPU per request at a utilization of 70 %; Redis is
  single-threaded, so its cores are shards (Redis Cluster), and a shard holds at most 25 GiB;
- Redis memory = (users × bytes per user + items × bytes per item) × 1.3 (allocator overhead);
  bytes per entity from `MEMORY USAGE` of the Feast hashes on the running stack when it answers;
- cost = cores × the core-hour price + memory × the GiB-hour price (on-demand list prices vary;
  both are flags); api replicas are counted at 0.5 GiB each; no redundancy (N+1, zones) is added.
"""


def run_capacity(settings: Settings, target: CapacityTarget, console: Console | None = None):
    """Plan from the latest scale report; prints the plan and writes a ``capacity`` report."""
    console = console or Console()
    folder = latest(settings, "scale")
    if folder is None:
        raise CapacityError(f"no scale report under {settings.reports_dir}; run "
                            "`recstack experiment scale --replicas 1,2` first")
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError) as exc:
        raise CapacityError(f"unreadable {folder / 'summary.json'}: {exc}") from exc
    redis_bytes = measure_redis_bytes(settings)
    figures = plan(summary, target, redis_bytes)
    figures["scale_report"] = folder.name
    report = ReportFolder.create(settings, "capacity",
                                 title=f"Capacity plan: {target.qps:,.0f} QPS at p99 ≤ "
                                       f"{target.p99_ms:.0f} ms")
    report.text(f"From the scale report `{folder.name}` (service `{summary.get('service')}`, "
                f"SLO {summary.get('slo_p99_ms')} ms).")
    report.text(MODEL_TEXT)
    rows = [{"figure": k, "value": v} for k, v in figures.items()]
    report.table(rows)
    report.figure("mmc_check", _check_figure(summary, figures),
                  "M/M/c p99 against arrival rate for 1 and 2 replicas (μ fitted to the "
                  "1-replica knee) and the measured knees.")
    check = [k for k in figures if k.startswith("measured_over_predicted_")]
    if check:
        report.text("### Check against the measured 1→2 replica result\n" + "\n".join(
            f"- {k.removeprefix('measured_over_predicted_').replace('_', ' ')}: measured "
            f"{figures['measured_max_rps_at_slo_' + k.split('_')[-2] + '_replicas']} RPS vs "
            f"predicted {figures['mmc_predicted_max_rps_at_slo_' + k.split('_')[-2] + '_replicas']}"
            f" RPS (ratio {figures[k]})" for k in check)
            + "\n\nA ratio below 1 is the cost of sharing 2 cores; the plan assumes a core per "
              "replica. `api_replicas_needed_at_measured_efficiency` is the pessimistic bound "
              "(every replica as inefficient as here).")
    path = report.finish(figures, settings_used=asdict(target))
    console.print(f"api replicas: {figures['api_replicas_needed']} "
                  f"(p99 {figures['api_p99_ms_predicted']} ms, utilization "
                  f"{figures['api_utilization_at_target']}); nginx cores "
                  f"{figures['nginx_cores_needed']}; Redis shards {figures['redis_shards_needed']}"
                  f" ({figures['redis_memory_gib']} GiB); {figures['total_cores']} cores, "
                  f"${figures['cost_usd_per_hour']}/h, ${figures['cost_usd_per_month']}/month")
    console.print(f"report: {path / 'report.md'}")
    return path


def _check_figure(summary: dict[str, Any], figures: dict[str, Any]) -> Any:
    plt = _plt()
    mu = figures["api_service_rate_per_replica_rps"]
    slo_s = figures["measured_slo_p99_ms"] / 1000
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in (1, 2):
        lams = [mu * c * f / 100 for f in range(1, 99)]
        ax.plot(lams, [1000 * mmc.response_time_quantile(0.99, lam, mu, c) for lam in lams],
                label=f"M/M/{c} p99")
        key = "max_rps_at_slo_1_replica" if c == 1 else "max_rps_at_slo_2_replicas"
        if summary.get(key):
            ax.plot([summary[key]], [slo_s * 1000], "o", ms=9, label=f"measured knee, {c}")
    ax.axhline(slo_s * 1000, color="red", ls="--", lw=1, label="SLO")
    ax.set_yscale("log")
    ax.set_xlabel("arrival rate (RPS)")
    ax.set_ylabel("p99 (ms)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
