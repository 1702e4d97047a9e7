"""The serving benchmark on the native stack: in-process vs split mode at fixed offered loads.

``run(settings, console)`` (suite "serving") expects a trained stack (``recstack demo`` or
``recstack train`` ran on these settings). For each mode it (re)starts the api replicas (and in
split mode the candidate and ranking services) in that mode, waits until every replica answers
``/readyz`` (models and item features loaded), warms them up under load until a window passes
without degraded answers, then runs ``loadtests/serving_bench.py`` through nginx at each offered
load (500 candidates ranked, top 20 returned), twice side by side: open loop (Poisson arrivals
from ``BENCH_CONNECTIONS`` connections, each latency from the request's due time; the headline)
and the paced closed loop of earlier runs (few connections at ``USER_RPS`` each; keys end in
``_paced``). Achieved against offered RPS is checked (``_rate_off`` when they differ by more than
2% and by more than Poisson noise explains: app/experiments/loadlab/analysis.rate_is_off). Per-stage p99
and degraded answers by reason come from every replica's /metrics, read before and after each
run. It also measures the user-feature read, fast reader vs ``get_online_features``. The stack
is left in the mode the settings give.
"""

from __future__ import annotations

import logging
import math
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console

from app.experiments.loadlab.analysis import rate_is_off
from app.stack import runner
from app.stack.loadtest import RECOMMENDATIONS_ROW, LoadResult, run_locust
from app.stack.services import STAGE_SERVICES, service_ports
from recstack.settings import REPO_ROOT, Settings
from serving.bench import (
    counter_values,
    delta,
    feature_read_bench,
    histogram_buckets,
    merge,
    quantile_upper_bound,
)

logger = logging.getLogger(__name__)

LOCUSTFILE = REPO_ROOT / "loadtests" / "serving_bench.py"
MODES = ("inprocess", "split")
LOADS_RPS = (100, 150)
ARRIVALS = ("poisson", "paced")
# Open loop: many clients, each sending now and then, as real traffic is.
BENCH_CONNECTIONS = 100
# Paced (closed loop): clients at 20 requests/s each (5 at 100 RPS). The tail latency measured
# grows with the connections at the same offered load (one replica at 50 RPS: p99 12 ms from 5
# connections, 42 ms from 25); the paced runs keep them few, as the earlier benchmarks did.
USER_RPS = 20.0


def users_for(rps: float, arrivals: str = "paced") -> int:
    if arrivals == "poisson":
        return max(BENCH_CONNECTIONS, round(rps / USER_RPS))
    return max(1, round(rps / USER_RPS))


def bench_env(rps: float, arrivals: str) -> dict[str, str]:
    return {"RECSTACK_BENCH_USER_RPS": f"{rps / users_for(rps, arrivals):.6f}",
            "RECSTACK_BENCH_ARRIVALS": arrivals}


def result_key(mode: str, rps: int, arrivals: str) -> str:
    return f"{mode}_{rps}rps" + ("" if arrivals == "poisson" else f"_{arrivals}")
DURATION_S = 30
# Warm-up: windows of this length at the highest offered load, until one has no degraded
# answer (first calls, lazy imports, the collector's passes over freshly loaded models) or
# WARMUP_MAX_WINDOWS have run.
WARMUP_WINDOW_S = 10
WARMUP_MAX_WINDOWS = 4
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
CORE = ["redis", "mlflow", "prometheus", "api", "nginx"]


def _scrape(port: int) -> str:
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def _targets(settings: Settings) -> dict[str, list[int]]:
    """Ports of the replicas whose /metrics the figures come from (stage services in split)."""
    counts = runner.replica_counts_now(settings)
    services = ["api", *STAGE_SERVICES] if settings.serving.mode == "split" else ["api"]
    return {s: service_ports(settings, s, counts[s]) for s in services}


def _cpu_seconds(settings: Settings) -> dict[str, float]:
    """CPU seconds (user + system) each serving service's replicas have used so far."""
    out: dict[str, float] = {}
    for row in runner.status(settings):
        if row.service in ("api", *STAGE_SERVICES) and row.pid and row.state == "RUNNING":
            try:
                t = psutil.Process(row.pid).cpu_times()
            except psutil.Error:
                continue
            out[row.service] = out.get(row.service, 0.0) + t.user + t.system
    return out


def _snapshot(settings: Settings) -> dict[str, dict[str, Any]]:
    cpu = _cpu_seconds(settings)
    out = {}
    for service, ports in _targets(settings).items():
        texts = [_scrape(p) for p in ports]
        degraded: dict[str, float] = {}
        for t in texts:
            for k, v in counter_values(t, "recstack_degraded", "reason").items():
                degraded[k] = degraded.get(k, 0.0) + v
        out[service] = {
            "stages": merge(histogram_buckets(t, "recstack_stage_duration_seconds", "stage")
                            for t in texts),
            "degraded": degraded,
            "shed": sum(sum(counter_values(t, "recstack_shed_requests", "route").values())
                        for t in texts),
            "cpu_s": cpu.get(service, 0.0),
        }
    return out


def _stage_p99s(before: dict, after: dict) -> dict[str, float]:
    """p99 of each stage (the histogram bucket edge it falls under, ms), per service."""
    out = {}
    for service in after:
        for (stage,), buckets in delta(after[service]["stages"], before[service]["stages"]).items():
            p99 = quantile_upper_bound(buckets, 0.99)
            if p99 is not None:
                out[f"{service}_{stage}_p99_le_ms"] = p99 * 1000
    return out


def _degraded(before: dict, after: dict) -> dict[str, float]:
    """Degraded answers by reason between two snapshots (the api's: what clients saw)."""
    b = before["api"]["degraded"]
    out = {r: v - b.get(r, 0.0) for r, v in after["api"]["degraded"].items()}
    return {r: v for r, v in sorted(out.items()) if v}


def in_mode(settings: Settings, mode: str) -> Settings:
    """A copy of ``settings`` with ``serving.mode`` set: the rendered programs' environment and
    nginx's stage fronts follow the settings object, not this process's environment."""
    s = settings.model_copy(deep=True)
    s.serving.mode = mode  # type: ignore[assignment]
    return s


def _switch(settings: Settings) -> None:
    """Restart the serving programs in ``settings.serving.mode`` and wait until all are ready."""
    split = settings.serving.mode == "split"
    runner.up(settings, services=CORE + (list(STAGE_SERVICES) if split else []))
    if not split:
        for service in STAGE_SERVICES:  # not needed, and they would take CPU from the rest
            runner.stop_service(settings, service)
    runner.wait_ready(settings, settings.stack.start_timeout_s)


def _warm_up(settings: Settings, host: str, out_dir: Path, rps: int) -> dict[str, float]:
    """Load windows until one passes without a degraded answer; returns what the last saw."""
    seen: dict[str, float] = {}
    for i in range(WARMUP_MAX_WINDOWS):
        before = _snapshot(settings)
        users = users_for(rps, "poisson")
        run_locust(settings, host, users, users, WARMUP_WINDOW_S, out_dir / f"warmup-{i}",
                   locustfile=LOCUSTFILE, extra_env=bench_env(rps, "poisson"))
        seen = _degraded(before, _snapshot(settings))
        logger.info("warm-up window %d: degraded %s", i, seen or "none")
        if not seen:
            break
    return seen


def _figures(key: str, result: LoadResult, before: dict, after: dict,
             offered_rps: float = math.nan) -> dict[str, object]:
    degraded = _degraded(before, after)
    # CPU the serving replicas spent per answered recommendation (all services of the mode):
    # what a request costs, whatever the machine's other load does to the latency.
    cpu = sum(after[s]["cpu_s"] - before[s]["cpu_s"] for s in after)
    return {
        f"{key}_serving_cpu_ms_per_request": (
            round(1000 * cpu / result.requests, 2) if result.requests else None),
        f"{key}_offered_rps": offered_rps,
        f"{key}_achieved_rps": round(result.rps, 1),
        f"{key}_rate_off": rate_is_off(result.requests, offered_rps,
                                       result.requests / result.rps if result.rps else 0.0)
        if offered_rps > 0 else None,
        f"{key}_p50_ms": result.p50_ms, f"{key}_p95_ms": result.p95_ms,
        f"{key}_p99_ms": result.p99_ms, f"{key}_requests": result.requests,
        f"{key}_errors": result.failures,
        f"{key}_locust_cpu_s": round(result.locust_cpu_s, 2),
        f"{key}_locust_cpu_ratio": round(result.locust_cpu_s / DURATION_S, 3),
        **{f"{key}_{k}": v for k, v in _stage_p99s(before, after).items()},
        f"{key}_degraded_count": sum(degraded.values()),
        f"{key}_degraded_by_reason": degraded,
        f"{key}_shed_count": after["api"]["shed"] - before["api"]["shed"],
    }


def summary_table(figures: dict[str, object]) -> str:
    """Markdown: one row per offered load, in-process and split side by side."""
    stages = ("candidates", "user_features", "item_features", "ranking", "serialize")
    head = ["offered RPS", "mode", "arrivals", "RPS", "p50 ms", "p95 ms", "p99 ms", "errors",
            "degraded", "CPU ms/request", *[f"{s} p99≤ ms" for s in stages]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rps in LOADS_RPS:
        for mode in MODES:
            for arrivals in ARRIVALS:
                key = result_key(mode, rps, arrivals)
                if f"{key}_p99_ms" not in figures:
                    continue
                # In split mode the api sees the stage services' timings through their answers;
                # the services' own histograms are in the figures too (candidates_*, ranking_*).
                achieved = str(figures[f"{key}_achieved_rps"]) + (
                    " (off offered)" if figures.get(f"{key}_rate_off") else "")
                cells = [str(rps), mode, arrivals, achieved, *(str(figures[f"{key}_{f}"]) for f in (
                    "p50_ms", "p95_ms", "p99_ms", "errors", "degraded_count",
                    "serving_cpu_ms_per_request"))]
                cells += [str(figures.get(f"{key}_api_{s}_p99_le_ms", "-")) for s in stages]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(settings: Settings, console: Console | None = None) -> dict[str, object]:
    """Figures of the serving suite: p50/p95/p99/RPS/errors per mode and offered load, per-stage
    p99 (bucket upper bounds, ms), degraded answers by reason, Locust's CPU, and the
    feature-read ratio. ``_summary`` is the side-by-side table (Markdown)."""
    console = console or Console()
    out_dir = settings.bench_dir / "serving"
    figures: dict[str, object] = {}
    host = f"http://{settings.stack.host}:{settings.stack.lb_port}"
    try:
        for mode in MODES:
            s = in_mode(settings, mode)
            with console.status(f"serving bench: starting the stack in {mode} mode"):
                _switch(s)
            with console.status(f"serving bench: {mode}, warming up"):
                t0 = time.perf_counter()
                left = _warm_up(s, host, out_dir / mode, max(LOADS_RPS))
                figures[f"{mode}_warmup_s"] = round(time.perf_counter() - t0, 1)
                figures[f"{mode}_warmup_last_degraded"] = sum(left.values())
            for rps, arrivals in ((r, a) for r in LOADS_RPS for a in ARRIVALS):
                users = users_for(rps, arrivals)
                with console.status(f"serving bench: {mode}, {rps} RPS offered ({arrivals}, "
                                    f"{users} connections), {DURATION_S}s"):
                    before = _snapshot(s)
                    result = run_locust(
                        s, host, users, users, DURATION_S,
                        out_dir / f"{mode}-{rps}-{arrivals}",
                        locustfile=LOCUSTFILE, extra_env=bench_env(rps, arrivals),
                        row=RECOMMENDATIONS_ROW,
                    )
                    after = _snapshot(s)
                key = result_key(mode, rps, arrivals)
                figures |= _figures(key, result, before, after, offered_rps=float(rps))
                console.print(
                    f"{mode:9s} {rps:3d} RPS offered ({arrivals}, {users} connections): "
                    f"{result.rps:6.1f} RPS, p50 "
                    f"{result.p50_ms:.0f} ms, p95 {result.p95_ms:.0f} ms, p99 "
                    f"{result.p99_ms:.0f} ms, {result.failures} errors, degraded "
                    f"{figures[f'{key}_degraded_count']:.0f}, Locust CPU "
                    f"{result.locust_cpu_s:.1f}s"
                )
        with console.status("serving bench: user-feature read, fast reader vs Feast"):
            figures |= feature_read_bench(settings)
    finally:
        try:
            _switch(settings)
        except Exception:
            logger.warning("could not put the stack back in %s mode", settings.serving.mode,
                           exc_info=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    figures["_summary"] = summary_table(figures)
    return figures
