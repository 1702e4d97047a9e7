"""The ``recstack`` command: parse, configure logging, call one typed function per verb.

This is the composition root: it is the only module (with ``recstack.demo`` and
``recstack.stack``) that imports the stages' entrypoints, and it imports them inside the
commands so ``recstack --help`` stays fast.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from recstack.logs import configure_logging
from recstack.settings import Settings, get_settings

app = typer.Typer(
    name="recstack",
    help="A production recommender on one laptop. Start with `recstack demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
logger = logging.getLogger(__name__)


def _settings() -> Settings:
    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    return s


@app.command()
def demo(
    users: Annotated[int | None, typer.Option(help="Locust users (default: settings)")] = None,
    duration: Annotated[int | None, typer.Option(help="Locust run, seconds")] = None,
    load: Annotated[bool, typer.Option(help="run the Locust test at the end")] = True,
) -> None:
    """Simulate -> Beam -> Feast -> train -> serve behind nginx -> load test. The stack stays up."""
    from recstack.demo import print_demo_result, run_demo

    s = _settings()
    if users is not None:
        s.load.users = users
    if duration is not None:
        s.load.duration_s = duration
    result = run_demo(s, console=console, run_load=load)
    print_demo_result(result, console=Console())


@app.command()
def up(
    services: Annotated[
        str | None, typer.Option(help="comma-separated services (default: all)")
    ] = None,
) -> None:
    """Start the native stack (or some of its services) under supervisord."""
    from recstack import stack

    s = _settings()
    names = [n.strip() for n in services.split(",")] if services else None
    stack.up(s, services=names)
    _print_status(s)


@app.command()
def down() -> None:
    """Stop every service of the native stack and supervisord itself."""
    from recstack import stack

    stack.down(_settings())
    console.print("stack stopped")


@app.command()
def status() -> None:
    """Show each service of the native stack."""
    _print_status(_settings())


@app.command()
def scale(
    spec: Annotated[str, typer.Argument(help="SERVICE=N, e.g. api=4")],
) -> None:
    """Change the number of replicas of a service (api)."""
    from recstack import stack

    service, _, n = spec.partition("=")
    if not n.isdigit() or int(n) < 1:
        raise typer.BadParameter(f"expected SERVICE=N with N >= 1, got {spec!r}")
    s = _settings()
    stack.scale(s, service, int(n))
    _print_status(s)


@app.command()
def simulate(
    days: Annotated[int | None, typer.Option(help="simulated days (default: settings)")] = None,
    seed: Annotated[int | None, typer.Option(help="world seed (default: settings)")] = None,
) -> None:
    """Generate the simulated world's events into the Parquet lake."""
    from recstack.demo import simulate_with_progress

    s = _settings()
    if seed is not None:
        s.sim.seed = seed
    summary = simulate_with_progress(s, days=days, console=console)
    console.print(
        f"wrote {summary.n_impressions:,} impressions and {summary.n_clicks:,} clicks "
        f"(CTR {summary.ctr:.2%}) for {summary.n_users:,} users x {summary.n_items:,} items "
        f"over {summary.n_days} days into {s.lake_dir}"
    )


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pipeline(ctx: typer.Context) -> None:
    """Beam feature pipelines, then feast apply + materialize. Extra flags go to the Beam runner."""
    from pipelines import run_all

    s = _settings()
    with console.status("Beam pipelines + Feast materialization"):
        result = run_all(s, beam_args=list(ctx.args))
    console.print(result)


@app.command()
def train() -> None:
    """Train the candidate model + ANN index and the ranker; register both in MLflow as champion."""
    from training import train_and_register

    s = _settings()
    with console.status("training candidates + ranker, logging to MLflow"):
        result = train_and_register(s)
    table = Table("metric", "value", title="training")
    for k, v in sorted(result.metrics.items()):
        table.add_row(k, f"{v:.4f}")
    Console().print(table)
    console.print(
        f"registered candidates v{result.candidates_version}, ranker v{result.ranker_version} "
        f"as @{s.mlflow.serving_alias} (run {result.run_id})"
    )


@app.command()
def bench() -> None:
    """Run the main job measured; write $RECSTACK_HOME/bench/skeleton.{json,md}."""
    from recstack.bench import run_bench

    s = _settings()
    path = run_bench(s, console=console)
    Console().print(path.with_suffix(".md").read_text())
    console.print(f"wrote {path}")


def _print_status(s: Settings) -> None:
    from recstack import stack

    table = Table("service", "state", "pid", "port", "uptime (s)", title="recstack native stack")
    rows = stack.status(s)
    for row in rows:
        table.add_row(
            row.name, row.state, str(row.pid or "-"), str(row.port or "-"),
            f"{row.uptime_s:.0f}" if row.uptime_s else "-",
        )
    Console().print(table if rows else "stack is down")


def main() -> None:
    """Entry point: usage errors exit 2 (Typer), failures print one clear line and exit 1.

    ``RECSTACK_LOG_LEVEL=DEBUG`` also logs the traceback.
    """
    try:
        app()  # standalone: Typer reports usage errors itself and exits
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            logger.exception("recstack failed")
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
