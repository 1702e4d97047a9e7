"""The histogram arithmetic of the serving benchmark, on a real /metrics text."""

from __future__ import annotations

from serving.bench import counter_values, delta, histogram_buckets, merge, quantile_upper_bound
from serving.metrics import ServingMetrics


def test_p99_of_stage_histograms_across_replicas_and_scrapes() -> None:
    a, b = ServingMetrics(), ServingMetrics()
    before = merge([histogram_buckets(m.render().decode(), "recstack_stage_duration_seconds",
                                      "stage") for m in (a, b)])
    for _ in range(98):
        a.stage_duration.labels(stage="ranking").observe(0.0007)
    b.stage_duration.labels(stage="ranking").observe(0.004)
    b.stage_duration.labels(stage="ranking").observe(0.04)
    a.degraded.labels(reason="ranker_late").inc(2)
    after = merge([histogram_buckets(m.render().decode(), "recstack_stage_duration_seconds",
                                     "stage") for m in (a, b)])
    ranking = delta(after, before)[("ranking",)]
    assert ranking[float("inf")] == 100
    assert quantile_upper_bound(ranking, 0.5) == 0.001
    assert quantile_upper_bound(ranking, 0.99) == 0.005
    assert quantile_upper_bound(delta(after, before)[("candidates",)], 0.99) is None
    assert counter_values(a.render().decode(), "recstack_degraded", "reason") == {
        "ranker_late": 2.0}
