"""``recstack`` verbs of the feature-pipeline stage (joined into the ``recstack`` command).

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from recstack.logs import configure_logging
from recstack.settings import get_settings

app = typer.Typer()
# `recstack lake ...` (joined as a group by app/cli.py)
lake_app = typer.Typer(name="lake", help="Inspect the event lake.", no_args_is_help=True)
console = Console(stderr=True)

_SWING_HELP = ("fail (and materialize nothing) when a table's newest-day row count changes by "
               "more than this fraction vs the last good run; 0 disables the check "
               "[default: settings.pipeline.max_row_swing, RECSTACK_PIPELINE__MAX_ROW_SWING]")
_BEAM = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_BEAM)
def pipeline(
    ctx: typer.Context,
    max_row_swing: Annotated[float | None, typer.Option(min=0.0, help=_SWING_HELP)] = None,
) -> None:
    """Incremental Beam feature pipeline (only new lake days), checks, then feast apply +
    materialize_incremental. Extra flags go to the Beam runner (--runner=FlinkRunner, ...)."""
    from pipelines.run import run_all

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    with console.status("Beam pipelines + Feast materialization"):
        result = run_all(s, beam_args=list(ctx.args), max_row_swing=_swing(max_row_swing))
    _report(result)


@app.command(context_settings=_BEAM)
def backfill(
    ctx: typer.Context,
    start: Annotated[dt.datetime, typer.Argument(formats=["%Y-%m-%d"],
                                                 help="first snapshot day to rebuild")],
    end: Annotated[dt.datetime, typer.Argument(formats=["%Y-%m-%d"],
                                               help="last snapshot day to rebuild")],
    max_row_swing: Annotated[float | None, typer.Option(min=0.0, help=_SWING_HELP)] = None,
) -> None:
    """Rebuild the feature tables of the snapshot days START..END (inclusive) from the lake,
    then bring the online store up to date. Extra flags go to the Beam runner."""
    from pipelines.run import run_all

    if start > end:
        raise typer.BadParameter(f"START {start:%Y-%m-%d} is after END {end:%Y-%m-%d}")
    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    with console.status(f"backfill {start:%Y-%m-%d}..{end:%Y-%m-%d}"):
        result = run_all(s, beam_args=list(ctx.args), backfill=(start.date(), end.date()),
                         max_row_swing=_swing(max_row_swing))
    _report(result)


def _report(result: dict) -> None:
    """The run's result as JSON (stdout), then one line on its dead letters (stderr)."""
    Console().print_json(json.dumps(result, default=str))
    dead = result.get("dead_letter") or {}
    if dead.get("rows"):
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(dead["by_reason"].items()))
        console.print(f"[yellow]{dead['rows']} rows dead-lettered ({reasons}) -> "
                      f"{dead['path']}[/yellow]")
    elif dead.get("path"):
        console.print(f"no dead letters (run {result.get('run_id')})")


def _swing(value: float | None) -> float | None | str:
    """CLI value -> run_all's: not given = the settings' threshold, 0 = no check."""
    if value is None:
        return "settings"
    return value or None


@lake_app.command("check")
def lake_check(
    quarantine: Annotated[bool, typer.Option(
        "--quarantine", help="move the suspicious partitions (or part files) to "
        "<lake>/quarantine/check=<time>/ (never deleted)")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="the report as JSON on stdout")] = False,
) -> None:
    """List suspicious lake partitions: outside the plausible day range, unreadable Parquet,
    another schema, empty, or not named by a date. Exits 1 when any is found."""
    from pipelines import lakecheck

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    rule = lakecheck.PlausibleRule.from_settings(s.pipeline)
    with Progress(TextColumn("scanning lake partitions"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("scan", total=None)
        report = lakecheck.scan(s.lake_dir, rule,
                                progress=lambda done, total: bar.update(task, completed=done,
                                                                        total=total))
    if quarantine and report.findings:
        tag = "check=" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        report = lakecheck.quarantine(s.lake_dir, report, tag)
    if as_json:
        Console().print_json(json.dumps(report.summary(), default=str))
    else:
        _print_lake_report(report)
    if report.findings:
        raise typer.Exit(1)


def _print_lake_report(report) -> None:
    low, high = report.plausible or (None, None)
    console.print(f"{report.days} partitions, {report.files} part files, {report.rows} rows; "
                  f"plausible days {low}..{high} (settings.pipeline.lake_*)")
    if not report.findings:
        console.print("[green]no suspicious partitions[/green]")
        return
    table = Table("partition", "reason", "rows", "detail",
                  title=f"{len(report.findings)} suspicious ({report.suspicious_rows} rows)")
    for f in report.findings:
        table.add_row(f.partition, f.reason, str(f.rows), f.detail)
    Console().print(table)
    counts = ", ".join(f"{k} {v}" for k, v in report.by_reason().items())
    if report.quarantined_to:
        console.print(f"[yellow]moved {len(report.findings)} ({counts}) to "
                      f"{report.quarantined_to}[/yellow]")
    else:
        console.print(f"[yellow]{counts}: `recstack lake check --quarantine` moves them "
                      "aside[/yellow]")
