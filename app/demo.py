"""The main job, ``recstack demo``: every stage of the stack, once, on small data.

simulate -> lake -> Beam features -> Feast (apply + materialize into Redis) -> train candidates +
ranker -> MLflow registry (@champion) -> 2 API replicas behind nginx, scraped by Prometheus ->
a headless Locust run through nginx. The stack stays up afterwards (``recstack down`` stops it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from app.stack import runner as stack
from app.stack.loadtest import RECOMMENDATIONS_ROW, run_locust, warm_up
from app.stack.runner import serving_ports
from pipelines.run import run_all
from recstack.settings import Settings
from simulator.cli import simulate_with_progress
from training.train import train_and_register

if TYPE_CHECKING:
    from app.stack.loadtest import LoadResult

logger = logging.getLogger(__name__)

INFRA = ["redis", "mlflow", "prometheus"]
SERVING = ["api", "nginx", "sink"]


@dataclass
class DemoResult:
    """What the demo measured: per-step seconds, the load test, and where to look next."""

    step_seconds: dict[str, float] = field(default_factory=dict)
    simulation: Any = None
    pipeline: Any = None
    training: Any = None
    load: "LoadResult | None" = None
    urls: dict[str, str] = field(default_factory=dict)


def run_demo(settings: Settings, console: Console | None = None, run_load: bool = True) -> DemoResult:
    """Run every stage once; returns the figures. Raises with a clear message on any failure."""
    console = console or Console(stderr=True)
    result = DemoResult()

    def step(name: str, fn, *args, **kwargs):
        console.rule(f"[bold]{name}")
        t0 = time.perf_counter()
        value = fn(*args, **kwargs)
        result.step_seconds[name] = time.perf_counter() - t0
        console.print(f"[green]done[/green] {name} in {result.step_seconds[name]:.1f}s")
        return value

    step("1/6 start Redis, MLflow, Prometheus", stack.up, settings, services=INFRA)
    result.simulation = step(
        "2/6 simulate the world into the lake", simulate_with_progress, settings, console=console
    )
    with console.status("Beam (DirectRunner) -> feature tables -> feast apply + materialize"):
        result.pipeline = step("3/6 feature pipelines + Feast", run_all, settings)
    with console.status("training candidate model + ANN index and LightGBM ranker"):
        result.training = step("4/6 train and register in MLflow", train_and_register, settings)
    step("5/6 serve: API replicas behind nginx", _serve, settings)
    if run_load:
        warm_up(serving_ports(settings), settings.sim.n_users,
                settings.load.warmup_requests)
        result.load = step(
            "6/6 load test through nginx (Locust, headless)",
            run_locust,
            settings,
            host=stack.urls(settings)["api"],
            users=settings.load.users,
            spawn_rate=settings.load.spawn_rate,
            duration_s=settings.load.duration_s,
            out_dir=settings.reports_dir / "demo",
            # What a client of the recommender sees; the POST /events the simulated users
            # send are counted in the totals only.
            row=RECOMMENDATIONS_ROW,
            extra_env={"RECSTACK_LOADTEST_USER_RPS": str(settings.load.user_rps),
                       "RECSTACK_LOADTEST_ARRIVALS": settings.load.arrivals},
        )
    result.urls = stack.urls(settings)
    return result


def _serve(settings: Settings) -> None:
    """Start (or restart, so they load the new champion) the API replicas, then nginx."""
    already_running = {
        s.name for s in stack.status(settings) if s.name.startswith("api") and s.state == "RUNNING"
    }
    stack.up(settings, services=SERVING)
    for program in sorted(already_running):  # hot reload of the champion comes in a later issue
        stack.stop_service(settings, program)
        stack.start_service(settings, program)
    stack.wait_ready(settings, timeout_s=settings.stack.start_timeout_s)


def print_demo_result(result: DemoResult, console: Console) -> None:
    """The figures a newcomer wants to see at the end of the demo."""
    steps = Table("step", "seconds", title="recstack demo")
    for name, seconds in result.step_seconds.items():
        steps.add_row(name, f"{seconds:.1f}")
    steps.add_row("[bold]total", f"{sum(result.step_seconds.values()):.1f}")
    console.print(steps)
    if result.training is not None:
        metrics = Table("offline metric (holdout)", "value")
        for key, value in sorted(result.training.metrics.items()):
            metrics.add_row(key, f"{value:.4f}")
        console.print(metrics)
        verdict = "promoted to @champion" if result.training.promoted else "champion kept"
        console.print(f"promotion gate: {verdict} ({result.training.gate_reason})")
    if result.load is not None:
        r = result.load
        # One row per figure: readable at 80 columns (a non-TTY's width), unlike nine columns.
        load = Table("load (Locust through nginx)", "value", title=f"GET {r.row}")
        for label, value in (
            ("requests", f"{r.requests:,}"), ("errors", f"{r.errors:,}"),
            ("shed (503 + Retry-After)", f"{r.shed:,}"), ("RPS", f"{r.rps:.1f}"),
            ("p50 / p95 / p99 ms", f"{r.p50_ms:.0f} / {r.p95_ms:.0f} / {r.p99_ms:.0f}"),
            ("all requests (+ POST /events)", f"{r.total_requests:,}"),
            ("all failures", f"{r.total_failures:,}"),
        ):
            load.add_row(label, value)
        console.print(load)
    urls = Table("what", "URL", title="the stack is up (recstack down stops it)")
    for name, url in result.urls.items():
        urls.add_row(name, url)
    console.print(urls)
