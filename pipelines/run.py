"""``recstack pipeline``: the feature pipeline, then Feast apply + materialize."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from recstack.settings import Settings

logger = logging.getLogger(__name__)


def feature_argv(settings: Settings, beam_args: Sequence[str] = ()) -> list[str]:
    """``pipelines.features.run`` arguments for ``settings``; ``beam_args`` are appended (so a
    ``--runner`` there overrides ``settings.pipeline.runner``)."""
    argv = [
        "--lake", str(settings.lake_dir),
        "--out", str(settings.features_dir),
        "--window-days", str(settings.pipeline.window_days),
        "--popular-size", str(settings.pipeline.popular_size),
    ]
    if not any(a == "--runner" or a.startswith("--runner=") for a in beam_args):
        argv += ["--runner", settings.pipeline.runner]
    return argv + list(beam_args)


def run_all(settings: Settings, beam_args: Sequence[str] = ()) -> dict[str, Any]:
    """Lake -> feature tables (Beam) -> Feast registry + Redis online store.

    In: ``settings.lake_dir``; ``beam_args`` go to the Beam runner. Out: the tables under
    ``settings.features_dir``, the definitions applied and the latest snapshots in Redis.
    Returns ``{"counters": {...}, "tables": {file: rows}, "materialized": {view: rows},
    "interval": [start, end], "seconds": {"features", "apply", "materialize"}}``.
    """
    from pipelines import features
    from pipelines.materialize import apply_and_materialize

    started = time.perf_counter()
    result = features.run(feature_argv(settings, beam_args))
    counters = features.counters(result)
    features_s = time.perf_counter() - started
    materialized = apply_and_materialize(settings)
    return {
        "counters": counters,
        "tables": {name: asdict(t)["rows"] for name, t in materialized.tables.items()},
        "materialized": materialized.rows,
        "interval": [materialized.start.isoformat(), materialized.end.isoformat()],
        "seconds": {
            "features": round(features_s, 2),
            "apply": round(materialized.apply_seconds, 2),
            "materialize": round(materialized.materialize_seconds, 2),
        },
    }
