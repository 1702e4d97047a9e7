"""``recstack`` verbs of the simulator stage (joined into the ``recstack`` command).

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recstack.logs import configure_logging
from recstack.settings import Settings, get_settings

if TYPE_CHECKING:
    from simulator.generate import SimulationSummary
    from simulator.scenarios import Scenario

app = typer.Typer()
console = Console(stderr=True)


def simulate_with_progress(
    settings: Settings,
    days: int | None = None,
    console: Console | None = None,
    scenario: Scenario | None = None,
) -> SimulationSummary:
    """Run the simulator (replacing the lake) with a per-day progress bar."""
    from simulator.generate import simulate

    n_days = days or settings.sim.days
    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console,
    )
    with progress:
        task = progress.add_task("simulating days", total=n_days)
        return simulate(
            settings,
            days=n_days,
            scenario=scenario,
            on_day=lambda i, n: progress.update(task, completed=i + 1),
        )


@app.command()
def simulate(
    days: Annotated[int | None, typer.Option(help="simulated days (default: settings)")] = None,
    seed: Annotated[int | None, typer.Option(help="world seed (default: settings)")] = None,
    scenario: Annotated[
        str | None,
        typer.Option(help="drift scenario: a name from `recstack scenarios` or a YAML path"),
    ] = None,
) -> None:
    """Generate the simulated world's events into the Parquet lake (replacing its contents).

    The lake then holds exactly this run's days; the same settings rewrite identical files.
    """
    from simulator.scenarios import load_scenario

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    if seed is not None:
        s.sim.seed = seed
    if days is not None:
        if days < 1:
            raise typer.BadParameter(f"--days must be >= 1, got {days}")
        s.sim.days = days  # the world's horizon (new items arrive over it) follows the run
    drift = load_scenario(scenario) if scenario else None
    summary = simulate_with_progress(s, console=console, scenario=drift)
    replaced = f" (replaced {summary.removed_files} old lake files)" if summary.removed_files else ""
    console.print(
        f"wrote {summary.n_impressions:,} impressions and {summary.n_clicks:,} clicks "
        f"(CTR {summary.ctr:.2%}) for {summary.n_users:,} users x {summary.n_items:,} items "
        f"over {summary.n_days} days"
        + (f" with scenario {summary.scenario!r}" if summary.scenario else "")
        + f" into {s.lake_dir}{replaced}"
    )


@app.command()
def scenarios() -> None:
    """List the bundled drift scenarios with a one-line description."""
    from simulator.scenarios import SCENARIO_DIR, list_scenarios

    table = Table("scenario", "first day", "drifts", "description", title=str(SCENARIO_DIR))
    for sc in list_scenarios():
        kinds = ", ".join(sorted({d.kind for d in sc.drifts}))
        table.add_row(sc.name, str(sc.first_day), kinds, sc.description)
    Console().print(table)


@app.command("import")
def import_file(
    file: Annotated[Path, typer.Argument(help="interactions file: CSV, TSV or Parquet")],
    format: Annotated[
        str, typer.Option("--format", help="auto (a MovieLens u.data by its first line, else by suffix), csv, tsv, parquet or movielens")
    ] = "auto",
    user_col: Annotated[str, typer.Option(help="user column (name, or 0-based index with --no-header)")] = "user_id",
    item_col: Annotated[str, typer.Option(help="item column")] = "item_id",
    ts_col: Annotated[str, typer.Option(help="timestamp column")] = "timestamp",
    rating_col: Annotated[
        str | None, typer.Option(help="rating column; without one every interaction is a click")
    ] = None,
    header: Annotated[bool, typer.Option(help="the first line names the columns")] = True,
    delimiter: Annotated[str | None, typer.Option(help="field separator (default , or tab)")] = None,
    ts_unit: Annotated[str, typer.Option(help="auto, s, ms, us or iso")] = "auto",
    click_threshold: Annotated[
        float, typer.Option(help="a rating >= this is a click; lower is an impression only")
    ] = 4.0,
) -> None:
    """Import real interactions (user, item, timestamp[, rating]) into the lake, replacing it.

    Each row becomes an impression (and a click when positive); bad rows are reported with
    their line numbers, skipped, and written to $RECSTACK_HOME/import/<file>.bad.jsonl.
    """
    from simulator.importer import ImportOptions, import_interactions

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    options = ImportOptions(
        format=format, user_col=user_col, item_col=item_col, ts_col=ts_col,
        rating_col=rating_col, header=header, delimiter=delimiter, ts_unit=ts_unit,
        click_threshold=click_threshold,
    )
    summary = import_interactions(s, file, options)
    console.print(
        f"imported {summary.rows_imported:,} of {summary.rows_read:,} rows from {file}: "
        f"{summary.impressions:,} impressions, {summary.clicks:,} clicks, "
        f"{summary.n_users:,} users x {summary.n_items:,} items, "
        f"{summary.first_day} .. {summary.last_day}, into {s.lake_dir} (replaced)"
    )
    if summary.rows_bad:
        reasons = ", ".join(f"{n:,} {r}" for r, n in summary.bad_by_reason.items())
        console.print(f"[yellow]skipped {summary.rows_bad:,} bad rows ({reasons}) -> "
                      f"{summary.dead_letter}[/yellow]")
        for example in summary.bad_examples:
            console.print(f"  {example}")
