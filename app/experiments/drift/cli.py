"""Commands of this experiment area; ``app.experiments.cli`` registers them.

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

import json
from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    """Adds this area's ``recstack experiment <verb>`` commands to ``app``."""

    @app.command("drift")
    def drift(
        scenario: str = typer.Option("taste-shift", help="a scenario name (recstack scenarios)"),
        no_retrain: bool = typer.Option(False, "--no-retrain",
                                        help="the monitor alerts but never retrains"),
        requests_per_hour: int = typer.Option(120, min=1, max=500),
        live_days: int = typer.Option(5, min=5, max=10, help="burn-in days included"),
        users: int = typer.Option(1000, min=50),
        items: int = typer.Option(400, min=50),
        seed: int = typer.Option(42, help="the world's and the traffic's seed"),
        seeds: str = typer.Option("", help="comma-separated seeds: one run each, then a table "
                                           "over them (mean, min) in a drift-seeds report"),
    ) -> None:
        """Simulated traffic across a drift scenario on a private stack: CTR vs the oracle, the
        drift alert, retraining, promotion and recovery, next to a frozen counterfactual."""
        from rich.console import Console

        from app.experiments.drift.drift import DriftConfig, run_drift
        from app.experiments.drift.seeds import run_seeds
        from recstack.logs import configure_logging
        from recstack.settings import get_settings

        settings = get_settings()
        configure_logging("WARNING")
        cfg = DriftConfig(scenario=scenario, retrain=not no_retrain,
                          requests_per_hour=requests_per_hour, live_days=live_days,
                          n_users=users, n_items=items, seed=seed)
        try:
            seed_list = [int(x) for x in seeds.split(",") if x.strip()]
            summary = (run_seeds(settings, cfg, seed_list, Console(stderr=True)) if seed_list
                       else run_drift(settings, cfg))
        except (RuntimeError, OSError, ValueError) as exc:
            typer.echo(f"drift experiment failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(json.dumps(summary, indent=2, default=str))

    @app.command("drift-table")
    def drift_table(
        reports: list[Path] = typer.Argument(..., help="drift report folders (one per seed)"),
    ) -> None:
        """The table over seeds rebuilt from finished drift reports (no re-run)."""
        from app.experiments.drift.seeds import rows_from_reports, write_table
        from recstack.settings import get_settings

        try:
            cfg, rows = rows_from_reports(reports)
            summary = write_table(get_settings(), cfg, rows)
        except (OSError, ValueError, KeyError) as exc:
            typer.echo(f"drift table failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(summary["report"])

    @app.command("databug")
    def databug() -> None:
        """The upstream-bug scenario: caught by validation or drift detection before a model
        trained on it becomes champion."""
        from app.experiments.drift.databug import run_databug
        from recstack.logs import configure_logging
        from recstack.settings import get_settings

        configure_logging("WARNING")
        try:
            summary = run_databug(get_settings())
        except (RuntimeError, OSError, ValueError) as exc:
            typer.echo(f"databug experiment failed: {exc}", err=True)
            raise typer.Exit(1) from exc
        typer.echo(json.dumps(summary, indent=2, default=str))


def register_root(root: typer.Typer) -> None:
    """Adds this area's top-level ``recstack <verb>`` commands to ``root``."""
