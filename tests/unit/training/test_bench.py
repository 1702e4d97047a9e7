"""The training benchmark: one size in-process, and the suite's sizes from the settings."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import training.bench as bench
from recstack.settings import Settings


def test_train_at_size_reports_time_and_peak_memory() -> None:
    out = bench.train_at_size(20_000, dim=4, rounds=5, negatives_per_positive=2)
    assert 19_000 <= out["events"] <= 21_000 and out["ranker_rows"] > 0
    assert out["peak_rss_mib"] > 0
    assert out["train_total_s"] >= out["ranker_fit_s"] >= 0


def test_suite_trains_at_the_configured_sizes_in_child_processes(monkeypatch) -> None:
    commands = []

    def fake_run(cmd, **kwargs):
        commands.append(cmd)
        return SimpleNamespace(stdout=json.dumps({"events": int(cmd[cmd.index("--events") + 1])}))

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.setattr(bench, "inference_side_by_side", lambda rounds: {"ratio": 1.0})
    settings = Settings(train={"bench_events": [10_000_000], "bench_timeout_s": 7})
    figures = bench.run(settings)
    assert [c[c.index("--events") + 1] for c in commands] == ["10000000"]
    assert figures["train_at_10000000_events"] == {"events": 10_000_000}
    assert figures["sizes_timeout_s"] == 7
