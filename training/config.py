"""Settings of the promotion gate and the periodic trainer (``RECSTACK_GATE__*``,
``RECSTACK_TRAINER__*``).

They live here rather than in ``recstack/settings.py`` because only the training stage reads
them; a small BaseSettings of its own keeps the kernel unchanged and is read the same way
(prefix ``RECSTACK_``, ``__`` for nesting, lazily, no side effects). Moving the two sections
into the kernel's ``Settings`` later is a copy of the two classes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GateSettings(BaseModel):
    """When a challenger may replace the champion."""

    metric: Literal["auc", "ndcg_at_10", "logloss"] = Field(
        "auc", description="ranker metric compared on the shared holdout (logloss: lower wins)"
    )
    margin: float = Field(0.002, ge=0, description="the challenger must win by at least this")
    max_ndcg_drop: float = Field(
        0.01, ge=0, description="and may not lose more than this NDCG@10 to the champion"
    )
    min_score_std: float = Field(1e-4, ge=0, description="holdout scores must spread this much")
    min_distinct_scores: int = Field(10, ge=1)
    latency_rows: int = Field(500, ge=1, description="rows per ranker batch (DESIGN.md s.7)")
    latency_repeats: int = Field(200, ge=10)
    latency_p99_ms: float = Field(
        8.0, gt=0, description="ranker CPU-time p99 budget per batch (DESIGN.md section 7)")


class TrainerSettings(BaseModel):
    """The periodic retraining loop (``recstack trainer``)."""

    every_sim_days: float = Field(1.0, gt=0, description="retrain every N simulated days")
    speedup: float = Field(
        86400.0, gt=0, description="simulated seconds per wall second (86400: a day a second)"
    )
    run_pipeline: bool = Field(True, description="run `recstack pipeline` before training")
    pipeline_timeout_s: float = Field(1800.0, gt=0)
    max_runs: int = Field(0, ge=0, description="stop after this many runs (0: never)")


class TrainingConfig(BaseSettings):
    """The training stage's own sections, read from the environment."""

    model_config = SettingsConfigDict(
        env_prefix="RECSTACK_", env_nested_delimiter="__", extra="ignore"
    )

    gate: GateSettings = GateSettings()
    trainer: TrainerSettings = TrainerSettings()
