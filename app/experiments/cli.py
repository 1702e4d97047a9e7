"""``recstack experiment ...`` and the experiment-side top-level verbs.

Each area registers its own commands:
``loadlab`` (scale, chaos; top-level ``capacity``), ``drift`` (drift, databug), ``online`` (ab).

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

import typer

from app.experiments.drift import cli as drift_cli
from app.experiments.loadlab import cli as loadlab_cli
from app.experiments.online import cli as online_cli

app = typer.Typer(
    name="experiment", no_args_is_help=True,
    help="Bounded experiments on the running stack; each writes $RECSTACK_HOME/reports/<kind>-*/",
)
loadlab_cli.register(app)
drift_cli.register(app)
online_cli.register(app)


def register_root(root: typer.Typer) -> None:
    """Top-level verbs that belong to the experiment areas (e.g. ``recstack capacity``)."""
    loadlab_cli.register_root(root)
    drift_cli.register_root(root)
    online_cli.register_root(root)
