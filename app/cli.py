"""The ``recstack`` command: parse, configure logging, call one typed function per verb.

This is the composition root: it is the only module (with ``app.demo`` and
``app.stack``) that imports the stages' entrypoints.

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.experiments import cli as experiments_cli
from monitoring import cli as monitoring_cli
from pipelines import cli as pipelines_cli
from recstack.logs import configure_logging, quiet_third_party
from recstack.settings import Settings, get_settings
from simulator import cli as simulator_cli
from training import cli as training_cli

app = typer.Typer(
    name="recstack",
    help="A production recommender on one laptop. Start with `recstack demo`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
logger = logging.getLogger(__name__)

# Each stage's verbs live with the stage; the stage CLI modules import only typer, rich and the
# kernel at import time, so `recstack --help` stays fast.
app.add_typer(simulator_cli.app)
app.add_typer(pipelines_cli.app)
app.add_typer(pipelines_cli.lake_app, name="lake")
app.add_typer(training_cli.app)
app.add_typer(experiments_cli.app)
experiments_cli.register_root(app)
monitoring_cli.register_root(app)


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
    from app.demo import print_demo_result, run_demo

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
    from app.stack import runner as stack

    s = _settings()
    names = [n.strip() for n in services.split(",")] if services else None
    stack.up(s, services=names)
    serving = names is None or any(n in ("api", "candidates", "ranking") for n in names)
    try:
        if serving:  # up means serving: the replicas' /readyz, not only their process
            stack.wait_ready(s, timeout_s=s.stack.start_timeout_s)
    finally:
        _print_status(s)
    _print_urls(s)


@app.command()
def down() -> None:
    """Stop every service of the native stack and supervisord itself."""
    from app.stack import runner as stack

    stack.down(_settings())
    console.print("stack stopped")


@app.command()
def status() -> None:
    """Show each service of the native stack."""
    _print_status(_settings())


@app.command()
def scale(
    service: Annotated[str, typer.Argument(help="api, candidates or ranking (or SERVICE=N)")],
    n: Annotated[int | None, typer.Argument(min=1, help="number of replicas")] = None,
) -> None:
    """Change the number of replicas of a service: `recstack scale api 4` (or `api=4`);
    candidates and ranking are the split-mode stage services. nginx and Prometheus follow."""
    from app.stack import runner as stack

    if n is None:
        spec = service
        service, _, count = spec.partition("=")
        if not count.isdigit() or int(count) < 1:
            raise typer.BadParameter(f"expected SERVICE N or SERVICE=N with N >= 1, got {spec!r}")
        n = int(count)
    s = _settings()
    stack.scale(s, service, n)
    _print_status(s)


@app.command()
def bench(
    suite: Annotated[
        list[str] | None, typer.Option(help="suite(s) to run (default: all)")
    ] = None,
) -> None:
    """Run the benchmarks; figures go to $RECSTACK_HOME/bench/<suite>.{json,md}."""
    from app.bench import run_bench

    s = _settings()
    for path in run_bench(s, suites=suite, console=console):
        Console().print(path.with_suffix(".md").read_text())
        console.print(f"wrote {path}")


def _print_status(s: Settings) -> None:
    from app.stack import runner as stack

    table = Table("service", "state", "health", "pid", "port", "uptime (s)",
                  title="recstack native stack")
    rows = stack.status(s)
    for row in rows:
        table.add_row(
            row.name, row.state, row.health, str(row.pid or "-"), str(row.port or "-"),
            f"{row.uptime_s:.0f}" if row.uptime_s else "-",
        )
    Console().print(table if rows else "stack is down")


def _print_urls(s: Settings) -> None:
    from app.stack import runner as stack

    urls = Table("what", "URL", title="the stack is up (recstack down stops it)")
    for name, url in stack.urls(s).items():
        urls.add_row(name, url)
    Console().print(urls)


def main() -> None:
    """Entry point: usage errors exit 2 (Typer), failures print one clear line and exit 1.

    ``RECSTACK_LOG_LEVEL=DEBUG`` also logs the traceback.
    """
    quiet_third_party()  # before any verb imports Beam, Feast or MLflow
    try:
        app()  # standalone: Typer reports usage errors itself and exits
    except Exception as exc:  # noqa: BLE001 - the CLI's last line of defence
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            logger.exception("recstack failed")
        console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
