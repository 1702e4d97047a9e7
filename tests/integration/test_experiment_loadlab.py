"""The load lab on a real stack (tiny world, free ports): a 2-step scale run and a kill-replica
chaos run write their report folders with real figures."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from recstack.settings import Settings
from tests.conftest import REQUIRE_SERVICES

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.mlflow, pytest.mark.slow]


@pytest.fixture
def stack_settings(native_stack_settings: Callable[..., Settings]) -> Settings:
    return native_stack_settings(api_ports=2)


def test_scale_and_kill_replica_reports(stack_settings: Settings) -> None:
    from app.demo import run_demo
    from app.experiments.loadlab.chaos import ChaosConfig, run_chaos
    from app.experiments.loadlab.cpubudget import CpuBudget, CpuBudgetError
    from app.experiments.loadlab.probes import program_pids
    from app.experiments.loadlab.scale import ScaleConfig, run_scale
    from app.stack import runner as stack

    s = stack_settings
    console = Console(stderr=True)
    try:
        run_demo(s, console=console, run_load=False)

        # A tiny scale run: 1 replica, 2 short steps (a lenient SLO, so both steps are measured),
        # under a CPU budget where this machine lets us set one.
        try:
            CpuBudget.detect(0.5).release()
            cpus = 0.5
        except CpuBudgetError:
            if REQUIRE_SERVICES:  # a budget-less scale run would not test the budget
                raise
            cpus = 0.0
        cfg = ScaleConfig(replicas=[1], step_s=6, warmup_s=1.0, start_rps=8, growth=1.5,
                          max_steps=2, slo_ms=5000, replica_cpus=cpus)
        folder = run_scale(s, cfg, console)
        for name in ("report.md", "summary.json", "steps.csv", "latency_curves.png",
                     "throughput.png", "cpu_per_request.png", "efficiency.png"):
            assert (folder / name).stat().st_size > 0, name
        summary = json.loads((folder / "summary.json").read_text())
        steps = pd.read_csv(folder / "steps.csv")
        assert len(steps) == 2
        assert (steps["achieved_rps"] > 0).all() and (steps["requests"] > 0).all()
        # Open loop by default: Poisson arrivals from 100 connections, the send lag recorded.
        assert (steps["arrivals"] == "poisson").all() and (steps["users"] >= 100).all()
        assert steps["lag_p99_ms"].notna().all() and steps["delivered_ratio"].notna().all()
        assert summary["arrivals"] == "poisson" and summary["connections_min"] == 100
        assert summary["max_rps_at_slo_1_replica"] == pytest.approx(steps["achieved_rps"].max(),
                                                                  abs=1e-3)
        assert 0 < summary["p50_ms_at_knee_1_replica"] <= summary["p99_ms_at_knee_1_replica"]
        assert summary["cpu_ms_per_request_api_at_knee_1_replica"] > 0
        assert summary["machine"]["cores"] >= 1
        assert "![" in (folder / "report.md").read_text()
        assert (s.reports_dir / "scale-latest").resolve() == folder.resolve()
        # the api is back at its 2 replicas
        assert {"api-0", "api-1"} <= set(program_pids(s))
        if cpus:
            assert summary["replica_cpu_budget_cores"] == cpus
            throttled = summary["quota_throttled_period_fraction_at_knee_1_replica"]
            assert throttled is not None and 0 <= throttled <= 1
            for pid in program_pids(s).values():  # released: nobody is left in the budget
                assert "/recstack/" not in Path(f"/proc/{pid}/cgroup").read_text()

        # Kill one of the 2 replicas under load; supervisord brings it back.
        before = program_pids(s)["api-1"]
        folder = run_chaos(s, ChaosConfig(fault="kill-replica", rps=10, pre_s=4, fault_s=5,
                                          post_s=5), console)
        for name in ("report.md", "summary.json", "timeline.csv", "requests.csv",
                     "timeline.png", "figures.png"):
            assert (folder / name).stat().st_size > 0, name
        summary = json.loads((folder / "summary.json").read_text())
        assert summary["fault"] == "kill-replica"
        assert summary["kill_replica_fault_window_s"] > 0
        assert summary["kill_replica_requests_during_fault"] > 0
        # nginx retries a GET the killed replica dropped on the other one: none is lost.
        print("kill-replica:", {k: v for k, v in summary.items() if k.startswith("kill_replica")})
        assert summary["kill_replica_failed_request_fraction"] == 0
        assert summary["kill_replica_failed_request_fraction_whole_run"] == 0
        for key in ("kill_replica_recover_s", "kill_replica_first_degraded_s",
                    "kill_replica_http_5xx_count", "load_average_1m"):
            assert key in summary
        timeline = pd.read_csv(folder / "timeline.csv")
        assert len(timeline) >= 10 and timeline["rps"].sum() > 0
        assert "breaker_state_max" in timeline
        after = program_pids(s).get("api-1")
        assert after is not None and after != before
    finally:
        stack.down(s)
