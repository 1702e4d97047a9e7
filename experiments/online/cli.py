"""Commands of this experiment area; ``experiments.cli`` registers them."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Adds this area's ``recstack experiment <verb>`` commands to ``app``."""


def register_root(root: typer.Typer) -> None:
    """Adds this area's top-level ``recstack <verb>`` commands to ``root``."""
