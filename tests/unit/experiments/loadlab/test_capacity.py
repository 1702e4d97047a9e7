"""The capacity plan from a scale summary: hand-checked service rate, replicas, memory, cost."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from app.experiments.loadlab import mmc
from app.experiments.loadlab.capacity import CapacityError, CapacityTarget, fit_service_rate, plan

SUMMARY = {
    "service": "api",
    "slo_p99_ms": 100.0,
    # mu = 53.948 + ln(100)/0.1 = 100.0 requests/s
    "max_rps_at_slo_1_replica": 100 - math.log(100) / 0.1,
    "max_rps_at_slo_2_replicas": 100.0,
    "scaling_efficiency_1_to_2": 0.927,
    "cpu_ms_per_request_api_at_knee_1_replica": 4.0,
    "cpu_ms_per_request_nginx_at_knee_1_replica": 0.1,
    "cpu_ms_per_request_redis_at_knee_1_replica": 0.05,
}


def test_fit_service_rate_inverts_the_mm1_p99() -> None:
    mu = fit_service_rate(53.948, 0.1)
    assert mu == pytest.approx(100.0, abs=1e-3)
    assert mmc.response_time_quantile(0.99, 53.948, mu, 1) == pytest.approx(0.1, rel=1e-4)


def test_plan_figures() -> None:
    target = CapacityTarget(qps=50_000, p99_ms=100, users=1_000_000, items=100_000,
                            core_hour_usd=0.04, gib_hour_usd=0.005)
    out = plan(SUMMARY, target, (400.0, 600.0, True))
    assert out["api_service_rate_per_replica_rps"] == pytest.approx(100.0, abs=0.01)
    pooled = out["api_replicas_needed_mmc_pooled"]
    assert mmc.response_time_quantile(0.99, 50_000, 100.0, pooled) <= 0.1
    assert mmc.response_time_quantile(0.99, 50_000, 100.0, pooled - 1) > 0.1
    # utilization capped at 80%: 50000 / (0.8 * 100) = 625 replicas
    c = out["api_replicas_needed"]
    assert c == max(pooled, 625)
    assert out["api_utilization_at_target"] <= 0.8
    # independent M/M/1 queues, each at its knee of 53.95 RPS: 50000 / 53.95 -> 927
    assert out["api_replicas_needed_independent_mm1"] == 927
    # the model's 2-replica knee vs the measured 100 RPS
    predicted = mmc.max_rate_at_slo(100.0, 2, 0.1)
    assert out["mmc_predicted_max_rps_at_slo_2_replicas"] == pytest.approx(predicted, abs=0.1)
    assert out["measured_over_predicted_2_replicas"] == pytest.approx(100 / predicted, abs=1e-3)
    # pessimistic bound: 50000 / (53.948 * 0.927) = 999.8 -> 1000
    assert out["api_replicas_needed_at_measured_efficiency"] == 1000
    # nginx: 50000 * 0.1 ms = 5 cores busy / 0.7 -> 8; Redis: 2.5 cores busy / 0.7 -> 4 shards
    assert out["nginx_cores_needed"] == 8
    assert out["redis_shards_needed"] == 4
    # Redis memory: (1e6 * 400 + 1e5 * 600) * 1.3 / 2^30 = 0.557 GiB
    assert out["redis_memory_gib"] == pytest.approx(0.56, abs=0.01)
    cores = c + 8 + 4
    assert out["total_cores"] == cores
    memory = 0.557 + c * 0.5
    assert out["cost_usd_per_hour"] == pytest.approx(cores * 0.04 + memory * 0.005, abs=0.02)
    assert out["cost_usd_per_month"] == pytest.approx(out["cost_usd_per_hour"] * 730, rel=1e-3)


def test_plan_needs_a_one_replica_knee() -> None:
    with pytest.raises(CapacityError, match="scale"):
        plan({"max_rps_at_slo_1_replica": None}, CapacityTarget(1000, 100, 10, 10),
             (1.0, 1.0, False))


def test_capacity_command_writes_a_report(tmp_path, monkeypatch) -> None:
    from app.cli import app
    from recstack.settings import get_settings
    from tests.conftest import free_port

    home = tmp_path / "home"
    folder = home / "reports" / "scale-20260101T000000Z"
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(SUMMARY))
    monkeypatch.setenv("RECSTACK_HOME", str(home))
    monkeypatch.setenv("RECSTACK_REDIS__PORT", str(free_port()))  # nothing listens: defaults
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["capacity", "--qps", "5000", "--p99-ms", "100"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    out = home / "reports" / "capacity-latest"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target_qps"] == 5000
    assert summary["api_replicas_needed"] == 63  # 5000 / (0.8 * 100), rounded up
    assert summary["redis_bytes_measured"] is False
    assert (out / "mmc_check.png").stat().st_size > 0
    assert "M/M/c" in (out / "report.md").read_text()


def test_capacity_command_without_a_scale_report_fails_clearly(tmp_path, monkeypatch) -> None:
    from app.cli import app
    from recstack.settings import get_settings

    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path / "empty"))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["capacity"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert "recstack experiment scale" in result.output


def test_plan_uses_the_cpu_model_when_other_tenants_held_the_cores() -> None:
    target = CapacityTarget(qps=50_000, p99_ms=100, users=0, items=0)
    quiet = plan(SUMMARY, target, (400.0, 600.0, True))
    assert quiet["plan_model"] == "fitted to the knee"
    # 4 ms of CPU per request: mu = 250/s; 50000 / (0.8 * 250) = 250 replicas
    assert quiet["api_replicas_needed_cpu_model"] == 250
    busy = plan({**SUMMARY, "other_tenants_cpu_cores_at_knees_mean": 1.9}, target,
                (400.0, 600.0, True))
    assert busy["plan_model"].startswith("CPU per request")
    assert busy["api_replicas_needed"] == 250
    assert busy["api_replicas_needed_fitted_model"] == quiet["api_replicas_needed"]


def test_a_budgeted_replica_costs_its_budget_not_a_core() -> None:
    target = CapacityTarget(qps=50_000, p99_ms=100, users=0, items=0)
    whole = plan(SUMMARY, target, (400.0, 600.0, True))
    budgeted = plan({**SUMMARY, "replica_cpu_budget_cores": 0.5}, target, (400.0, 600.0, True))
    assert whole["api_cores_per_replica"] == 1.0 and budgeted["api_cores_per_replica"] == 0.5
    # the same measured knees give the same replica count; each replica is half a core
    assert budgeted["api_replicas_needed"] == whole["api_replicas_needed"]
    assert whole["total_cores"] - budgeted["total_cores"] == pytest.approx(
        0.5 * whole["api_replicas_needed"])
    # 4 CPU ms per request on half a core: 125 RPS, not 250
    assert budgeted["api_service_rate_from_cpu_rps"] == pytest.approx(125.0)
