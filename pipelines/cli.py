"""``recstack`` verbs of the feature-pipeline stage (joined into the ``recstack`` command)."""

from __future__ import annotations

import json

import typer
from rich.console import Console

from recstack.logs import configure_logging
from recstack.settings import get_settings

app = typer.Typer()
console = Console(stderr=True)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def pipeline(ctx: typer.Context) -> None:
    """Beam feature pipelines, then feast apply + materialize. Extra flags go to the Beam runner."""
    from pipelines import run_all

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    with console.status("Beam pipelines + Feast materialization"):
        result = run_all(s, beam_args=list(ctx.args))
    console.print_json(json.dumps(result, default=str))
