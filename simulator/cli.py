"""``recstack`` verbs of the simulator stage (joined into the ``recstack`` command)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from recstack.logs import configure_logging
from recstack.settings import Settings, get_settings

if TYPE_CHECKING:
    from simulator.generate import SimulationSummary

app = typer.Typer()
console = Console(stderr=True)


def simulate_with_progress(
    settings: Settings, days: int | None = None, console: Console | None = None
) -> "SimulationSummary":
    """Run the simulator with a per-day progress bar."""
    from simulator.generate import simulate

    n_days = days or settings.sim.days
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("simulating days", total=n_days)
        return simulate(
            settings, days=n_days, on_day=lambda i, n: progress.update(task, completed=i + 1)
        )


@app.command()
def simulate(
    days: Annotated[int | None, typer.Option(help="simulated days (default: settings)")] = None,
    seed: Annotated[int | None, typer.Option(help="world seed (default: settings)")] = None,
) -> None:
    """Generate the simulated world's events into the Parquet lake."""
    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    if seed is not None:
        s.sim.seed = seed
    summary = simulate_with_progress(s, days=days, console=console)
    console.print(
        f"wrote {summary.n_impressions:,} impressions and {summary.n_clicks:,} clicks "
        f"(CTR {summary.ctr:.2%}) for {summary.n_users:,} users x {summary.n_items:,} items "
        f"over {summary.n_days} days into {s.lake_dir}"
    )
