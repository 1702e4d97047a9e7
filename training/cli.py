"""``recstack`` verbs of the training stage (joined into the ``recstack`` command)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from recstack.logs import configure_logging
from recstack.settings import get_settings

app = typer.Typer()
console = Console(stderr=True)


@app.command()
def train() -> None:
    """Train the candidate model + ANN index and the ranker; register both in MLflow as champion."""
    from training import train_and_register

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    with console.status("training candidates + ranker, logging to MLflow"):
        result = train_and_register(s)
    table = Table("metric", "value", title="training (holdout: the last day)")
    for k, v in sorted(result.metrics.items()):
        table.add_row(k, f"{v:.4f}")
    Console().print(table)
    console.print(
        f"registered candidates v{result.candidates_version}, ranker v{result.ranker_version} "
        f"as @{s.mlflow.serving_alias} (run {result.run_id})"
    )
