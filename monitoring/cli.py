"""Monitoring's top-level verbs (``recstack monitor``, ``recstack report``); the composition
root registers them.

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

from pathlib import Path

import typer


def register_root(root: typer.Typer) -> None:
    """Adds monitoring's ``recstack <verb>`` commands to ``root``."""

    @root.command("monitor")
    def monitor(
        port: int = typer.Option(0, help="serve /metrics here (0: settings.stack.monitor_port)"),
        once: bool = typer.Option(False, help="run one check and exit"),
        api_url: str = typer.Option("", help="API to sample (default: the stack's balancer)"),
        no_retrain: bool = typer.Option(False, "--no-retrain", help="alert, never retrain"),
    ) -> None:
        """Long-running drift/freshness monitor: gauges on /metrics; drift starts `recstack retrain`."""
        from monitoring.service import serve
        from recstack.logs import configure_logging
        from recstack.settings import get_settings

        settings = get_settings()
        configure_logging(settings.log_level, settings.log_json)
        if no_retrain:
            settings = settings.model_copy(update={
                "monitor": settings.monitor.model_copy(update={"retrain": False})})
        try:
            serve(settings, port=port or None, once=once, api_url=api_url or None)
        except (OSError, ConnectionError) as exc:
            typer.echo(f"monitor failed: {exc}", err=True)
            raise typer.Exit(1) from exc

    @root.command("report")
    def report(
        prometheus_url: str = typer.Option("", help="default: the native stack's Prometheus"),
        minutes: float = typer.Option(30.0, min=1, help="time range to plot, up to now"),
        out: Path = typer.Option(None, help="output folder (default: $RECSTACK_HOME/reports/)"),
    ) -> None:
        """HTML page of static plots from Prometheus: latency per stage, RPS, errors, drift, CTR."""
        from monitoring.report import write_report
        from recstack.settings import get_settings

        settings = get_settings()
        url = prometheus_url or f"http://{settings.stack.host}:{settings.stack.prometheus_port}"
        try:
            page = write_report(settings, url, minutes * 60, out)
        except (OSError, ConnectionError, ValueError) as exc:
            typer.echo(f"report failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(str(page))
