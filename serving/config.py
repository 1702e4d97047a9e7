"""Serving-only knobs that ``recstack.settings.ServingSettings`` does not (yet) carry.

Read from ``RECSTACK_SERVING__*`` like the kernel's serving section (the kernel ignores the keys
it does not know), so one environment configures both. Budgets are milliseconds per stage; the
request deadline itself is ``ServingSettings.deadline_ms``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

Mode = Literal["inprocess", "split"]


class ServingTuning(BaseSettings):
    """Stage budgets, overload limits, breaker and split-mode addresses of one replica."""

    model_config = SettingsConfigDict(env_prefix="RECSTACK_SERVING__", extra="ignore")

    mode: Mode = "inprocess"
    # Per-stage budgets (DESIGN.md section 7), in ms; a stage past its budget is skipped.
    # Defaults are about twice DESIGN.md's per-stage targets: on 2 shared cores a thread waits
    # for the GIL or a core for milliseconds, and a skipped stage costs quality.
    candidates_budget_ms: float = Field(20.0, gt=0)
    user_features_budget_ms: float = Field(10.0, gt=0)
    ranking_budget_ms: float = Field(30.0, gt=0)
    # A client may shorten (never lengthen past this) its deadline with X-Deadline-Ms.
    max_deadline_ms: float = Field(1000.0, gt=0)
    # Requests a replica works on at once; more are shed with 503 + Retry-After.
    max_in_flight: int = Field(32, ge=1)
    retry_after_s: int = Field(1, ge=1)
    # Redis circuit breaker: opens after this many consecutive failures, probes after cooldown.
    breaker_threshold: int = Field(3, ge=1)
    breaker_cooldown_s: float = Field(1.0, gt=0)
    # How often the replica checks whether a materialization finished (item feature refresh).
    materialization_poll_s: float = Field(5.0, gt=0)
    # Split mode: where the candidate and ranking services are (their nginx front or a replica);
    # empty: derived by the native stack from its ports.
    candidates_url: str = ""
    ranking_url: str = ""
    # Replicas of each stage service in the native stack (split mode).
    candidates_replicas: int = Field(1, ge=1, le=8)
    ranking_replicas: int = Field(1, ge=1, le=8)
    # Keep-alive connections per service and replica process (httpx pool).
    pool_connections: int = Field(32, ge=1)
    # Chaos knob for tests and experiments: the ranker sleeps this long before scoring.
    inject_ranking_delay_ms: float = Field(0.0, ge=0)
