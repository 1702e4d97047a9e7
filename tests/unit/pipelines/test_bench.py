"""The feature-layer benchmark's arithmetic, plot and progress (no lake, no Redis)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from pipelines import bench


def test_scale_tags() -> None:
    assert [bench.scale_tag(n) for n in (1_000_000, 10_000_000, 250_000, 1_500_000)] == [
        "1M", "10M", "250k", "1500k"]


def _figures() -> dict:
    return {
        "1M_pipeline_in_memory": {"events": 1_000_000, "cpu_s": 100.0, "wall_s": 130.0,
                                  "events_per_s": 7692.3, "events_per_cpu_s": 9000.0},
        "10M_pipeline_in_memory": {"events": 10_000_000, "cpu_s": 1100.0, "wall_s": 1300.0,
                                   "events_per_s": 7692.3, "events_per_cpu_s": 9000.0},
        "1M_pipeline_multi_processing": {"events": 1_000_000, "cpu_s": 150.0, "wall_s": 100.0,
                                         "events_per_s": 10000.0, "events_per_cpu_s": 6600.0},
        "10M_pipeline_multi_processing": {"error": "MemoryError: stopped"},
        "1M_online": {"materialize_s": 5.0, "rows_materialized": 40_000,
                      "materialize_rows_per_s": 8000.0},
        "10M_online": {"materialize_s": 60.0, "rows_materialized": 400_000,
                       "materialize_rows_per_s": 6666.7},
    }


def test_growth_is_per_event_and_skips_failed_steps() -> None:
    got = bench.growth(_figures(), 1_000_000, 10_000_000, ["in_memory", "multi_processing"])
    assert got["in_memory_cpu_per_event_growth_ratio"] == pytest.approx(1.1)
    assert got["in_memory_wall_per_event_growth_ratio"] == pytest.approx(1.0)
    assert got["in_memory_events_growth_ratio"] == 10.0
    assert got["materialize_s_per_row_growth_ratio"] == pytest.approx(1.2)
    assert not any(k.startswith("multi_processing") for k in got)


def test_plot_writes_a_png(tmp_path) -> None:
    path = bench.plot(_figures(), [1_000_000, 10_000_000], ["in_memory", "multi_processing"],
                      tmp_path / "pipelines.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_heartbeat_reports_each_step_with_its_peak_memory() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200)
    with bench.Heartbeat(console, every_s=0.5) as beat:
        with beat.measure("[1k] a step") as m:
            blob = bytearray(64 << 20)  # 64 MiB held while the sampler looks
            import time

            time.sleep(2.2)
            del blob
    text = out.getvalue()
    assert "[1k] a step ..." in text and "[1k] a step done in" in text
    assert "RSS" in text  # at least one heartbeat line while the step ran
    assert m["peak_rss_mib"] >= 64


def test_values_compare_across_float32_and_missing() -> None:
    import numpy as np

    # float32 rounding is the same value; NaN is a missing one.
    assert bench._same(np.array([1, 0.1, np.nan], dtype=np.float32), [1, 0.1, None])
    assert not bench._same(np.array([1, 0.1, np.nan], dtype=np.float32), [1, 0.2, None])
    assert not bench._same(np.array([1, 0.1, 0.0], dtype=np.float32), [1, 0.1, None])
    assert bench._same([3, 0.25], [3, 0.25]) and not bench._same([3], [4])
