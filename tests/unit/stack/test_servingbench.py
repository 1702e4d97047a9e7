"""The serving benchmark's pure parts: the mode switch reaches the programs, the summary table."""

from __future__ import annotations

from pathlib import Path

from app.stack.services import native_programs
from app.stack.servingbench import (
    _degraded,
    bench_env,
    in_mode,
    result_key,
    summary_table,
    users_for,
)
from recstack.settings import Settings


def test_the_mode_switch_reaches_the_programs_environment(tmp_path: Path) -> None:
    # The programs' environment comes from the settings object, not from this process's
    # environment: a switch must change the object, and leave the caller's alone.
    s = Settings(home=tmp_path)
    split = in_mode(s, "split")
    env = {p.name: p.env for p in native_programs(split)}
    assert env["api-0"]["RECSTACK_SERVING__MODE"] == "split"
    assert env["api-0"]["RECSTACK_SERVING__RANKING_URL"].startswith("http://127.0.0.1:")
    assert s.serving.mode == "inprocess"
    assert native_programs(s)[-1].env.get("RECSTACK_SERVING__MODE") != "split"


def test_degraded_counts_are_deltas_by_reason() -> None:
    before = {"api": {"degraded": {"ranker_late": 5.0, "candidates_late": 1.0}}}
    after = {"api": {"degraded": {"ranker_late": 9.0, "candidates_late": 1.0,
                                  "user_features_late": 2.0}}}
    assert _degraded(before, after) == {"ranker_late": 4.0, "user_features_late": 2.0}


def test_summary_puts_the_modes_side_by_side() -> None:
    figures: dict[str, object] = {}
    for mode, p99 in (("inprocess", 41.0), ("split", 48.0)):
        for rps in (100, 150):
            for arrivals in ("poisson", "paced"):
                key = result_key(mode, rps, arrivals)
                figures |= {f"{key}_achieved_rps": float(rps) - (5 if arrivals == "paced" else 0),
                            f"{key}_rate_off": arrivals == "paced",
                            f"{key}_p50_ms": 10.0,
                            f"{key}_p95_ms": 20.0, f"{key}_p99_ms": p99, f"{key}_errors": 0,
                            f"{key}_degraded_count": 3.0,
                            f"{key}_serving_cpu_ms_per_request": 1.5,
                            f"{key}_api_ranking_p99_le_ms": 8.0}
    lines = summary_table(figures).splitlines()
    assert len(lines) == 2 + 8
    assert lines[2].startswith(
        "| 100 | inprocess | poisson | 100.0 | 10.0 | 20.0 | 41.0 | 0 | 3.0 | 1.5 |")
    assert lines[3].startswith("| 100 | inprocess | paced | 95.0 (off offered) |")
    assert lines[4].startswith("| 100 | split | poisson |") and "| 48.0 |" in lines[4]
    assert "| 8.0 |" in lines[2] and lines[2].endswith("| - |")  # serialize not measured


def test_open_loop_runs_use_many_connections_and_paced_runs_few() -> None:
    assert users_for(100, "poisson") == 100 and users_for(150, "poisson") == 100
    assert users_for(100, "paced") == 5
    assert bench_env(150, "poisson") == {"RECSTACK_BENCH_USER_RPS": "1.500000",
                                         "RECSTACK_BENCH_ARRIVALS": "poisson"}
    assert result_key("split", 150, "paced") == "split_150rps_paced"
    assert result_key("split", 150, "poisson") == "split_150rps"
