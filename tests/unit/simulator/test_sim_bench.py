"""The simulator bench: sizes its world to the target and measures a real run."""

from __future__ import annotations

from pathlib import Path

from simulator.bench import DAYS, LIST_SIZE, measure, world_size


def test_world_size_targets_the_event_count() -> None:
    sim = world_size(10_000_000)
    expected = sim["n_users"] * DAYS * LIST_SIZE * 1.05
    assert abs(expected - 10_000_000) / 10_000_000 < 0.01
    assert world_size(10)["n_users"] >= 100


def test_measure_reports_throughput_memory_and_disk(tmp_path: Path) -> None:
    # In-process here (the suite runs each size in its own subprocess for its own peak RSS).
    figures = measure(20_000, tmp_path / "home")
    assert 15_000 < figures["events"] < 25_000
    assert figures["events_per_s"] > 0 and figures["seconds"] > 0
    assert figures["peak_rss_mib"] >= figures["rss_before_run_mib"] > 0
    assert figures["lake_bytes_per_event"] > 0
    assert (tmp_path / "home" / "lake" / "items.parquet").exists()
