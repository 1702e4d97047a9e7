"""simulate(): what lands in the lake, and that it is reproducible."""

from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc
import pytest

from recstack import lake
from recstack.schemas import EVENT_SCHEMA, ITEM_SCHEMA
from recstack.settings import Settings
from simulator.generate import simulate
from simulator.world import World


def _with(settings: Settings, home, **sim) -> Settings:
    return settings.model_copy(update={"home": home, "sim": settings.sim.model_copy(update=sim)})


def test_same_seed_identical_lake_different_seed_differs(settings: Settings, tmp_path) -> None:
    simulate(settings)
    twin = _with(settings, tmp_path / "twin")
    simulate(twin)
    other = _with(settings, tmp_path / "other", seed=settings.sim.seed + 1)
    simulate(other)
    events = lake.read_events(settings.lake_dir)
    assert events.equals(lake.read_events(twin.lake_dir))
    assert lake.read_items(settings.lake_dir).equals(lake.read_items(twin.lake_dir))
    assert not events.equals(lake.read_events(other.lake_dir))


def test_rerun_is_an_idempotent_overwrite(settings: Settings) -> None:
    first = simulate(settings)
    before = {p: p.read_bytes() for p in first.files}
    second = simulate(settings)
    assert second.files == first.files
    assert {p: p.read_bytes() for p in second.files} == before
    assert lake.read_events(settings.lake_dir).num_rows == first.n_impressions + first.n_clicks


def test_schema_ids_and_summary(settings: Settings) -> None:
    summary = simulate(settings)
    events = lake.read_events(settings.lake_dir)
    assert events.schema.equals(EVENT_SCHEMA)
    assert lake.read_items(settings.lake_dir).schema.equals(ITEM_SCHEMA)
    assert pc.count_distinct(events["event_id"]).as_py() == events.num_rows
    assert set(events["model_version"].to_pylist()) == {"logging-policy"}
    assert set(events["event_type"].to_pylist()) == {"impression", "click"}
    days = [settings.sim.start_date + dt.timedelta(days=i) for i in range(settings.sim.days)]
    assert lake.list_days(settings.lake_dir) == days
    assert (summary.first_day, summary.last_day, summary.n_days) == (days[0], days[-1], len(days))
    assert summary.n_users == settings.sim.n_users
    assert summary.n_impressions + summary.n_clicks == events.num_rows
    assert World.load(summary.world_dir).seed == settings.sim.seed


def test_every_click_follows_its_impression(settings: Settings) -> None:
    simulate(settings)
    df = lake.read_events(settings.lake_dir).to_pandas()
    imp, clk = df[df.event_type == "impression"], df[df.event_type == "click"]
    assert len(clk) > 0
    keys = ["request_id", "item_id", "position", "user_id"]
    joined = clk.merge(imp, on=keys, suffixes=("_c", "_i"))
    assert len(joined) == len(clk)  # each click matches exactly one impression
    delay = (joined.ts_c - joined.ts_i).dt.total_seconds()
    assert (delay > 0).all() and (delay <= 120).all()
    assert (joined.ts_c.dt.date == joined.ts_i.dt.date).all()  # same day partition
    # Every request shows a full list of distinct items at positions 0..k-1.
    per_request = imp.groupby("request_id").agg(n=("item_id", "nunique"), top=("position", "max"))
    assert (per_request.n == settings.sim.list_size).all()
    assert (per_request.top == settings.sim.list_size - 1).all()


def test_ctr_band_and_position_bias(settings: Settings) -> None:
    summary = simulate(settings)
    assert 0.02 < summary.ctr < 0.10
    df = lake.read_events(settings.lake_dir).to_pandas()
    counts = df.groupby(["position", "event_type"]).size().unstack()
    ctr_by_position = counts["click"] / counts["impression"]
    assert ctr_by_position.iloc[0] > 2 * ctr_by_position.iloc[-1]


def test_items_are_shown_only_after_release(settings: Settings) -> None:
    simulate(settings)
    events = lake.read_events(settings.lake_dir).to_pandas()
    items = lake.read_items(settings.lake_dir).to_pandas().set_index("item_id")
    released = items.loc[events.item_id, "created_at"].to_numpy()
    assert (released < events.ts.to_numpy()).all()


def test_days_override_and_progress_callback(settings: Settings) -> None:
    seen: list[tuple[int, int]] = []
    summary = simulate(settings, days=2, on_day=lambda day, n: seen.append((day, n)))
    assert [day for day, _ in seen] == [0, 1]
    assert sum(n for _, n in seen) == summary.n_impressions + summary.n_clicks
    assert len(lake.list_days(settings.lake_dir)) == 2
    # A day's traffic does not depend on how many days are simulated.
    first_two = lake.read_events(settings.lake_dir)
    simulate(settings)
    first_two_again = lake.read_events(settings.lake_dir, lake.list_days(settings.lake_dir)[:2])
    assert first_two_again.equals(first_two)
    with pytest.raises(ValueError, match="days"):
        simulate(settings, days=0)
