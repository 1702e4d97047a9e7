"""Batch pipelines: the event lake -> feature tables (Apache Beam) -> Feast.

``run_all(settings, beam_args)`` is what ``recstack pipeline`` calls; ``pipelines.features.run``
is the Beam pipeline (``python -m pipelines.features --help``); ``pipelines.materialize``
applies the Feast definitions and loads Redis.
"""

from pipelines.run import run_all

__all__ = ["run_all"]
