"""Simulated traffic: sessions -> logging-policy lists -> impressions and clicks -> the lake.

A day is built as numpy columns in blocks of sessions (no Python loop per event) and streamed
into its Parquet partition one row group per block, so memory stays bounded whatever the
number of users: the same code writes ten million events. Each day draws from its own random
stream (seed, day), and event ids are formatted from (seed, date, request number, position,
type), so a run is reproducible.

**A run replaces the lake.** ``simulate`` deletes every event partition and the catalogue
before writing, so the lake holds exactly this run's days (no stale files from another seed, a
longer run or collected feedback of another world, whose ids would not index this world).
Re-running the same settings rewrites byte-identical files (idempotent).

Fatigue: each user remembers the items shown to them in previous blocks (a bounded ring, see
:mod:`simulator.fatigue`); an item already seen recently is less likely clicked.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from recstack import lake
from recstack.clock import day_start
from recstack.schemas import EVENT_SCHEMA, ITEM_SCHEMA, USER_SCHEMA, EventType
from recstack.settings import Settings
from simulator.fatigue import RecentImpressions
from simulator.policy import LoggingPolicy
from simulator.streams import STREAM_DAYS
from simulator.world import COUNTRIES, DEVICES, World, epoch_us

if TYPE_CHECKING:
    from simulator.scenarios import Scenario

logger = logging.getLogger(__name__)

WORLD_DIR = "world"  # under Settings.root: the ground truth, for load tests and evaluation
_US = 1_000_000
_MINUTES = 1440
_LAST_SESSION_MINUTE = _MINUTES - 10  # clicks (<= 2 min later) stay inside the session's day
_MAX_CLICK_DELAY_US = 120 * _US
SESSION_BLOCK = 20_000  # sessions per block: bounds the [sessions, 3k] draws and a row group


@dataclass
class SimulationSummary:
    """What a simulation wrote."""

    n_users: int
    n_items: int  # items in the catalogue written (released before the last day ends)
    n_days: int
    n_impressions: int
    n_clicks: int
    ctr: float
    first_day: dt.date
    last_day: dt.date
    files: list[Path] = field(default_factory=list)  # event partitions, then the catalogue
    world_dir: Path | None = None
    scenario: str | None = None
    removed_files: int = 0  # stale lake files deleted before writing
    seconds: float = 0.0


def world_dir(settings: Settings) -> Path:
    """Where :func:`simulate` saves the ground-truth world (``World.load`` reads it)."""
    return settings.root / WORLD_DIR


def clear_lake(lake_dir: Path) -> int:
    """Delete the lake's event partitions, catalogue and user profile; returns how many files
    were removed."""
    lake_dir = Path(lake_dir)
    events = lake_dir / lake.EVENTS
    removed = sum(1 for p in events.rglob("*") if p.is_file()) if events.exists() else 0
    if events.exists():
        shutil.rmtree(events)
    for name in (lake.ITEMS_FILE, lake.USERS_FILE):
        if (lake_dir / name).exists():
            (lake_dir / name).unlink()
            removed += 1
    return removed


def simulate(
    settings: Settings,
    days: int | None = None,
    on_day: Callable[[int, int], None] | None = None,
    scenario: Scenario | None = None,
    session_block: int = SESSION_BLOCK,
) -> SimulationSummary:
    """Generate the world of ``settings.sim`` and write ``days`` days of traffic to the lake.

    In: ``settings.sim`` (seed, sizes, start date, sessions per user, list size); ``days``
    defaults to ``settings.sim.days``; ``scenario`` (optional) drifts the world from its days
    on. Out: the lake is replaced (see the module docstring): ``settings.lake_dir`` gets one
    ``events/date=.../part-sim-<seed>.parquet`` per day and ``items.parquet``;
    ``settings.root/world`` gets the ground truth as of the end of the run (drifts applied).
    ``on_day(day_index, n_events)`` is called after each day is written.
    """
    sim = settings.sim
    n_days = sim.days if days is None else int(days)
    if n_days < 1:
        raise ValueError(f"days must be >= 1, got {n_days}")
    started = time.perf_counter()
    base = _base_world(settings, n_days, scenario)
    policy = LoggingPolicy.from_world(base, sim.list_size, sim.seed)
    recent = RecentImpressions(base.n_users)
    removed = clear_lake(settings.lake_dir)
    if removed:
        logger.info("replaced the lake: removed %d stale files", removed)

    files: list[Path] = []
    n_impressions = n_clicks = 0
    world = base
    for index in range(n_days):
        world = scenario.world_on(base, index) if scenario is not None else base
        day_policy = scenario.policy_on(policy, base, index) if scenario is not None else policy
        written = _write_day(settings, index, world, day_policy, recent, scenario, session_block)
        files.append(written.path)
        n_clicks += written.clicks
        n_impressions += written.events - written.clicks
        if on_day is not None:
            on_day(index, written.events)

    last_day = sim.start_date + dt.timedelta(days=n_days - 1)
    end = _write_end_state(settings, world, last_day)
    seconds = time.perf_counter() - started
    summary = SimulationSummary(
        n_users=int(world.active_users(day_start(last_day)).sum()),
        n_items=end.n_items,
        n_days=n_days,
        n_impressions=n_impressions,
        n_clicks=n_clicks,
        ctr=n_clicks / n_impressions if n_impressions else 0.0,
        first_day=sim.start_date,
        last_day=last_day,
        files=files + end.files,
        world_dir=end.world_dir,
        scenario=scenario.name if scenario is not None else None,
        removed_files=removed,
        seconds=seconds,
    )
    logger.info(
        "simulation seed=%d: %d impressions, %d clicks (CTR %.4f) in %.1fs",
        sim.seed, n_impressions, n_clicks, summary.ctr, seconds,
    )
    return summary


def _base_world(settings: Settings, n_days: int, scenario: Scenario | None) -> World:
    """The world of ``settings.sim`` as of the first day: drawn, then prepared by the scenario."""
    base = World.generate(settings.sim)
    if scenario is not None:
        scenario.check_fits(base, n_days)
        base = scenario.prepare(base)
    base.n_days = n_days
    return base


@dataclass(frozen=True)
class _DayWritten:
    """One simulated day's partition and what it holds."""

    path: Path
    events: int  # impressions + clicks
    clicks: int


def _write_day(
    settings: Settings,
    index: int,
    world: World,
    policy: LoggingPolicy,
    recent: RecentImpressions,
    scenario: Scenario | None,
    session_block: int,
) -> _DayWritten:
    """Simulate day ``index`` from its own random stream into its lake partition (the
    scenario, if any, corrupting the rows it corrupts on that day)."""
    sim = settings.sim
    day = sim.start_date + dt.timedelta(days=index)
    rng = np.random.default_rng([sim.seed, STREAM_DAYS, index])
    path = lake.partition_dir(settings.lake_dir, day) / f"part-sim-{sim.seed}.parquet"
    n_events = clicks = 0
    with _PartitionWriter(path) as writer:
        for table in iter_day(world, policy, day, rng, recent, session_block):
            if scenario is not None:
                table = scenario.corrupt(table, index, sim.seed)
            writer.write(table)
            n_events += table.num_rows
            clicks += int(
                pc.sum(pc.equal(table["event_type"], EventType.CLICK.value)).as_py() or 0
            )
    logger.info("simulated %s: %d events (%d clicks)", day, n_events, clicks)
    return _DayWritten(path, n_events, clicks)


@dataclass(frozen=True)
class _EndState:
    """What a run writes after its days: the ground truth and the lake's catalogue and users."""

    world_dir: Path
    n_items: int  # items in the catalogue written
    files: list[Path]  # the catalogue, then the user profile


def _write_end_state(settings: Settings, world: World, last_day: dt.date) -> _EndState:
    """Save the world as of the end of the run, then the catalogue of the items released by
    the end of ``last_day`` and the user profile."""
    saved_to = world.save(world_dir(settings))
    catalogue = item_table(world, day_start(last_day + dt.timedelta(days=1)))
    files = [lake.write_items(catalogue, settings.lake_dir),
             lake.write_users(user_table(world), settings.lake_dir)]
    return _EndState(saved_to, catalogue.num_rows, files)


class _PartitionWriter:
    """One day's Parquet file written block by block (a row group each), renamed when complete."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_suffix(".tmp")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = pq.ParquetWriter(self.tmp, EVENT_SCHEMA, compression="zstd")

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(lake.with_event_columns(table))

    def __enter__(self) -> _PartitionWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.writer.close()
        if exc_type is None:
            self.tmp.replace(self.path)  # atomic: readers never see half a day
        else:
            self.tmp.unlink(missing_ok=True)


def item_table(world: World, before: dt.datetime) -> pa.Table:
    """The catalogue (ITEM_SCHEMA) of items released before ``before``."""
    released = np.flatnonzero(world.available_items(before))
    return pa.table(
        {
            "item_id": pa.array(released, type=pa.int64()),
            "category": pa.array(world.item_category[released], type=pa.int32()),
            "created_at": pa.array(
                world.item_created_us[released], type=pa.timestamp("us", tz="UTC")
            ),
        },
        schema=ITEM_SCHEMA,
    )


def user_table(world: World) -> pa.Table:
    """The user profile (USER_SCHEMA) of every user the world has, joined or not yet: the
    attributes a sign-up gives (country, device), never the ground-truth taste."""
    return pa.table(
        {
            "user_id": pa.array(np.arange(world.n_users), type=pa.int64()),
            "country": pa.array([COUNTRIES[c] for c in world.user_country], type=pa.string()),
            "device": pa.array([DEVICES[d] for d in world.user_device], type=pa.string()),
        },
        schema=USER_SCHEMA,
    )


def simulate_day(
    world: World,
    policy: LoggingPolicy,
    day: dt.date,
    rng: np.random.Generator,
    recent: RecentImpressions | None = None,
) -> pa.Table:
    """One day of traffic as one EVENT_SCHEMA table (see :func:`iter_day`)."""
    tables = list(iter_day(world, policy, day, rng, recent))
    return pa.concat_tables(tables) if tables else EVENT_SCHEMA.empty_table()


def iter_day(
    world: World,
    policy: LoggingPolicy,
    day: dt.date,
    rng: np.random.Generator,
    recent: RecentImpressions | None = None,
    session_block: int = SESSION_BLOCK,
) -> Iterator[pa.Table]:
    """One day of traffic as EVENT_SCHEMA tables, one per block of ``session_block`` sessions.

    Users who have joined start Poisson(activity) sessions at diurnal times; each session is a
    request that shows the logging policy's list (items released before the day starts); each
    impression is clicked with the ground-truth probability at its time (freshness) given how
    often the user saw the item recently (``recent``, updated after each block), a few
    seconds later. Blocks follow the clock; within a block rows are sorted by time.
    """
    if session_block < 1:
        raise ValueError(f"session_block must be >= 1, got {session_block}")
    start = day_start(day)
    activity = world.user_activity.astype(np.float64) * world.active_users(start)
    n_sessions = rng.poisson(activity)
    users = np.repeat(np.arange(world.n_users, dtype=np.int64), n_sessions)
    session_us = epoch_us(start) + _session_offsets_us(rng, users.shape[0])
    by_time = np.argsort(session_us, kind="stable")  # request numbers follow the clock
    users, session_us = users[by_time], session_us[by_time]
    available = world.available_items(start)
    prefix = f"s{world.seed}-{day:%Y%m%d}-"
    for lo in range(0, users.shape[0], session_block):
        yield _block(
            world, policy, rng, recent, available, prefix,
            users[lo : lo + session_block], session_us[lo : lo + session_block], first_request=lo,
        )


def _block(
    world: World,
    policy: LoggingPolicy,
    rng: np.random.Generator,
    recent: RecentImpressions | None,
    available: np.ndarray,
    prefix: str,
    users: np.ndarray,
    session_us: np.ndarray,
    first_request: int,
) -> pa.Table:
    """Events of one block of sessions (already in time order)."""
    n_req, k = users.shape[0], policy.list_size
    lists = policy.recommend(rng, users, available)
    request = np.repeat(np.arange(first_request, first_request + n_req, dtype=np.int64), k)
    position = np.tile(np.arange(k, dtype=np.int32), n_req)
    user = np.repeat(users, k)
    item = lists.ravel()
    ts = np.repeat(session_us, k)

    seen = recent.counts(user, item) if recent is not None else None
    clicked = rng.random(item.shape[0]) < world.click_probability(
        user, item, position, at_us=ts, seen=seen
    )
    if recent is not None:
        recent.record(user, item)
    # Reading time: a couple of seconds, plus longer the further down the list.
    delay = 2 * _US + rng.exponential(6 * _US, size=int(clicked.sum()))
    delay += position[clicked] * 1.5 * _US
    click_ts = ts[clicked] + np.minimum(delay, _MAX_CLICK_DELAY_US).astype(np.int64)

    is_click = np.concatenate([np.zeros(item.shape[0], bool), np.ones(click_ts.shape[0], bool)])
    all_ts = np.concatenate([ts, click_ts])
    order = np.lexsort((is_click, all_ts))  # by time; an impression before a click at a tie
    return _event_table(
        prefix=prefix,
        request=np.concatenate([request, request[clicked]])[order],
        position=np.concatenate([position, position[clicked]])[order],
        is_click=is_click[order],
        ts=all_ts[order],
        user=np.concatenate([user, user[clicked]])[order],
        item=np.concatenate([item, item[clicked]])[order],
        model_version=policy.model_version,
    )


def _session_offsets_us(rng: np.random.Generator, n: int) -> np.ndarray:
    """Microseconds after midnight for ``n`` sessions, following a daily cycle (peak ~20:00 UTC)."""
    minutes = np.arange(_LAST_SESSION_MINUTE)
    weight = 1.0 + 0.7 * np.cos(2 * np.pi * (minutes / _MINUTES - 20 / 24))
    minute = rng.choice(minutes, size=n, p=weight / weight.sum())
    return minute.astype(np.int64) * 60 * _US + rng.integers(0, 60 * _US, size=n)


def _event_table(
    *,
    prefix: str,
    request: np.ndarray,
    position: np.ndarray,
    is_click: np.ndarray,
    ts: np.ndarray,
    user: np.ndarray,
    item: np.ndarray,
    model_version: str,
) -> pa.Table:
    """Assemble EVENT_SCHEMA columns; ids are built with Arrow string kernels (vectorised)."""
    request_id = pc.binary_join_element_wise(
        prefix, pc.utf8_lpad(pc.cast(pa.array(request), pa.string()), width=7, padding="0"), ""
    )
    kind = pc.if_else(pa.array(is_click), EventType.CLICK.value, EventType.IMPRESSION.value)
    pos_str = pc.utf8_lpad(pc.cast(pa.array(position), pa.string()), width=2, padding="0")
    event_id = pc.binary_join_element_wise(request_id, pos_str, kind, "-")
    n = ts.shape[0]
    return pa.table(
        {
            "event_id": event_id,
            "ts": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
            "user_id": pa.array(user, type=pa.int64()),
            "item_id": pa.array(item, type=pa.int64()),
            "event_type": kind,
            "request_id": request_id,
            "position": pa.array(position, type=pa.int32()),
            "model_version": pa.repeat(pa.scalar(model_version, pa.string()), n),
            "arm": pa.nulls(n, pa.string()),
        },
        schema=EVENT_SCHEMA,
    )
