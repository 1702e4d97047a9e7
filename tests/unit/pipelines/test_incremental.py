"""Planning an incremental run, the manifest, day partitions and the swing check (no network)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import manifest as manifests
from pipelines import partitions
from pipelines.materialize import FeatureTableError, check_swing
from pipelines.run import RunPlan, plan_run

D1 = dt.date(2026, 1, 1)
D2, D3 = D1 + dt.timedelta(days=1), D1 + dt.timedelta(days=2)
PARAMS = {"layout": 2, "window_days": 7}


def test_plan_full_then_up_to_date_then_only_from_the_first_changed_day() -> None:
    lake = {D1: "a", D2: "b", D3: "c"}
    empty = manifests.Manifest()
    assert plan_run(lake, empty, PARAMS) == RunPlan("full", D1, D3, [D1, D2, D3])
    done = manifests.Manifest(params=PARAMS, processed={d.isoformat(): fp for d, fp in lake.items()})
    assert plan_run(lake, done, PARAMS).mode == "up_to_date"
    new_day = {**lake, D3 + dt.timedelta(days=1): "d"}
    assert plan_run(new_day, done, PARAMS) == RunPlan(
        "incremental", D3 + dt.timedelta(days=1), D3 + dt.timedelta(days=1),
        [D3 + dt.timedelta(days=1)])
    late = {**lake, D2: "b2"}  # day 2 got late events: days 2..3 are recomputed
    assert plan_run(late, done, PARAMS) == RunPlan("incremental", D2, D3, [D2])
    # Other parameters (a new window) rebuild every day.
    assert plan_run(lake, done, {**PARAMS, "window_days": 3}).mode == "full"
    assert plan_run(lake, done, PARAMS, backfill=(D1, D2)) == RunPlan("backfill", D1, D2, [D1, D2])
    with pytest.raises(ValueError, match="after its end"):
        plan_run(lake, done, PARAMS, backfill=(D3, D1))


def test_manifest_round_trips_and_keeps_a_short_history(tmp_path: Path) -> None:
    assert manifests.load(str(tmp_path)) == manifests.Manifest()
    state = manifests.Manifest(params=PARAMS, processed={"2026-01-01": "x"})
    for i in range(30):
        state.record_run(run=i)
    manifests.save(str(tmp_path / "f"), state)
    loaded = manifests.load(str(tmp_path / "f"))
    assert loaded == state and len(loaded.runs) == manifests.HISTORY
    assert [p.name for p in (tmp_path / "f").iterdir()] == [manifests.MANIFEST_FILE]


def _part(directory: Path, day: dt.date, value: int) -> None:
    partitions.write_table_atomic(pa.table({"v": [value]}), partitions.partition_path(
        str(directory), day))


def test_replace_partitions_swaps_the_range_only_and_drops_days_that_became_empty(tmp_path):
    table, staged = tmp_path / "t", tmp_path / "s"
    for day in (D1, D2, D3):
        _part(table, day, 1)
    _part(staged, D2, 2)  # D3 was recomputed and is now empty
    assert partitions.replace_partitions(str(staged), str(table), D2, D3) == 1
    assert {d: pq.read_table(p)["v"][0].as_py()
            for d, p in partitions.list_partitions(str(table)).items()} == {D1: 1, D2: 2}
    assert sorted(p.name for p in table.iterdir()) == [f"part-{D1}.parquet", f"part-{D2}.parquet"]


def test_lake_fingerprints_change_with_new_files_not_with_a_rewritten_batch(tmp_path) -> None:
    day_dir = tmp_path / "events" / f"date={D1}"
    day_dir.mkdir(parents=True)
    pq.write_table(pa.table({"x": [1]}), day_dir / "part-a.parquet")
    first = partitions.fingerprint(partitions.lake_partitions(str(tmp_path))[D1])
    pq.write_table(pa.table({"x": [1]}), day_dir / "part-a.parquet")  # the same batch again
    assert partitions.fingerprint(partitions.lake_partitions(str(tmp_path))[D1]) == first
    pq.write_table(pa.table({"x": [2]}), day_dir / "part-b.parquet")
    assert partitions.fingerprint(partitions.lake_partitions(str(tmp_path))[D1]) != first


def test_swing_check_names_every_table_beyond_the_threshold() -> None:
    reference = {"user_features.parquet": 100, "labels.parquet": 1000}
    assert check_swing({"user_features.parquet": 140, "labels.parquet": 900}, reference, 0.5) == {
        "user_features.parquet": 0.4, "labels.parquet": -0.1}
    assert check_swing({"user_features.parquet": 1}, {}, 0.5) == {}  # first run: no reference
    with pytest.raises(FeatureTableError, match=r"user_features.parquet: 100 -> 10 rows \(-90%\)"):
        check_swing({"user_features.parquet": 10, "labels.parquet": 1000}, reference, 0.5)
    assert check_swing({"user_features.parquet": 10}, reference, None) == {
        "user_features.parquet": -0.9}
