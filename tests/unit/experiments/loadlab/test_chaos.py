"""Chaos figures and verdicts on a synthetic overload run; the CLI's wiring."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from app.experiments.loadlab.analysis import timeline
from app.experiments.loadlab.chaos import ChaosConfig, FaultTimes, chaos_figures, verdicts

REC = "/recommendations/[user]"
T0 = 1_700_000_000.0


def test_overload_goodput_and_accepted_p99() -> None:
    # 40 s: 10 rps before, 40 rps offered in 10-25 s of which a quarter shed (503), then 10 rps
    rows = []
    for sec in range(40):
        n = 40 if 10 <= sec < 25 else 10
        for j in range(n):
            shed = 10 <= sec < 25 and j % 4 == 0
            rows.append((T0 + sec + j / n, REC, 5.0 if shed else 80.0, 0 if shed else 1,
                         503 if shed else 200, ""))
    df = pd.DataFrame(rows, columns=["start_s", "name", "response_ms", "ok", "status", "degraded"])
    cfg = ChaosConfig(fault="overload", slo_ms=100)
    times = FaultTimes(start=T0 + 10, end=T0 + 25)
    out = chaos_figures(cfg, df, timeline(df, T0), times, T0, base_rps=10, peak=20.0)
    # past the 2 s ramp: 30 answered per second, peak 20 -> 1.5
    assert out["overload_goodput_rps"] == pytest.approx(30.0, rel=0.01)
    assert out["overload_goodput_fraction_of_peak"] == pytest.approx(1.5, rel=0.01)
    assert out["overload_accepted_p99_ms"] == pytest.approx(80.0)
    assert out["overload_accepted_p99_over_slo"] == pytest.approx(0.8)
    assert out["overload_shed_fraction"] == pytest.approx(0.25)
    assert out["overload_http_5xx_count"] == 150  # all 503s of the window
    rows = {r["figure"]: r for r in verdicts("overload", out)}
    assert rows["overload_goodput_fraction_of_peak"]["met"] == "yes"
    assert rows["overload_accepted_p99_over_slo"]["met"] == "yes"


def test_verdicts_of_a_missing_figure_are_not_met() -> None:
    rows = verdicts("kill-replica", {"kill_replica_failed_request_fraction": 0.0,
                                     "kill_replica_recover_s": None})
    assert [r["met"] for r in rows] == ["yes", "no"]


def test_experiment_help_lists_the_lab_commands() -> None:
    from app.cli import app

    result = CliRunner().invoke(app, ["experiment", "--help"])
    assert result.exit_code == 0
    assert "scale" in result.output and "chaos" in result.output
    bad = CliRunner().invoke(app, ["experiment", "chaos", "--fault", "meteor"])
    assert bad.exit_code != 0 and "unknown fault" in bad.output


def test_chaos_takes_its_load_from_the_newest_unbudgeted_scale_report(tmp_path) -> None:
    import json

    from app.experiments.loadlab.chaos import peak_rps, scale_summary
    from recstack.settings import Settings

    settings = Settings(home=tmp_path)
    assert scale_summary(settings) is None and peak_rps(None, 2) is None
    for name, budget, knee2 in (("scale-20261201T000000Z", None, 340.0),
                                ("scale-20261202T000000Z", 0.6, 358.0)):
        folder = settings.reports_dir / name
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({
            "replica_cpu_budget_cores": budget, "max_rps_at_slo_1_replica": 200.0,
            "max_rps_at_slo_2_replicas": knee2}))
    summary = scale_summary(settings)
    # the newer one gave each replica 0.6 cores; chaos runs unlimited replicas
    assert summary["report_folder"] == "scale-20261201T000000Z"
    assert peak_rps(summary, 2) == 340.0
    assert peak_rps(summary, 4) == 200.0  # not measured: the 1-replica knee, a lower bound
    (settings.reports_dir / "scale-20261201T000000Z" / "summary.json").write_text("{broken")
    assert scale_summary(settings)["report_folder"] == "scale-20261202T000000Z"
