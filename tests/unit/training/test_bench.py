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
    # The dataset build is part of training: the ranker fits on as many rows as it built.
    assert out["train_total_s"] >= out["dataset_build_s"] > 0


def test_bench_training_inputs_build_a_point_in_time_dataset(tmp_path) -> None:
    events = bench.synthetic_events(20_000, seed=1)
    settings, views = bench.write_training_inputs(events, tmp_path)
    data = bench.build_ranker_dataset(settings, bench.AsOfStore(views))
    assert data.attrs["stored_features"] == [
        n for names in bench.FEATURE_VIEW_FEATURES.values() for n in names]
    n_clicks = int((events["event_type"] == "click").sum())
    assert int(data["label"].sum()) == n_clicks  # every positive kept
    first_day = data["event_timestamp"] < data["event_timestamp"].min().normalize() + \
        bench.pd.Timedelta(days=1)
    # Nothing is known before the first snapshot; later rows mostly find one.
    assert data.loc[first_day, "user_clicks_7d"].isna().all()
    assert data.loc[~first_day, "user_clicks_7d"].notna().mean() > 0.5


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
