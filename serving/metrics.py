"""Prometheus metrics of one app instance, on its own registry (so tests can build many apps).

Names follow STYLE.md: ``recstack_`` prefix, seconds, ``_total`` counters; histogram buckets put
the per-stage budgets (DESIGN.md section 7) and the 100 ms deadline on bucket edges. No user or
item id is ever a label.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# 1, 2, 3, 5, 8 ms are DESIGN.md's stage budgets (serialize, ANN, item features, user features,
# ranker); 10 and 20 ms the default candidate and ranking budgets of serving.config.
STAGE_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.008, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0,
)
# 30 and 50 ms are the p99 targets; 100 ms is the default request deadline.
REQUEST_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CANDIDATE_COUNT_BUCKETS = (0, 1, 20, 50, 100, 250, 500, 1000)
STAGES = ("seen", "candidates", "user_features", "item_features", "ranking", "serialize")
BREAKER_STATES = ("closed", "half_open", "open")


class ServingMetrics:
    """The serving metrics, registered on ``registry`` (a fresh one by default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        # In this order: the registry exports the families in the order they were registered.
        self._add_request_metrics(self.registry)
        self._add_event_metrics(self.registry)
        self._add_model_metrics(self.registry)
        self._add_load_metrics(self.registry)
        self._add_breaker_metrics(self.registry)
        self._add_recommendation_metrics(self.registry)
        self._add_experiment_metrics(self.registry)
        self._add_feature_metrics(self.registry)

    def _add_request_metrics(self, r: CollectorRegistry) -> None:
        """Latency by route and by stage, outcomes by status code, degraded answers."""
        self.request_duration = Histogram(
            "recstack_request_duration_seconds", "HTTP request latency by route template.",
            ["route"], buckets=REQUEST_BUCKETS, registry=r,
        )
        self.stage_duration = Histogram(
            "recstack_stage_duration_seconds", "Time spent in one stage of a recommendation.",
            ["stage"], buckets=STAGE_BUCKETS, registry=r,
        )
        self.requests = Counter(
            "recstack_requests", "HTTP requests by route template and status code.",
            ["route", "code"], registry=r,
        )
        self.degraded = Counter(
            "recstack_degraded", "Recommendations served in a degraded mode, by reason.",
            ["reason"], registry=r,
        )
        for stage in STAGES:  # export zeroed series so dashboards see every stage from start
            self.stage_duration.labels(stage=stage)

    def _add_event_metrics(self, r: CollectorRegistry) -> None:
        """POST /events: events stored, requests refused."""
        self.events_accepted = Counter(
            "recstack_events_accepted", "Events appended to the event stream.", registry=r,
        )
        # Rejected POST /events requests by reason (invalid, implausible, body_too_large,
        # backlog_full); nothing of a rejected request is stored.
        self.events_rejected = Counter(
            "recstack_events_rejected", "POST /events requests refused, by reason.", ["reason"],
            registry=r,
        )

    def _add_model_metrics(self, r: CollectorRegistry) -> None:
        """The model versions served, and the users the candidate model has no embedding for."""
        self.model_info = Gauge(
            "recstack_model_info", "Model versions this replica serves (value 1).",
            ["model", "version"], registry=r,
        )
        self.cold_start = Counter(
            "recstack_cold_start", "Recommendations for users without an embedding.", registry=r,
        )

    def _add_load_metrics(self, r: CollectorRegistry) -> None:
        """Concurrency: requests in flight, requests shed at the limit."""
        self.in_flight = Gauge(
            "recstack_in_flight_requests", "Requests this replica is working on now.", registry=r,
        )
        self.shed = Counter(
            "recstack_shed_requests", "Requests refused with 503 at the concurrency limit.",
            ["route"], registry=r,
        )

    def _add_breaker_metrics(self, r: CollectorRegistry) -> None:
        """Circuit breakers: state and state changes (see ``breaker_changed``)."""
        self.breaker_state = Gauge(
            "recstack_breaker_state",
            "Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open.",
            ["dependency"], registry=r,
        )
        self.breaker_transitions = Counter(
            "recstack_breaker_transitions", "Circuit breaker state changes by dependency and state.",
            ["dependency", "state"], registry=r,
        )

    def _add_recommendation_metrics(self, r: CollectorRegistry) -> None:
        """Per recommendation: candidates ranked, deadline given."""
        self.candidates_count = Histogram(
            "recstack_candidates_count", "Candidates ranked per recommendation.",
            buckets=CANDIDATE_COUNT_BUCKETS, registry=r,
        )
        self.deadline = Histogram(
            "recstack_request_deadline_seconds", "Deadline each recommendation was given.",
            buckets=REQUEST_BUCKETS, registry=r,
        )

    def _add_experiment_metrics(self, r: CollectorRegistry) -> None:
        """Online experiments: arms, canary rollbacks, the shadow arm. Arm names come from
        settings (control, treatment), never users."""
        self.arm_requests = Counter(
            "recstack_arm_requests", "Recommendations by experiment arm (the assigned arm).",
            ["arm"], registry=r,
        )
        self.arm_errors = Counter(
            "recstack_arm_errors",
            "Recommendations of an arm that failed or had a stage unavailable.", ["arm"],
            registry=r,
        )
        self.arm_duration = Histogram(
            "recstack_arm_recommend_duration_seconds", "Recommendation time by experiment arm.",
            ["arm"], buckets=REQUEST_BUCKETS, registry=r,
        )
        self.arm_weight = Gauge(
            "recstack_arm_weight", "Current traffic weight of each experiment arm.", ["arm"],
            registry=r,
        )
        self.canary_rollbacks = Counter(
            "recstack_canary_rollbacks", "Canary arms rolled back by the SLO guard.", ["arm"],
            registry=r,
        )
        self.shadow_requests = Counter(
            "recstack_shadow_requests",
            "Shadow scorings by outcome (scored, dropped, failed, not_loaded).", ["outcome"],
            registry=r,
        )
        self.shadow_duration = Histogram(
            "recstack_shadow_duration_seconds", "Time the shadow arm took per request.",
            buckets=REQUEST_BUCKETS, registry=r,
        )
        self.shadow_overlap = Histogram(
            "recstack_shadow_overlap_ratio",
            "Share of the served list that the shadow arm also returned.",
            buckets=(0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0), registry=r,
        )

    def _add_feature_metrics(self, r: CollectorRegistry) -> None:
        """The in-process item table (see ``track_item_feature_share``)."""
        self.item_features_share = Gauge(
            "recstack_item_features_share",
            "Share of catalogue items with feature values in this replica's in-process table "
            "(0: the online store was empty or lost when it was read; the replica is not ready).",
            registry=r,
        )

    def breaker_changed(self, dependency: str, state: int) -> None:
        """``CircuitBreaker.on_change`` callback: the gauge and the transition counter."""
        self.breaker_state.labels(dependency=dependency).set(int(state))
        self.breaker_transitions.labels(
            dependency=dependency, state=BREAKER_STATES[int(state)]
        ).inc()

    def track_item_feature_share(self, share: Callable[[], float]) -> None:
        """Read ``share()`` at every scrape: the gauge is always the table being served."""
        self.item_features_share.set_function(share)

    def set_arms(self, weights: dict[str, float]) -> None:
        """Export every arm's series from the start (zeroed counters, current weights)."""
        for arm, weight in weights.items():
            self.arm_requests.labels(arm=arm)
            self.arm_errors.labels(arm=arm)
            self.arm_weight.labels(arm=arm).set(weight)

    def shadow_result(self, outcome: str, seconds: float, overlap: float | None) -> None:
        """``ShadowRunner.on_result`` callback."""
        self.shadow_requests.labels(outcome=outcome).inc()
        if outcome == "scored":
            self.shadow_duration.observe(seconds)
            if overlap is not None:
                self.shadow_overlap.observe(overlap)

    def set_models(self, versions: dict[str, str]) -> None:
        """Replace the model-info series with ``{model: version}``."""
        with warnings.catch_warnings():
            # Importing feast.metrics sets PROMETHEUS_MULTIPROC_DIR process-wide, which makes
            # clear() warn; this registry is not multi-process (values were bound at import).
            warnings.simplefilter("ignore", UserWarning)
            self.model_info.clear()
        for model, version in versions.items():
            self.model_info.labels(model=model, version=version).set(1)

    def render(self) -> bytes:
        """The text exposition format of this registry."""
        return generate_latest(self.registry)
