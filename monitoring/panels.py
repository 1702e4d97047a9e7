"""The panels of the monitoring dashboard, defined once: ``recstack report`` plots them from
Prometheus' HTTP API and ``monitoring.grafana`` renders the same list as Grafana JSON."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str  # Grafana legend format: {{label}} placeholders


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana unit id: s, reqps, percentunit, short, dateTimeAsIso...
    queries: tuple[Query, ...]
    description: str = ""


PANELS: tuple[Panel, ...] = (
    Panel("Latency p99 per stage", "s", (
        Query("recstack:stage_duration_seconds:p99_1m", "{{stage}}"),),
        "Where the 100 ms budget goes (serving/metrics.py STAGES)."),
    Panel("Request latency", "s", (
        Query("recstack:request_duration_seconds:p50_1m", "p50"),
        Query("recstack:request_duration_seconds:p95_1m", "p95"),
        Query("recstack:request_duration_seconds:p99_1m", "p99"))),
    Panel("Requests per second", "reqps", (
        Query("sum by (route) (rate(recstack_requests_total[1m]))", "{{route}}"),)),
    Panel("Errors per second (5xx, shed)", "reqps", (
        Query('sum by (code) (rate(recstack_requests_total{code=~"5.."}[1m]))', "{{code}}"),
        Query("sum(rate(recstack_shed_requests_total[1m]))", "shed"))),
    Panel("Degraded share by reason", "percentunit", (
        Query("sum by (reason) (recstack:degraded_ratio:rate1m)", "{{reason}}"),)),
    Panel("SLO burn rate (1h window)", "short", (
        Query("recstack:slo_availability_errors:ratio_rate1h / 0.01", "availability"),
        Query("recstack:slo_latency_errors:ratio_rate1h / 0.01", "latency")),
        "14.4 pages (fast burn), 6 over 6h opens a ticket."),
    Panel("Feature drift (PSI vs the champion's training reference)", "short", (
        Query("recstack_drift_psi", "{{feature}}"),
        Query("recstack_drift_score_psi", "scores"),
        Query("recstack_drift_source_psi", "candidate sources")),
        "0.25 and above: shifted."),
    Panel("Online CTR", "percentunit", (
        Query("recstack_online_ctr", "window"),
        Query("recstack_online_ctr_baseline", "baseline"))),
    Panel("Online CTR per segment (window / lagged baseline)", "percentunit", (
        Query("recstack_online_ctr_segment_ratio", "{{segment}}"),),
        "Under 85% and 3.5 standard errors below: the monitor retrains."),
    Panel("Coverage and popularity bias", "percentunit", (
        Query("recstack_catalogue_coverage_ratio", "catalogue coverage"),
        Query("recstack_popularity_share_ratio", "impressions on top-50 popular"))),
    Panel("Model versions served (replicas)", "short", (
        Query("count by (model, version) (recstack_model_info)", "{{model}} v{{version}}"),)),
    Panel("Freshness (hours)", "h", (
        Query("recstack:model_age_seconds / 3600", "{{model}} model age"),
        Query("recstack:feature_freshness_seconds / 3600", "since materialization"))),
)
