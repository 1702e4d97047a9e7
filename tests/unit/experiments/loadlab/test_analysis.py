"""Knee finding, efficiency, timelines, first degraded answer and recovery on synthetic logs."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from app.experiments.loadlab.analysis import (
    StepStats,
    baseline,
    breaks_slo,
    find_knee,
    first_degraded_s,
    rate_is_off,
    read_request_logs,
    reasons_seen,
    recovery_s,
    scaling_efficiency,
    step_stats,
    timeline,
    window_counts,
)

REC = "/recommendations/[user]"
T0 = 1_700_000_000.0


def _log(rows: list[tuple[float, str, float, int, int, str]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["start_s", "name", "response_ms", "ok", "status",
                                       "degraded"])


def _step(offered: float, achieved: float, p99: float, error_rate: float = 0.0) -> StepStats:
    return StepStats(offered, achieved, achieved * (1 - error_rate), 1000,
                     int(1000 * error_rate), error_rate, p99 / 3, p99 / 1.5, p99, 10.0)


def test_step_stats_percentiles_rate_and_warmup() -> None:
    # 10 s at 10 requests/s, latencies 1..100 ms; plus one slow request in the first second
    rows = [(T0 + i / 10, REC, float(i % 100 + 1), 1, 200, "") for i in range(100)]
    rows.append((T0 + 0.05, REC, 5000.0, 1, 200, ""))
    rows.append((T0 + 5.0, "/events", 9999.0, 1, 202, ""))  # not a recommendation
    df = _log(rows)
    with_warmup = step_stats(df, offered_rps=10, warmup_s=1.0)
    assert with_warmup.requests == 90
    assert with_warmup.p99_ms < 101  # the slow warm-up request is dropped
    assert with_warmup.achieved_rps == pytest.approx(90 / 8.9, rel=1e-6)
    everything = step_stats(df, offered_rps=10)
    assert everything.requests == 101
    assert everything.p99_ms == pytest.approx(np.percentile([*range(1, 101), 5000], 99))
    assert everything.p50_ms == pytest.approx(np.percentile([*range(1, 101), 5000], 50))


def test_step_stats_counts_failures() -> None:
    df = _log([(T0 + i / 10, REC, 10.0, 0 if i % 10 == 0 else 1, 503 if i % 10 == 0 else 200, "")
               for i in range(100)])
    s = step_stats(df, offered_rps=10)
    assert s.failures == 10 and s.error_rate == pytest.approx(0.1)


def test_step_stats_count_degraded_answers_out_of_goodput() -> None:
    # 100 answers at 10/s: 20 skipped the ranker, 5 of those also had no user features.
    rows = [(T0 + i / 10, REC, 10.0, 1, 200,
             "ranker_late;user_features_unavailable" if i < 5 else "ranker_late" if i < 20
             else "") for i in range(100)]
    s = step_stats(_log(rows), offered_rps=10)
    assert s.failures == 0 and s.degraded == 20
    assert s.degraded_rate == pytest.approx(0.2)
    assert s.good_rps == pytest.approx(80 / s.duration_s)
    assert s.degraded_reasons == "ranker_late:0.2;user_features_unavailable:0.05"
    # A step that answers fast by skipping the ranker is past the knee, not at it.
    assert "degraded 20.0% > 1.0%" in breaks_slo(s, slo_ms=100)


def test_knee_is_the_fastest_step_within_the_slo() -> None:
    steps = [_step(40, 40, 20), _step(54, 54, 35), _step(73, 72, 80), _step(98, 90, 240)]
    knee = find_knee(steps, slo_ms=100)
    assert knee is not None and knee.achieved_rps == 72
    assert breaks_slo(steps[3], 100) == "p99 240 ms > SLO 100 ms"
    # errors above 1% or an undelivered offered load also break it
    assert "error rate" in breaks_slo(_step(50, 50, 20, error_rate=0.05), 100)
    assert "delivered" in breaks_slo(_step(100, 80, 20), 100)
    assert find_knee([_step(40, 40, 150)], slo_ms=100) is None


def test_scaling_efficiency() -> None:
    eff = scaling_efficiency({1: 100.0, 2: 160.0, 4: 200.0})
    assert eff == {1: 1.0, 2: pytest.approx(0.8), 4: pytest.approx(0.5)}
    assert math.isnan(scaling_efficiency({2: 160.0})[2])


def _fault_log() -> pd.DataFrame:
    """30 s at 10 requests/s. Fault 10.0-15.0 s: from 10.2 s every answer is degraded (Redis);
    15-18 s: every other request fails; healthy again from 18 s."""
    rows = []
    for i in range(300):
        t = i / 10
        ok, status, degraded, ms = 1, 200, "", 20.0
        if 10.2 <= t < 15.0:
            degraded, ms = "user_features_unavailable", 30.0
        elif 15.0 <= t < 18.0 and i % 2:
            ok, status = 0, 503
        rows.append((T0 + t, REC, ms, ok, status, degraded))
    return _log(rows)


def test_timeline_per_second() -> None:
    tl = timeline(_fault_log(), T0)
    assert list(tl["t_s"]) == list(range(30))
    assert (tl["rps"] == 10).all()
    assert tl.loc[12, "degraded_rate"] == 1.0 and tl.loc[12, "good_rps"] == 0
    assert tl.loc[12, "degraded_user_features_unavailable"] == 1.0
    assert tl.loc[10, "degraded_rate"] == pytest.approx(0.8)
    assert tl.loc[16, "error_rate"] == 0.5 and tl.loc[16, "http_5xx"] == 5
    assert tl.loc[16, "shed_503"] == 5 and tl.loc[20, "http_5xx"] == 0
    assert tl.loc[3, "p99_ms"] == pytest.approx(20.0)


def test_timeline_fills_silent_seconds() -> None:
    df = _log([(T0 + 0.5, REC, 10.0, 1, 200, ""), (T0 + 4.5, REC, 10.0, 1, 200, "")])
    tl = timeline(df, T0)
    assert list(tl["rps"]) == [1, 0, 0, 0, 1]


def test_first_degraded_and_recovery() -> None:
    df = _fault_log()
    fault_start, fault_end = T0 + 10.0, T0 + 15.0
    # first degraded request starts at 10.2 s and answers 30 ms later
    assert first_degraded_s(df, fault_start) == pytest.approx(0.23, abs=1e-6)
    tl = timeline(df, T0)
    base = baseline(tl, 2, 10)
    assert base.rps == 10 and base.good_fraction == 1.0
    # failures until 18 s, then 3 healthy seconds in a row: recovered 3 s after the fault
    assert recovery_s(tl, 15.0, base) == pytest.approx(3.0)
    # a run that never recovers says so
    assert math.isnan(recovery_s(tl[tl["t_s"] < 19], 15.0, base))
    assert math.isnan(first_degraded_s(df, T0 + 25.0))
    counts = window_counts(df, fault_start, fault_end + 10)
    assert counts["requests"] == 150  # 10 s to 25 s
    assert counts["failed"] == 15 and counts["http_5xx"] == 15
    assert counts["degraded"] == 48
    assert counts["failed_fraction"] == pytest.approx(15 / 150)


def test_read_request_logs_merges_processes(tmp_path) -> None:
    header = "start_s,name,response_ms,ok,status,degraded\n"
    (tmp_path / "requests-1.csv").write_text(header + f"{T0 + 2},{REC},5.0,1,200,\n")
    (tmp_path / "requests-2.csv").write_text(
        header + f"{T0 + 1},{REC},7.0,1,200,ranker_late;deadline_exceeded\n")
    df = read_request_logs(sorted(tmp_path.glob("requests-*.csv")))
    assert list(df["response_ms"]) == [7.0, 5.0]
    assert list(df["degraded"]) == ["ranker_late;deadline_exceeded", ""]


def test_first_degraded_ignores_reasons_seen_before_the_fault() -> None:
    rows = [(T0 + 1.0, REC, 20.0, 1, 200, "ranker_late"),  # before the fault: load noise
            (T0 + 10.1, REC, 20.0, 1, 200, "ranker_late"),
            (T0 + 10.5, REC, 20.0, 1, 200, "ranker_late;user_features_unavailable"),
            (T0 + 11.0, REC, 20.0, 0, 503, "")]
    df = _log(rows)
    seen = reasons_seen(df, T0, T0 + 10)
    assert seen == {"ranker_late"}
    assert first_degraded_s(df, T0 + 10, ignore=seen) == pytest.approx(0.52)
    assert first_degraded_s(df, T0 + 10) == pytest.approx(0.12)
    assert first_degraded_s(df[df["start_s"] != T0 + 10.5], T0 + 10, ignore=seen) == \
        pytest.approx(1.02)


def test_open_loop_steps_report_the_send_lag_and_flag_a_rate_off_the_offered() -> None:
    rows = [(T0 + i / 100, REC, 10.0, 1, 200, "", 0.0 if i % 50 else 400.0) for i in range(1000)]
    df = pd.DataFrame(rows, columns=[*_log([]).columns, "lag_ms"])
    on_rate = step_stats(df, offered_rps=100.0)
    assert on_rate.lag_p99_ms == pytest.approx(400.0)
    assert on_rate.delivered_ratio == pytest.approx(1000 / 9.99 / 100)
    assert not on_rate.rate_off
    off = step_stats(df, offered_rps=120.0)  # 100 achieved of 120 offered: 17% short
    assert off.rate_off and off.delivered_ratio == pytest.approx(100.1 / 120, rel=1e-3)


def test_a_rate_gap_is_flagged_past_2_percent_and_past_poisson_noise() -> None:
    assert not rate_is_off(1000, 100.0, 10.0)
    assert not rate_is_off(970, 100.0, 10.0)  # 3% short, but within 3 sd (95) of the noise
    assert rate_is_off(880, 100.0, 10.0)  # 12% short: beyond both
    assert rate_is_off(97_000, 1000.0, 100.0)  # 3% of 100,000: beyond 3 sd (949)
    assert not rate_is_off(99_000, 1000.0, 100.0)  # 1%: within the 2% tolerance


def test_request_logs_without_a_lag_column_read_as_no_lag(tmp_path) -> None:
    path = tmp_path / "requests-1.csv"
    _log([(T0, REC, 5.0, 1, 200, "")]).to_csv(path, index=False)
    assert read_request_logs([path])["lag_ms"].tolist() == [0.0]


def test_a_short_step_is_not_undelivered_when_poisson_noise_explains_the_gap() -> None:
    # 8 RPS for 6 s: 48 requests expected, 38 arrived; 3 sd of the count is about 21.
    short = StepStats(8.0, 38 / 6, 38 / 6, 38, 0, 0.0, 5, 6, 7, 6.0)
    assert breaks_slo(short, 100) is None
    # The same shortfall over 600 s is far past the noise: undelivered.
    long = StepStats(8.0, 3800 / 600, 3800 / 600, 3800, 0, 0.0, 5, 6, 7, 600.0)
    assert "delivered" in breaks_slo(long, 100)
