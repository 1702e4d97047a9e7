"""Parsing Locust's CSV output and building its command line (Locust itself never imported)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

from app.stack.loadtest import (
    LOCUSTFILE,
    RECOMMENDATIONS_ROW,
    LoadTestError,
    locust_command,
    parse_stats_csv,
)

HEADER = (
    "Type,Name,Request Count,Failure Count,Median Response Time,Average Response Time,"
    "Min Response Time,Max Response Time,Average Content Size,Requests/s,Failures/s,"
    "50%,66%,75%,80%,90%,95%,98%,99%,99.9%,99.99%,100%"
)


def _write(path: Path, *rows: str, header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _write_failures(path: Path, *rows: str) -> Path:
    """Locust's failures CSV: method, name, error, occurrences."""
    return _write(path, *rows, header="Method,Name,Error,Occurrences")


def test_parses_the_aggregated_row(tmp_path: Path) -> None:
    stats = _write(
        tmp_path / "run_stats.csv",
        "GET,/recommendations/[user],900,3,12,14.2,3,210,1800,45.1,0.15,12,14,15,16,20,31,44,58,190,210,210",
        ",Aggregated,1000,4,12,14.5,3,230,1810,50.2,0.2,13,15,16,17,21,33,47,61,200,230,230",
    )
    failures = _write_failures(
        tmp_path / "run_failures.csv",
        "GET,/recommendations/[user],expected 20 items got 5,1",
        "GET,/recommendations/[user],status 503,3",
    )
    result = parse_stats_csv(stats, failures)
    assert (result.requests, result.failures) == (1000, 4)
    assert result.rps == pytest.approx(50.2)
    assert (result.p50_ms, result.p95_ms, result.p99_ms) == (13, 33, 61)
    assert result.failure_ratio == pytest.approx(0.004)
    assert result.csv_path == stats
    assert result.top_failures[0].startswith("3x GET /recommendations/[user]: status 503")


def test_the_recommendations_row_excludes_the_events(tmp_path: Path) -> None:
    # The demo reports GET /recommendations latency; POST /events only counts in the totals.
    stats = _write(
        tmp_path / "run_stats.csv",
        "POST,/events,300,1,40,41,20,90,10,15.0,0.05,40,41,42,43,60,70,80,85,90,90,90",
        "GET,/recommendations/[user],900,3,12,14.2,3,210,1800,45.1,0.15,12,14,15,16,20,31,44,58,190,210,210",
        ",Aggregated,1200,4,14,20.0,3,230,1810,60.1,0.2,16,18,19,21,40,60,75,82,200,230,230",
    )
    result = parse_stats_csv(stats, row=RECOMMENDATIONS_ROW)
    assert result.row == RECOMMENDATIONS_ROW
    assert (result.requests, result.failures, result.rps) == (900, 3, pytest.approx(45.1))
    assert (result.p50_ms, result.p95_ms, result.p99_ms) == (12, 31, 58)
    assert (result.total_requests, result.total_failures) == (1200, 4)
    with pytest.raises(LoadTestError, match="no '/nothing' row.*/events"):
        parse_stats_csv(stats, row="/nothing")


def test_no_requests_gives_nan_percentiles(tmp_path: Path) -> None:
    na = ",".join(["N/A"] * 11)
    stats = _write(tmp_path / "s.csv", f",Aggregated,0,0,0,0,0,0,0,0,0,{na}")
    result = parse_stats_csv(stats)
    assert result.requests == 0 and result.failure_ratio == 0.0
    assert math.isnan(result.p99_ms)


def test_missing_file_or_row_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LoadTestError, match="no statistics"):
        parse_stats_csv(tmp_path / "absent.csv")
    stats = _write(tmp_path / "s.csv", "GET,/x,1,0,1,1,1,1,1,1,0,1,1,1,1,1,1,1,1,1,1,1")
    with pytest.raises(LoadTestError, match="Aggregated"):
        parse_stats_csv(stats)


def test_command_runs_locust_headless_in_its_own_interpreter(tmp_path: Path) -> None:
    cmd = locust_command("http://127.0.0.1:1", users=7, spawn_rate=2.5, duration_s=9, prefix=tmp_path / "p")
    assert cmd[:5] == [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE)]
    joined = " ".join(cmd)
    for part in ("--headless", "-u 7", "-r 2.5", "-t 9s", "--host http://127.0.0.1:1",
                 f"--csv {tmp_path / 'p'}", "--only-summary"):
        assert part in joined
    assert LOCUSTFILE.exists()
    assert "locust" not in sys.modules  # never imported in-process


def test_shed_requests_are_counted_apart_from_errors(tmp_path: Path) -> None:
    stats = _write(
        tmp_path / "run_stats.csv",
        "POST,/events,300,2,40,41,20,90,10,15.0,0.05,40,41,42,43,60,70,80,85,90,90,90",
        "GET,/recommendations/[user],900,4,12,14.2,3,210,1800,45.1,0.15,12,14,15,16,20,31,44,58,190,210,210",
        ",Aggregated,1200,6,14,20.0,3,230,1810,60.1,0.2,16,18,19,21,40,60,75,82,200,230,230",
    )
    failures = _write_failures(
        tmp_path / "run_failures.csv",
        "GET,/recommendations/[user],status 503: waited more than 100 ms,3",
        "GET,/recommendations/[user],expected 20 items got 5,1",
        "POST,/events,status 503: the event stream is unavailable,2",
    )
    result = parse_stats_csv(stats, failures, row=RECOMMENDATIONS_ROW)
    assert (result.failures, result.shed, result.errors) == (4, 3, 1)
    total = parse_stats_csv(stats, failures)
    assert (total.failures, total.shed, total.errors) == (6, 5, 1)
