"""The scaling experiment's pure choices: the automatic CPU budget per replica and where the
steps of each replica count start."""

from __future__ import annotations

import math

import pytest

from app.experiments.loadlab import cpubudget, scale
from app.experiments.loadlab.cpubudget import CpuBudgetError
from app.experiments.loadlab.scale import ScaleConfig, auto_replica_cpus, first_step_rps


class _Probe:
    def release(self) -> None:
        pass


@pytest.fixture
def cgroups_ok(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpubudget.CpuBudget, "detect", classmethod(lambda cls, cpus: _Probe()))


def test_auto_budget_leaves_the_reserve_to_the_rest_of_the_stack(cgroups_ok: None) -> None:
    assert auto_replica_cpus(2, [1, 2]) == pytest.approx(0.6)
    assert auto_replica_cpus(2, [1, 2, 4]) == pytest.approx(0.3)
    assert auto_replica_cpus(8, [1, 2, 4]) == pytest.approx(1.8)
    # (2 - 0.8) / 8 = 0.15: below the minimum, no budget rather than a starved replica
    assert auto_replica_cpus(2, [1, 8]) == 0.0


def test_auto_budget_is_none_where_cgroups_cannot_be_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(cls: type, cpus: float) -> None:
        raise CpuBudgetError("no cgroup cpu controller")

    monkeypatch.setattr(cpubudget.CpuBudget, "detect", classmethod(refuse))
    assert auto_replica_cpus(2, [1, 2]) == 0.0


def test_later_counts_start_at_half_the_linear_expectation() -> None:
    cfg = ScaleConfig(start_rps=40.0, start_fraction=0.5)
    assert first_step_rps(cfg, 1, {}) == 40.0
    assert first_step_rps(cfg, 2, {1: 200.0}) == pytest.approx(200.0)
    assert first_step_rps(cfg, 4, {1: 200.0, 2: 380.0}) == pytest.approx(400.0)
    # never below start_rps, and a count without a knee does not count
    assert first_step_rps(cfg, 2, {1: 30.0}) == 40.0
    assert first_step_rps(cfg, 2, {1: math.nan}) == 40.0
    assert first_step_rps(ScaleConfig(start_rps=10.0), 4, {2: 100.0}) == pytest.approx(100.0)


def test_the_cli_reads_auto_or_cores(cgroups_ok: None) -> None:
    import typer

    from app.experiments.loadlab.cli import _cpus

    assert _cpus("0", [1, 2]) == 0.0
    assert _cpus("0.45", [1, 2]) == 0.45
    assert _cpus("AUTO", [1, 2]) >= 0.0
    for bad in ("-1", "lots", "nan"):
        with pytest.raises(typer.BadParameter, match="auto"):
            _cpus(bad, [1, 2])
    assert scale.AUTO_RESERVED_CORES > 0


def test_the_explanation_follows_the_budget_mode() -> None:
    from app.experiments.loadlab.scale import explain_efficiency

    knees, eff = {1: 199.0, 2: 358.0}, {1: 1.0, 2: 358.0 / 398.0}
    rows = {1: {"cpu_cores_api": 0.51, "cpu_cores_locust": 0.21},
            2: {"cpu_cores_api": 0.93, "cpu_cores_locust": 0.34}}
    budgeted = explain_efficiency(ScaleConfig(replica_cpus=0.6), knees, eff, rows)
    assert "85% with 1, 78% with 2" in budgeted  # 0.51 / 0.6, 0.93 / 1.2
    assert "1.2 cores with 2" in budgeted and "no core" not in budgeted
    assert "**0.90** (meets" in budgeted
    unlimited = explain_efficiency(ScaleConfig(), knees, {1: 1.0, 2: 0.67}, rows)
    assert "adds a process but no core" in unlimited and "quota" not in unlimited
    assert "**0.67** (misses" in unlimited
