"""The serving benchmark on the native stack: in-process vs split mode at fixed offered loads.

``run(settings, console)`` (suite "serving") expects a trained stack (``recstack demo`` or
``recstack train`` ran on these settings). For each mode it (re)starts the api replicas (and in
split mode the candidate and ranking services) with ``RECSTACK_SERVING__MODE``, runs
``loadtests/serving_bench.py`` through nginx at each offered load with a constant-throughput
wait time (500 candidates ranked, top 20 returned), and reads the per-stage histograms and
degraded counters from every replica's /metrics before and after. It also measures the user
feature read, fast reader vs ``get_online_features``. The stack is left in in-process mode.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from pathlib import Path
from typing import Any

from rich.console import Console

from recstack.settings import REPO_ROOT, Settings
from recstack.stack import runner
from recstack.stack.loadtest import run_locust
from recstack.stack.services import STAGE_SERVICES, api_ports, stage_ports

logger = logging.getLogger(__name__)

LOCUSTFILE = REPO_ROOT / "loadtests" / "serving_bench.py"
MODES = ("inprocess", "split")
LOADS_RPS = (100, 150)
USERS = 25
DURATION_S = 30
WARMUP_S = 5
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CORE = ["redis", "mlflow", "prometheus", "api", "nginx"]


def _scrape(port: int) -> str:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def _targets(settings: Settings, mode: str) -> dict[str, list[int]]:
    replicas = runner._replicas(settings)
    out = {"api": api_ports(settings, replicas)}
    if mode == "split":
        for service in STAGE_SERVICES:
            out[service] = stage_ports(settings, service, 1)
    return out


def _snapshot(settings: Settings, mode: str) -> dict[str, dict[str, Any]]:
    from serving.bench import counter_values, histogram_buckets, merge

    out = {}
    for service, ports in _targets(settings, mode).items():
        texts = [_scrape(p) for p in ports]
        out[service] = {
            "stages": merge(histogram_buckets(t, "recstack_stage_duration_seconds", "stage")
                            for t in texts),
            "degraded": {k: v for t in texts
                         for k, v in counter_values(t, "recstack_degraded", "reason").items()},
            "shed": sum(sum(counter_values(t, "recstack_shed_requests", "route").values())
                        for t in texts),
        }
    return out


def _stage_p99s(before: dict, after: dict) -> dict[str, float]:
    from serving.bench import delta, quantile_upper_bound

    out = {}
    for service in after:
        for (stage,), buckets in delta(after[service]["stages"], before[service]["stages"]).items():
            p99 = quantile_upper_bound(buckets, 0.99)
            if p99 is not None:
                out[f"{service}_{stage}_p99_le_ms"] = p99 * 1000
    return out


def _switch(settings: Settings, mode: str) -> None:
    """Restart the serving programs in ``mode`` (env read when configs are rendered)."""
    os.environ["RECSTACK_SERVING__MODE"] = mode
    services = CORE + (list(STAGE_SERVICES) if mode == "split" else [])
    runner.up(settings, services=services)
    if mode == "inprocess":
        for service in STAGE_SERVICES:  # not needed, and they would take CPU from the rest
            runner.stop_service(settings, service)
    runner.wait_ready(settings, settings.stack.start_timeout_s)


def run(settings: Settings, console: Console | None = None) -> dict[str, object]:
    """Figures of the serving suite: p50/p95/p99/RPS/errors per mode and offered load, per-stage
    p99 (bucket upper bounds, ms), degraded counts, Locust's CPU, and the feature-read ratio."""
    from serving.bench import feature_read_bench

    console = console or Console()
    out_dir = settings.bench_dir / "serving"
    figures: dict[str, object] = {}
    previous = os.environ.get("RECSTACK_SERVING__MODE")
    host = f"http://127.0.0.1:{settings.stack.lb_port}"
    try:
        for mode in MODES:
            with console.status(f"serving bench: starting the stack in {mode} mode"):
                _switch(settings, mode)
                run_locust(settings, host, USERS, USERS, WARMUP_S, out_dir / f"{mode}-warmup",
                           locustfile=LOCUSTFILE, extra_env={"RECSTACK_BENCH_USER_RPS": "2"})
            for rps in LOADS_RPS:
                with console.status(f"serving bench: {mode}, {rps} RPS offered, {DURATION_S}s"):
                    before = _snapshot(settings, mode)
                    result = run_locust(
                        settings, host, USERS, USERS, DURATION_S, out_dir / f"{mode}-{rps}",
                        locustfile=LOCUSTFILE,
                        extra_env={"RECSTACK_BENCH_USER_RPS": f"{rps / USERS:.4f}"},
                    )
                    after = _snapshot(settings, mode)
                key = f"{mode}_{rps}rps"
                figures |= {
                    f"{key}_achieved_rps": round(result.rps, 1),
                    f"{key}_p50_ms": result.p50_ms, f"{key}_p95_ms": result.p95_ms,
                    f"{key}_p99_ms": result.p99_ms, f"{key}_requests": result.requests,
                    f"{key}_errors": result.failures,
                    f"{key}_locust_cpu_s": round(result.locust_cpu_s, 2),
                    f"{key}_locust_cpu_ratio": round(result.locust_cpu_s / DURATION_S, 3),
                }
                figures |= {f"{key}_{k}": v for k, v in _stage_p99s(before, after).items()}
                degraded = {
                    reason: v - before["api"]["degraded"].get(reason, 0.0)
                    for reason, v in after["api"]["degraded"].items()
                }
                figures[f"{key}_degraded_count"] = sum(degraded.values())
                figures[f"{key}_shed_count"] = after["api"]["shed"] - before["api"]["shed"]
                console.print(
                    f"{mode:9s} {rps:3d} RPS offered: {result.rps:6.1f} RPS, p50 "
                    f"{result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms, p99 "
                    f"{result.p99_ms:.0f} ms, {result.failures} errors, degraded "
                    f"{sum(degraded.values()):.0f}, Locust CPU {result.locust_cpu_s:.1f}s"
                )
        with console.status("serving bench: user-feature read, fast reader vs Feast"):
            figures |= feature_read_bench(settings)
    finally:
        if previous is None:
            os.environ.pop("RECSTACK_SERVING__MODE", None)
        else:
            os.environ["RECSTACK_SERVING__MODE"] = previous
        try:
            _switch(settings, previous or "inprocess")
        except Exception:
            logger.warning("could not put the stack back in %s mode", previous or "inprocess",
                           exc_info=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return figures
