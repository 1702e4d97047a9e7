"""What a monitor check produces: the monitor's Prometheus gauges (:class:`MonitorMetrics`) and
one check's figures and verdicts (:class:`CheckResult`). Below the check parts
(``monitoring.ctr``, ``monitoring.episodes``, ``monitoring.retraining``) and
``monitoring.monitor``, which all use them."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client import Counter as PCounter

from monitoring.trigger import Signal


class MonitorMetrics:
    """The monitor's gauges, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        g = lambda name, doc, labels=(): Gauge(name, doc, list(labels), registry=r)  # noqa: E731
        self.psi = g("recstack_drift_psi", "PSI of a served feature vs the champion's training "
                     "reference.", ["feature"])
        self.score_psi = g("recstack_drift_score_psi", "PSI of served scores vs the champion's "
                           "first sampled answers.")
        self.source_psi = g("recstack_drift_source_psi", "PSI of the candidate-source mix vs the "
                            "champion's first sampled answers.")
        self.source_share = g("recstack_served_source_share", "Share of served items by "
                              "candidate source.", ["source"])
        self.coverage = g("recstack_catalogue_coverage_ratio", "Share of the catalogue shown "
                          "since the last check.")
        self.popularity = g("recstack_popularity_share_ratio", "Share of impressions on the 50 "
                            "most popular items.")
        self.ctr = g("recstack_online_ctr", "Online CTR of the champion over the last window.")
        self.ctr_baseline = g("recstack_online_ctr_baseline", "The champion's burn-in CTR.")
        self.ctr_ratio = g("recstack_online_ctr_ratio", "Window CTR / baseline CTR.")
        self.ctr_z = g("recstack_online_ctr_z", "Standard errors of the window CTR vs baseline.")
        self.segment_ctr_ratio = g("recstack_online_ctr_segment_ratio", "Window CTR / baseline "
                                   "CTR of a user segment (monitor.ctr_segment_by).", ["segment"])
        self.window_imps = g("recstack_online_impressions_window", "Impressions in the window.")
        self.null_version = g("recstack_events_null_model_version_ratio", "Events without a "
                              "model version since the last check.")
        self.no_top = g("recstack_events_requests_without_top_ratio", "Served lists whose "
                        "impressions lack position 0 (e.g. 1-based positions).")
        self.alert = g("recstack_drift_alert", "1 while a drift signal alerts.", ["signal"])
        self.retrains = PCounter("recstack_drift_retrains", "Retrainings started by drift.",
                                 ["cause"], registry=r)
        self.retrain_running = g("recstack_drift_retrain_running", "1 while a retrain runs.")
        self.retrain_exit = g("recstack_drift_retrain_last_exit_code", "Exit code of the last "
                              "drift-triggered retraining.")
        self.model_created = g("recstack_model_created_timestamp_seconds", "Registration time "
                               "of the serving models.", ["model", "alias", "version"])
        self.materialized = g("recstack_feature_last_materialization_timestamp_seconds",
                              "Wall time the online store last received a materialization.")
        self.materialized_until = g("recstack_feature_materialized_until_timestamp_seconds",
                                    "Data time the online store is materialized up to.")
        self.pipeline_failed = g("recstack_pipeline_last_run_failed", "1 if the pipeline's last "
                                 "run was rejected by validation.")
        self.skew = g("recstack_skew_mismatch_ratio", "Share of sampled online feature values "
                      "that differ from the offline point-in-time values.")
        self.skew_n = g("recstack_skew_checked_values", "Values compared by the skew check.")
        self.checks = PCounter("recstack_monitor_checks", "Monitor checks run.", registry=r)
        self.errors = PCounter("recstack_monitor_check_errors", "Parts of a check that failed.",
                               ["part"], registry=r)
        self.last_check = g("recstack_monitor_last_check_timestamp_seconds", "Wall time of the "
                            "last check.")

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class CheckResult:
    """One check's figures and verdicts (also what experiments record per step)."""

    at: float
    values: dict[str, float] = field(default_factory=dict)
    signals: list[Signal] = field(default_factory=list)
    alerting: list[str] = field(default_factory=list)
    retrain_cause: str | None = None
    held_cause: str | None = None
