"""Monitoring's top-level verbs (``recstack monitor``, ``recstack report``); the composition
root registers them."""

from __future__ import annotations

import typer


def register_root(root: typer.Typer) -> None:
    """Adds monitoring's ``recstack <verb>`` commands to ``root``."""
