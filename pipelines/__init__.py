"""Batch pipelines: the event lake -> feature tables (Apache Beam) -> Feast.

``run_all(settings, beam_args)`` is what ``recstack pipeline`` calls; ``pipelines.features.run``
is the Beam pipeline (``python -m pipelines.features --help``); ``pipelines.materialize``
applies the Feast definitions and loads Redis. ``run_all`` is imported lazily (PEP 562) so
that ``import pipelines.cli`` — what ``recstack --help`` needs — does not pull in Beam.
"""

from __future__ import annotations

from typing import Any

__all__ = ["run_all"]


def __getattr__(name: str) -> Any:
    if name == "run_all":
        from pipelines.run import run_all

        return run_all
    raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
