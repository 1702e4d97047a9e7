"""The lake's plausible day range: planning never spans far-off days, which are quarantined."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipelines import manifest as manifests
from pipelines import partitions
from pipelines.lakecheck import PlausibleRule, plausible_range
from pipelines.run import plan_lake
from recstack import lake
from tests.unit.pipelines.tinylake import at, event, shown_and_clicked, write_lake

PARAMS = {"layout": 2, "window_days": 7}
CORE = [dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(6)]
# The days a property-based fuzzer's events were written to (issue 16).
HOSTILE = [dt.date(170, 10, 25), dt.date(1970, 1, 1), dt.date(2000, 1, 1), dt.date(4248, 3, 9),
           dt.date(4324, 11, 2)]
RULE = PlausibleRule(dense_fraction=0.05, max_gap_days=30, lookback_days=30, ahead_days=7)


def _busy_day(day: dt.date, users: int = 40) -> list[dict]:
    rows: list[dict] = []
    for u in range(users):
        rows += shown_and_clicked(at(day, 9), u, 100 + u % 7, f"{day}-{u}", clicked=u % 3 == 0)
    return rows


def _seeded_lake(lake_dir: Path, days: list[dt.date]) -> None:
    write_lake(lake_dir, [r for d in days for r in _busy_day(d)], batch_key="sim")


def _one_event(lake_dir: Path, day: dt.date, key: str = "sink-1") -> None:
    write_lake(lake_dir, [event(at(day, 3), 1, 100)], batch_key=key)


def test_far_off_partitions_are_quarantined_and_the_plan_covers_only_the_dense_days(tmp_path):
    lake_dir = tmp_path / "lake"
    _seeded_lake(lake_dir, CORE)
    for day in HOSTILE:
        _one_event(lake_dir, day)

    got = plan_lake(lake_dir, manifests.Manifest(), PARAMS, rule=RULE, tag="run-t")

    assert (got.plan.mode, got.plan.first, got.plan.last) == ("full", CORE[0], CORE[-1])
    assert sorted(got.fingerprints) == CORE
    # Moved, not deleted: every hostile partition is under lake/quarantine/<tag>/, counted.
    assert sorted(f.day for f in got.quarantine.findings) == HOSTILE
    assert {f.reason for f in got.quarantine.findings} == {"out_of_range"}
    assert got.quarantine.suspicious_rows == len(HOSTILE)
    for day in HOSTILE:
        assert not lake.partition_dir(lake_dir, day).exists()
        moved = lake_dir / lake.QUARANTINE / "run-t" / lake.EVENTS / f"date={day.isoformat()}"
        assert pq.read_table(moved / "part-sink-1.parquet").num_rows == 1
    assert sorted(partitions.lake_partitions(str(lake_dir))) == CORE


def test_sparse_days_just_after_the_bulk_stay_and_a_lone_one_far_after_it_goes(tmp_path):
    lake_dir = tmp_path / "lake"
    _seeded_lake(lake_dir, CORE)
    late = CORE[0] - dt.timedelta(days=3)  # a late straggler before the bulk: within lookback
    soon = CORE[-1] + dt.timedelta(days=2)  # the sink's events of the next days
    lone = CORE[-1] + dt.timedelta(days=20)  # one event, 20 days after anything dense
    for i, day in enumerate([late, soon, lone]):
        _one_event(lake_dir, day, key=f"sink-{i}")
    dense_later = CORE[-1] + dt.timedelta(days=12)  # a busy day after a gap: the bulk goes on
    write_lake(lake_dir, _busy_day(dense_later), batch_key="sim-2")

    got = plan_lake(lake_dir, manifests.Manifest(), PARAMS, rule=RULE, tag="run-t")

    assert [f.day for f in got.quarantine.findings] == [lone]
    assert (got.plan.first, got.plan.last) == (late, dense_later)


def test_an_imported_lake_of_the_1990s_is_plausible_whatever_the_wall_clock(tmp_path):
    lake_dir = tmp_path / "lake"
    days = [dt.date(1997, 9, 20) + dt.timedelta(days=i) for i in range(5)]
    _seeded_lake(lake_dir, days)
    _one_event(lake_dir, dt.date(2026, 12, 4))  # today's wall clock: far from this lake's data

    got = plan_lake(lake_dir, manifests.Manifest(), PARAMS, rule=RULE, tag="run-t")

    assert (got.plan.first, got.plan.last) == (days[0], days[-1])
    assert [f.day for f in got.quarantine.findings] == [dt.date(2026, 12, 4)]


def test_an_in_range_lake_is_left_alone_and_a_rerun_quarantines_nothing(tmp_path):
    lake_dir = tmp_path / "lake"
    _seeded_lake(lake_dir, CORE)
    got = plan_lake(lake_dir, manifests.Manifest(), PARAMS, rule=RULE, tag="run-t")
    assert got.quarantine.findings == [] and got.quarantine.suspicious_rows == 0
    assert not (lake_dir / lake.QUARANTINE).exists()


def test_a_backfill_outside_the_plausible_range_is_refused(tmp_path):
    lake_dir = tmp_path / "lake"
    _seeded_lake(lake_dir, CORE)
    with pytest.raises(ValueError, match="plausible range 2025-12-02..2026-01-13"):
        plan_lake(lake_dir, manifests.Manifest(), PARAMS, (dt.date(170, 1, 1), CORE[-1]),
                  rule=RULE, tag="run-t")


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        # one dense run: lookback before it, ahead after it
        ({dt.date(2026, 1, 1): 100, dt.date(2026, 1, 3): 90},
         (dt.date(2025, 12, 2), dt.date(2026, 1, 10))),
        # two dense runs 40 days apart: the heavier one is the bulk
        ({dt.date(2026, 1, 1): 100, dt.date(2026, 2, 10): 100, dt.date(2026, 2, 11): 100},
         (dt.date(2026, 1, 11), dt.date(2026, 2, 18))),
        # sparse days do not extend the bulk
        ({dt.date(2026, 1, 1): 100, dt.date(2026, 1, 20): 1},
         (dt.date(2025, 12, 2), dt.date(2026, 1, 8))),
    ],
)
def test_plausible_range_rule(rows, expected) -> None:
    assert plausible_range(rows, RULE) == expected
