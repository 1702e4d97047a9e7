"""``pipelines.features.run`` end to end on a tiny lake (DirectRunner, no network)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import features
from pipelines.tables import TABLES
from recstack import lake
from recstack.clock import day_start
from recstack.schemas import (
    DEAD_LETTER_DIR,
    EVENT_SCHEMA,
    ITEM_FEATURES_FILE,
    LABELS_FILE,
    POPULAR_FILE,
    USER_FEATURES_FILE,
)
from tests.unit.pipelines.tinylake import DAY1, at, event, shown_and_clicked, write_lake

DAY2, DAY3 = DAY1 + dt.timedelta(days=1), DAY1 + dt.timedelta(days=2)


@pytest.fixture
def tiny_lake(tmp_path: Path) -> Path:
    lake_dir = tmp_path / "lake"
    rows = (
        shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True)
        + shown_and_clicked(at(DAY1, 9), 1, 101, "r1", position=1)
        + shown_and_clicked(at(DAY2, 10), 1, 100, "r2", clicked=True)
        + shown_and_clicked(at(DAY2, 11), 2, 100, "r3")
        + shown_and_clicked(at(DAY3, 8), 2, 101, "r4", clicked=True)
        + [event(at(DAY3, 9), -7, 100)]  # bad: negative user id
        + [event(at(DAY3, 9), 3, 100, event_type="purchase")]  # bad: unknown type
    )
    write_lake(lake_dir, rows)
    duplicate = rows[0]  # the same event again in another batch: counted once
    write_lake(lake_dir, [duplicate], batch_key="retry")
    # A file whose ts column has a null (write_events refuses it, an importer might not).
    bad = pa.table({"event_id": ["n1"], "ts": pa.array([None], pa.timestamp("us", tz="UTC")),
                    "user_id": [1], "item_id": [100], "event_type": ["click"]})
    pq.write_table(bad, lake.partition_dir(lake_dir, DAY2) / "part-nullts.parquet")
    return lake_dir


def _run(lake_dir: Path, out: Path, *extra: str) -> dict[str, int]:
    result = features.run(["--lake", str(lake_dir), "--out", str(out), *extra])
    return features.counters(result)


def _rows(path: Path) -> list[dict]:
    return pq.read_table(path).to_pylist()


def test_run_writes_one_file_per_table_with_the_documented_columns(tiny_lake, tmp_path) -> None:
    out = tmp_path / "features"
    counters = _run(tiny_lake, out, "--window-days", "2")

    assert counters["rows_read"] == 12 and counters["rows_bad"] == 3
    assert counters["bad_negative_user_id"] == 1 and counters["bad_unknown_event_type"] == 1
    assert counters["bad_null_ts"] == 1
    assert counters["rows_valid"] == 9 and counters["events_unique"] == 8
    for name, schema in TABLES.items():
        files = [out / name] if name == POPULAR_FILE else sorted((out / name).glob("part-*.parquet"))
        assert files, name
        for path in files:
            assert pq.read_schema(path).equals(schema), path
    assert sorted(p.name for p in out.iterdir()) == sorted([*TABLES, DEAD_LETTER_DIR])

    users = {(r["user_id"], r["event_timestamp"]): r for r in _rows(out / USER_FEATURES_FILE)}
    t1, t2, t3 = (day_start(d + dt.timedelta(days=1)) for d in (DAY1, DAY2, DAY3))
    assert set(users) == {(1, t1), (1, t2), (1, t3), (2, t2), (2, t3)}
    assert (users[1, t1]["user_impressions_7d"], users[1, t1]["user_clicks_7d"]) == (2, 1)
    assert users[1, t2]["user_impressions_7d"] == 3 and users[1, t2]["user_active_days_7d"] == 2
    # Window of 2 days: at T3 only day 2 counts for user 1; day 1 left the window.
    assert (users[1, t3]["user_impressions_7d"], users[1, t3]["user_clicks_7d"]) == (1, 1)
    assert users[1, t3]["user_ctr_7d"] == pytest.approx((1 + 0.05 * 20) / (1 + 20))
    assert users[2, t3]["user_active_days_7d"] == 2

    items = {(r["item_id"], r["event_timestamp"]): r for r in _rows(out / ITEM_FEATURES_FILE)}
    assert items[100, t2]["item_clicks_1d"] == 1 and items[100, t2]["item_clicks_7d"] == 2
    assert items[100, t3]["item_impressions_7d"] == 2 and items[100, t3]["item_clicks_1d"] == 0
    assert items[101, t3]["item_clicks_1d"] == 1

    assert _rows(out / POPULAR_FILE) == [{"item_id": 101, "clicks": 1, "rank": 1}]
    labels = {(r["user_id"], r["request_id"], r["item_id"]): r["label"]
              for r in _rows(out / LABELS_FILE)}
    assert labels == {(1, "r1", 100): 1, (1, "r1", 101): 0, (1, "r2", 100): 1, (2, "r3", 100): 0,
                      (2, "r4", 101): 1}

    assert counters["rows_dead_letter"] == 3 and counters["dead_letter_validate"] == 3
    (run_dir,) = (out / DEAD_LETTER_DIR / features.DEAD_LETTER_STAGE).iterdir()
    assert run_dir.name.startswith("run=")
    dead = pq.read_table(run_dir).to_pylist()
    assert sorted(d["reason"] for d in dead) == ["negative_user_id", "null_ts",
                                                 "unknown_event_type"]
    assert {d["step"] for d in dead} == {"validate"}
    assert {d["run_id"] for d in dead} == {run_dir.name.removeprefix("run=")}
    bad_user = next(d for d in dead if d["reason"] == "negative_user_id")
    assert json.loads(bad_user["row"])["user_id"] == -7  # the original row
    assert bad_user["source_file"].endswith("part-test.parquet")
    assert f"date={DAY3.isoformat()}" in bad_user["source_file"]


def test_days_limits_snapshots_and_labels_but_windows_still_see_older_days(tiny_lake, tmp_path):
    out = tmp_path / "features"
    _run(tiny_lake, out, "--days", "1", "--window-days", "7")
    users = _rows(out / USER_FEATURES_FILE)
    t3 = day_start(DAY3 + dt.timedelta(days=1))
    assert {r["event_timestamp"] for r in users} == {t3}
    user1 = next(r for r in users if r["user_id"] == 1)
    assert user1["user_impressions_7d"] == 3  # days 1 and 2 are read for the window
    assert {r["request_id"] for r in _rows(out / LABELS_FILE)} == {"r4"}


def test_rerun_overwrites_the_tables_but_keeps_each_runs_dead_letters(tiny_lake, tmp_path):
    out = tmp_path / "features"
    _run(tiny_lake, out, "--run-id", "first")
    _run(tiny_lake, out, "--run-id", "second")
    assert pq.read_table(out / LABELS_FILE).num_rows == 5
    assert sorted(p.name for p in (out / USER_FEATURES_FILE).iterdir()) == [
        f"part-{d.isoformat()}.parquet" for d in (DAY1, DAY2, DAY3)]
    runs = out / DEAD_LETTER_DIR / features.DEAD_LETTER_STAGE
    assert sorted(p.name for p in runs.iterdir()) == ["run=first", "run=second"]
    for run_dir in runs.iterdir():
        assert pq.read_table(run_dir).num_rows == 3
    with pytest.raises(features.LakeError, match="already has files"):
        _run(tiny_lake, out, "--run-id", "first")
    assert pq.read_table(runs / "run=first").num_rows == 3


def test_rows_stored_in_another_days_partition_are_dead_lettered_as_late(tmp_path) -> None:
    lake_dir = tmp_path / "lake"
    write_lake(lake_dir, shown_and_clicked(at(DAY1, 9), 1, 100, "r1", clicked=True)
               + shown_and_clicked(at(DAY2, 9), 2, 100, "r2"))
    # A foreign writer put an event of day 1 and one of day 3 into day 2's partition; and an
    # older file has no `arm` column (lakes written before online experiments): still valid.
    misfiled = [event(at(DAY1, 23), 3, 101, event_id="late1"),
                event(at(DAY3, 1), 3, 101, event_id="ahead1"),
                event(at(DAY2, 12), 4, 101, event_id="ok-no-arm")]
    old_schema = pa.schema([f for f in EVENT_SCHEMA if f.name != "arm"])
    pq.write_table(pa.Table.from_pylist(misfiled, schema=old_schema),
                   lake.partition_dir(lake_dir, DAY2) / "part-foreign.parquet")
    out = tmp_path / "features"
    counters = _run(lake_dir, out, "--run-id", "r1")

    assert counters["rows_read"] == 6 and counters["rows_valid"] == 4
    assert counters["bad_late"] == 1 and counters["bad_ahead_of_partition"] == 1
    assert counters["rows_dead_letter"] == 2 and counters["dead_letter_lateness"] == 2
    dead = pq.read_table(out / DEAD_LETTER_DIR / "features" / "run=r1").to_pylist()
    assert sorted((d["event_id"], d["step"], d["reason"]) for d in dead) == [
        ("ahead1", "lateness", "ahead_of_partition"), ("late1", "lateness", "late")]
    assert all(d["source_file"].endswith("part-foreign.parquet") for d in dead)
    assert json.loads(next(d["row"] for d in dead if d["event_id"] == "late1"))["ts"] == (
        at(DAY1, 23).isoformat())
    users = {r["user_id"] for r in _rows(out / USER_FEATURES_FILE)}
    assert users == {1, 2, 4}  # user 3's only events were dead-lettered


def test_a_day_range_writes_only_its_partitions_and_labels_look_back(tiny_lake, tmp_path):
    out = tmp_path / "features"
    _run(tiny_lake, out, "--first-day", DAY2.isoformat(), "--last-day", DAY2.isoformat(),
         "--label-lookback-days", "1")
    assert [p.name for p in (out / USER_FEATURES_FILE).iterdir()] == [f"part-{DAY2}.parquet"]
    assert sorted(p.name for p in (out / LABELS_FILE).iterdir()) == [
        f"part-{DAY1}.parquet", f"part-{DAY2}.parquet"]
    # Snapshots and the popular list stop at day 2 (its only click was on item 100).
    assert _rows(out / POPULAR_FILE) == [{"item_id": 100, "clicks": 1, "rank": 1}]


def test_an_empty_or_corrupt_lake_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(features.LakeError, match="no event partitions"):
        _run(tmp_path / "nowhere", tmp_path / "out")
    part = lake.partition_dir(tmp_path / "lake", DAY1)
    part.mkdir(parents=True)
    (part / "part-x.parquet").write_text("not parquet")
    assert features.main(["--lake", str(tmp_path / "lake"), "--out", str(tmp_path / "o")]) == 2
    with pytest.raises(features.LakeError, match="part-x.parquet is not a readable Parquet"):
        _run(tmp_path / "lake", tmp_path / "out")


def test_bad_flags_exit_with_usage() -> None:
    with pytest.raises(SystemExit):
        features.parse_args(["--lake", "l", "--out", "o", "--window-days", "0"])


def test_module_help_works() -> None:
    done = subprocess.run([sys.executable, "-m", "pipelines.features", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--window-days" in done.stdout and "--lake" in done.stdout


def test_the_item_catalogue_adds_the_v2_tables_and_leaves_the_v1_tables_unchanged(
    tiny_lake, tmp_path
) -> None:
    from pipelines.tables import FRESH_FILE, V2_TABLES

    _run(tiny_lake, tmp_path / "v1")
    items = pa.table({"item_id": [100, 101], "category": pa.array([1, 2], pa.int32()),
                      "created_at": pa.array([day_start(DAY1)] * 2, pa.timestamp("us", tz="UTC"))})
    lake.write_items(items, tiny_lake)
    counters = _run(tiny_lake, tmp_path / "v2")
    assert counters["rows_user_features_v2"] > 0 and counters["rows_fresh"] == 2
    for name in TABLES:
        assert _rows(tmp_path / "v1" / name) == _rows(tmp_path / "v2" / name), name
    assert not any((tmp_path / "v1" / name).exists() for name in V2_TABLES)
    for name, schema in V2_TABLES.items():
        assert pq.read_table(tmp_path / "v2" / name).schema.remove_metadata().equals(schema), name
    t3 = day_start(DAY3 + dt.timedelta(days=1))
    user1 = [r for r in _rows(tmp_path / "v2" / "user_category_features.parquet")
             if r["user_id"] == 1 and r["event_timestamp"] == t3]
    # Category 2 was only shown to user 1 (item 101, never clicked by them): no row.
    assert [(r["category"], r["user_category_clicks_28d"]) for r in user1] == [(1, 2)]
    # Both are 2 days old with clicks; item 100 has the better smoothed CTR (3/23 vs 2/22).
    assert [r["item_id"] for r in _rows(tmp_path / "v2" / FRESH_FILE)] == [100, 101]


@pytest.mark.slow
def test_in_memory_and_multi_processing_direct_runners_write_the_same_tables(tiny_lake, tmp_path):
    """Both DirectRunner modes; multi_processing pickles every DoFn into worker processes."""
    from pipelines.tables import V2_TABLES

    items = pa.table({"item_id": [100, 101], "category": pa.array([1, 2], pa.int32()),
                      "created_at": pa.array([day_start(DAY1)] * 2, pa.timestamp("us", tz="UTC"))})
    lake.write_items(items, tiny_lake)
    _run(tiny_lake, tmp_path / "mem", "--direct_running_mode=in_memory")
    counters = _run(tiny_lake, tmp_path / "mp", "--direct_num_workers=2",
                    "--direct_running_mode=multi_processing")
    assert counters["rows_read"] == 12 and counters["rows_user_features"] > 0
    for name in [*TABLES, *V2_TABLES]:
        assert _rows(tmp_path / "mem" / name) == _rows(tmp_path / "mp" / name), name
    dead = [sorted(r["event_id"] or "" for r in pq.read_table(
        tmp_path / mode / DEAD_LETTER_DIR / "features").to_pylist()) for mode in ("mem", "mp")]
    assert dead[0] == dead[1] and len(dead[0]) == 3
