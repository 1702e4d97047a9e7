"""`recstack import`: real interaction files into the lake schema, bad rows reported, not dropped."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recstack import lake
from recstack.schemas import EVENT_SCHEMA, ITEM_SCHEMA, Event
from recstack.settings import Settings
from simulator.generate import simulate, world_dir
from simulator.importer import ImportFailed, ImportOptions, import_interactions


def _movielens(path: Path, n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A u.data-style file: user, item, rating, timestamp; tab-separated, no header."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "user": rng.integers(1, 40, n),
        "item": rng.integers(1, 80, n),
        "rating": rng.integers(1, 6, n),
        "ts": rng.integers(874_724_710, 874_724_710 + 20 * 86_400, n),  # 20 days of Sep 1997
    })
    df.to_csv(path, sep="\t", header=False, index=False)
    return df


def test_movielens_round_trip(settings: Settings, tmp_path: Path) -> None:
    simulate(settings)  # a simulated lake and world that the import replaces
    source = tmp_path / "u.data"
    rows = _movielens(source)
    summary = import_interactions(settings, source, ImportOptions(format="movielens"))

    assert (summary.rows_read, summary.rows_imported, summary.rows_bad) == (300, 300, 0)
    assert summary.dead_letter is None
    events = lake.read_events(settings.lake_dir)
    assert events.schema.equals(EVENT_SCHEMA)
    df = events.to_pandas()
    imp, clk = df[df.event_type == "impression"], df[df.event_type == "click"]
    assert len(imp) == 300 and len(clk) == int((rows.rating >= 4).sum()) == summary.clicks
    # Every row is back: user, item and second-precision time.
    got = sorted(zip(imp.user_id, imp.item_id, imp.ts.map(lambda t: int(t.timestamp()))))
    assert got == sorted(zip(rows.user, rows["item"], rows.ts))
    # Each click is its row's impression, same request, same time: the pipelines label it 1.
    joined = clk.merge(imp, on=["request_id", "user_id", "item_id", "ts"])
    assert len(joined) == len(clk)
    assert (imp.position == 0).all() and set(df.model_version) == {"import:u.data"}
    for record in df.head(20).to_dict("records"):
        Event.model_validate({**record, "ts": record["ts"].to_pydatetime()})
    # Partitions follow the data's days; the catalogue lists every item before its first use.
    days = sorted({dt.datetime.fromtimestamp(t, dt.UTC).date() for t in rows.ts})
    assert lake.list_days(settings.lake_dir) == days
    items = lake.read_items(settings.lake_dir).to_pandas().set_index("item_id")
    assert lake.read_items(settings.lake_dir).schema.equals(ITEM_SCHEMA)
    assert set(items.index) == set(rows["item"])
    first_use = imp.groupby("item_id").ts.min()
    assert (items.loc[first_use.index, "created_at"] < first_use).all()
    # The simulated lake and its world are gone (no stale days, no wrong ground truth).
    assert not world_dir(settings).exists()
    assert not any("sim" in p.name for p in lake.partition_files(settings.lake_dir))
    # Idempotent: importing again rewrites the same lake.
    import_interactions(settings, source, ImportOptions(format="movielens"))
    assert lake.read_events(settings.lake_dir).equals(events)


def test_bad_rows_are_reported_with_line_numbers(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "u.data"
    _movielens(source, n=20)
    lines = source.read_text().splitlines()
    bad = {
        3: "x\t5\t4\t881250949",  # non-integer user
        7: "5\t-2\t4\t881250949",  # negative item
        8: "5\t6\t4",  # a column short
        12: "5\t6\tfive\t881250949",  # rating not a number
        15: "5\t6\t4\tyesterday",  # timestamp unreadable
    }
    for line, text in bad.items():
        lines.insert(line - 1, text)
    source.write_text("\n".join(lines) + "\n")
    summary = import_interactions(settings, source, ImportOptions(format="movielens"))
    assert summary.rows_read == 25 and summary.rows_imported == 20 and summary.rows_bad == 5
    assert summary.bad_by_reason == {
        "non_integer_user": 1, "negative_item": 1, "wrong_column_count": 1, "bad_rating": 1,
        "bad_timestamp": 1,
    }
    dead = [json.loads(x) for x in summary.dead_letter.read_text().splitlines()]
    assert {d["line"]: d["row"] for d in dead} == bad
    assert summary.bad_examples[0].startswith("line 3: non_integer_user")


def test_csv_with_mapped_columns_and_iso_times(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "plays.csv"
    source.write_text(
        "who,what,when\n"
        "1,10,2024-03-01T10:00:00Z\n"
        "2,11,2024-03-01 23:59:59\n"
        "3,10,2024-03-02T00:00:00+01:00\n"
    )
    options = ImportOptions(user_col="who", item_col="what", ts_col="when")
    summary = import_interactions(settings, source, options)
    assert summary.impressions == summary.clicks == 3  # no rating: every interaction is a click
    assert lake.list_days(settings.lake_dir) == [dt.date(2024, 3, 1)]  # +01:00 is still Mar 1 UTC
    with pytest.raises(ImportFailed, match="no column 'user_id'"):
        import_interactions(settings, source, ImportOptions())


def test_parquet_input(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "events.parquet"
    pq.write_table(pa.table({
        "u": pa.array([1, 2, None], pa.int64()),
        "i": pa.array([5, 6, 7], pa.int64()),
        "t": pa.array([1_700_000_000_000_000] * 3, pa.timestamp("us")),
        "r": pa.array([5.0, 1.0, 4.0]),
    }), source)
    summary = import_interactions(
        settings, source, ImportOptions(user_col="u", item_col="i", ts_col="t", rating_col="r")
    )
    assert (summary.rows_imported, summary.clicks, summary.rows_bad) == (2, 1, 1)
    assert summary.bad_by_reason == {"missing_user": 1}


def test_an_unusable_file_leaves_the_lake_alone(settings: Settings, tmp_path: Path) -> None:
    simulate(settings)
    before = lake.read_events(settings.lake_dir)
    source = tmp_path / "u.data"
    source.write_text("a\tb\tc\td\n")
    with pytest.raises(ImportFailed, match="no valid row"):
        import_interactions(settings, source, ImportOptions(format="movielens"))
    assert lake.read_events(settings.lake_dir).equals(before)
    with pytest.raises(ImportFailed, match="no such file"):
        import_interactions(settings, tmp_path / "missing.csv")


def test_a_movielens_file_is_recognised_without_the_format_flag(settings: Settings,
                                                               tmp_path: Path) -> None:
    source = tmp_path / "u.data"
    rows = _movielens(source, n=50)
    summary = import_interactions(settings, source, ImportOptions())
    assert (summary.rows_read, summary.rows_imported, summary.rows_bad) == (50, 50, 0)
    assert summary.clicks == int((rows.rating >= 4).sum())


def test_the_movielens_preset_keeps_the_options_the_user_gave(settings: Settings,
                                                             tmp_path: Path) -> None:
    source = tmp_path / "u.data"
    rows = _movielens(source, n=80)
    summary = import_interactions(settings, source,
                                  ImportOptions(format="movielens", click_threshold=5.0))
    assert summary.clicks == int((rows.rating >= 5).sum()) < int((rows.rating >= 4).sum())


def test_a_header_error_on_a_movielens_like_file_names_the_format(settings: Settings,
                                                                 tmp_path: Path) -> None:
    source = tmp_path / "ratings.csv"
    _movielens(source, n=10)  # tab-separated integers, but a .csv name and format=csv
    with pytest.raises(ImportFailed, match="--format movielens"):
        import_interactions(settings, source, ImportOptions(format="csv"))
