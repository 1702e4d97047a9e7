"""Commands of the load-testing lab: ``recstack experiment scale|chaos`` and ``recstack capacity``.

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

import os
from typing import Annotated

import typer


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise typer.BadParameter(f"expected replica counts like 1,2,4, got {text!r}")
    return values


def _cpus(text: str, counts: list[int]) -> float:
    """``--replica-cpus``: 'auto' or cores >= 0."""
    from app.experiments.loadlab.scale import auto_replica_cpus

    if text.strip().lower() == "auto":
        return auto_replica_cpus(os.cpu_count() or 1, counts)
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise typer.BadParameter(f"expected 'auto' or cores >= 0 (e.g. 0.6), got {text!r}")
    return value


def scale(
    replicas: Annotated[str, typer.Option(help="replica counts to measure, e.g. 1,2,4")] = "1,2",
    service: Annotated[str, typer.Option(help="the service to scale (api, ranking, candidates)")]
    = "api",
    slo_ms: Annotated[float, typer.Option(help="p99 SLO of GET /recommendations, ms")] = 100.0,
    step_s: Annotated[int, typer.Option(help="seconds per offered-load step")] = 15,
    start_rps: Annotated[float, typer.Option(help="offered RPS of the first step")] = 40.0,
    growth: Annotated[float, typer.Option(help="offered load multiplier per step")] = 1.15,
    max_steps: Annotated[int, typer.Option(help="steps per replica count at most")] = 16,
    processes: Annotated[int, typer.Option(help="Locust processes (>1: master + forked workers)")]
    = 1,
    user_rps: Annotated[float, typer.Option(
        help="paced: requests/s per simulated user; poisson: the most one user offers")]
    = 4.0,
    arrivals: Annotated[str, typer.Option(
        help="poisson (open loop, latency from each request's due time), paced (closed loop), "
             "or poisson,paced: both, one after the other, knees side by side")]
    = "poisson",
    connections: Annotated[int, typer.Option(
        help="poisson: at least this many simulated users (connections)")] = 100,
    replica_cpus: Annotated[str, typer.Option(
        help="CPU quota per replica in cores (a cgroup each, like a pod's CPU limit), so n "
             "replicas get n times the CPU of one; 'auto': (cores - 0.8) / max replicas where "
             "cgroups allow; 0: no limit, the replicas share the machine")]
    = "auto",
) -> None:
    """Step the offered load per replica count until p99 breaks the SLO; report the knee, the
    latency curves, CPU per request and the scaling efficiency RPS(n) / (n * RPS(1))."""
    from app.experiments.loadlab.cpubudget import CpuBudgetError
    from app.experiments.loadlab.loadgen import ARRIVALS
    from app.experiments.loadlab.scale import ScaleConfig, compare_arrivals, run_scale
    from app.stack.loadtest import LoadTestError
    from app.stack.supervisor import StackError
    from recstack.logs import configure_logging
    from recstack.settings import get_settings

    counts = _ints(replicas)
    cpus = _cpus(replica_cpus, counts)
    modes = [m.strip() for m in arrivals.split(",") if m.strip()]
    if not modes or any(m not in ARRIVALS for m in modes) or len(set(modes)) < len(modes):
        raise typer.BadParameter(f"--arrivals: one or more of {', '.join(ARRIVALS)}, "
                                 f"got {arrivals!r}")
    if (step_s < 5 or start_rps <= 0 or growth <= 1 or max_steps < 1 or processes < 1
            or user_rps <= 0 or connections < 1):
        raise typer.BadParameter("need step-s >= 5, start-rps > 0, growth > 1, max-steps >= 1, "
                                 "processes >= 1, user-rps > 0, connections >= 1")
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    cfg = ScaleConfig(replicas=counts, service=service, slo_ms=slo_ms, step_s=step_s,
                      start_rps=start_rps, growth=growth, max_steps=max_steps,
                      processes=processes, user_rps=user_rps, replica_cpus=cpus,
                      arrivals=modes[0], connections=connections)
    try:
        if len(modes) == 1:
            run_scale(settings, cfg)
        else:
            compare_arrivals(settings, cfg, modes)
    except (StackError, LoadTestError, CpuBudgetError) as exc:
        _fail(str(exc))


def chaos(
    fault: Annotated[str, typer.Option(
        help="kill-replica | stop-redis | slow-redis | kill-ranking | stop-mlflow | overload")],
    rps: Annotated[float, typer.Option(
        help="offered RPS (default: 50% of the latest scale report's knee; overload: 2x it)")]
    = 0.0,
    pre_s: Annotated[int, typer.Option(help="seconds of load before the fault")] = 10,
    fault_s: Annotated[int, typer.Option(help="seconds the fault lasts (killed programs: until "
                                              "they are back)")] = 15,
    post_s: Annotated[int, typer.Option(help="seconds of load after the fault ends")] = 20,
    slo_ms: Annotated[float, typer.Option(help="p99 SLO, ms")] = 100.0,
    processes: Annotated[int, typer.Option(help="Locust processes")] = 1,
) -> None:
    """Inject a fault under load; report the per-second timeline (fault window shaded), errors
    during the fault, time to the first degraded answer and time to recover."""
    from app.experiments.loadlab.chaos import ChaosConfig, run_chaos
    from app.experiments.loadlab.faults import FAULTS, FaultError
    from app.stack.loadtest import LoadTestError
    from app.stack.supervisor import StackError
    from recstack.logs import configure_logging
    from recstack.settings import get_settings

    if fault not in FAULTS:
        raise typer.BadParameter(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if min(pre_s, fault_s, post_s) < 1 or rps < 0 or processes < 1:
        raise typer.BadParameter("durations must be >= 1 s, rps >= 0, processes >= 1")
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    cfg = ChaosConfig(fault=fault, rps=rps or None, pre_s=pre_s, fault_s=fault_s, post_s=post_s,
                      slo_ms=slo_ms, processes=processes)
    try:
        run_chaos(settings, cfg)
    except (StackError, LoadTestError, FaultError) as exc:
        _fail(str(exc))


def capacity(
    qps: Annotated[float, typer.Option(help="target peak requests per second")] = 50_000.0,
    p99_ms: Annotated[float, typer.Option(help="target p99 latency, ms")] = 100.0,
    users: Annotated[int, typer.Option(help="users whose features live in Redis")] = 10_000_000,
    items: Annotated[int, typer.Option(help="items whose features live in Redis")] = 1_000_000,
    core_hour_usd: Annotated[float, typer.Option(help="price of one vCPU-hour, USD")] = 0.04,
    gib_hour_usd: Annotated[float, typer.Option(help="price of one GiB-hour of RAM, USD")]
    = 0.005,
) -> None:
    """Replicas per service (M/M/c), Redis memory and a cost estimate for a target load, from
    the latest scale report; the model and its assumptions are written out."""
    from app.experiments.loadlab.capacity import CapacityError, CapacityTarget, run_capacity
    from recstack.logs import configure_logging
    from recstack.settings import get_settings

    if qps <= 0 or p99_ms <= 0 or users < 0 or items < 0:
        raise typer.BadParameter("qps and p99-ms must be > 0, users and items >= 0")
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_json)
    target = CapacityTarget(qps=qps, p99_ms=p99_ms, users=users, items=items,
                            core_hour_usd=core_hour_usd, gib_hour_usd=gib_hour_usd)
    try:
        run_capacity(settings, target)
    except CapacityError as exc:
        _fail(str(exc))


def register(app: typer.Typer) -> None:
    """Adds ``recstack experiment scale`` and ``recstack experiment chaos`` to ``app``."""
    app.command("scale")(scale)
    app.command("chaos")(chaos)


def register_root(root: typer.Typer) -> None:
    """Adds the top-level ``recstack capacity`` to ``root``."""
    root.command("capacity")(capacity)
