"""Batch pipelines: the event lake -> feature tables (Apache Beam) -> Feast.

``pipelines.run.run_all(settings, beam_args)`` is what ``recstack pipeline`` calls;
``pipelines.features`` is the Beam pipeline (``python -m pipelines.features --help``);
``pipelines.materialize`` applies the Feast definitions and loads Redis.
"""
