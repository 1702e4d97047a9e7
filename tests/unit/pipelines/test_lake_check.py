"""``recstack lake check [--quarantine]`` on a seeded lake (the real command, in a subprocess)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import lakecheck
from recstack import lake
from tests.unit.pipelines.tinylake import at, event, shown_and_clicked, write_lake

CORE = [dt.date(2026, 1, 1) + dt.timedelta(days=i) for i in range(4)]
FAR = dt.date(4324, 11, 2)


def _seed(lake_dir: Path) -> None:
    rows = [r for d in CORE for u in range(30)
            for r in shown_and_clicked(at(d, 9), u, 100 + u, f"{d}-{u}", clicked=u % 2 == 0)]
    write_lake(lake_dir, rows, batch_key="sim")
    write_lake(lake_dir, [event(at(FAR), 1, 100)], batch_key="sink-1")
    (lake.partition_dir(lake_dir, CORE[1]) / "part-garbage.parquet").write_bytes(b"not parquet")
    pq.write_table(pa.table({"event_id": ["x"], "ts": ["yesterday"], "user_id": [1],
                             "item_id": [2], "event_type": ["click"]}),
                   lake.partition_dir(lake_dir, CORE[2]) / "part-foreign.parquet")
    lake.partition_dir(lake_dir, dt.date(2026, 1, 3)).mkdir(exist_ok=True)  # exists: no-op
    (lake_dir / lake.EVENTS / "date=2026-01-09").mkdir()  # an empty partition
    (lake_dir / lake.EVENTS / "date=someday").mkdir()  # not a date


def _check(home: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RECSTACK_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "app.cli", "lake", "check", *flags],
                          capture_output=True, text=True, env=env, timeout=120, check=False)


def test_lake_check_lists_then_quarantines_suspicious_partitions(tmp_path: Path) -> None:
    home = tmp_path / "home"
    lake_dir = home / "lake"
    _seed(lake_dir)

    listed = _check(home, "--json")
    assert listed.returncode == 1, listed.stderr
    report = json.loads(listed.stdout)
    found = {(f["partition"], f["reason"]) for f in report["findings"]}
    assert found == {
        (f"date={FAR}", lakecheck.OUT_OF_RANGE),
        (f"date={CORE[1]}", lakecheck.UNREADABLE),
        (f"date={CORE[2]}", lakecheck.SCHEMA_MISMATCH),
        ("date=2026-01-09", lakecheck.EMPTY),
        ("date=someday", lakecheck.BAD_NAME),
    }
    assert report["plausible"] == ["2025-12-02", "2026-01-11"]
    assert report["by_reason"] == {"bad_name": 1, "empty": 1, "out_of_range": 1,
                                   "schema_mismatch": 1, "unreadable": 1}
    assert report["quarantined_to"] is None and (lake_dir / lake.EVENTS / f"date={FAR}").exists()

    moved = _check(home, "--quarantine")
    assert moved.returncode == 1 and "moved 5" in moved.stderr, moved.stderr
    assert "out_of_range" in moved.stdout and "unreadable" in moved.stdout

    quarantine = next((lake_dir / lake.QUARANTINE).iterdir())
    assert quarantine.name.startswith("check=")
    record = json.loads((quarantine / lake.QUARANTINE_RECORD).read_text())
    assert len(record) == 5
    assert (quarantine / lake.EVENTS / f"date={FAR}" / "part-sink-1.parquet").exists()
    assert (quarantine / lake.EVENTS / f"date={CORE[1]}" / "part-garbage.parquet").exists()
    # Only the bad file left its day: the day's good events stay in the lake.
    assert (lake.partition_dir(lake_dir, CORE[1]) / "part-sim.parquet").exists()
    assert lake.read_events(lake_dir).num_rows == 4 * 45

    clean = _check(home)
    assert clean.returncode == 0, clean.stderr
    assert "no suspicious partitions" in clean.stderr
