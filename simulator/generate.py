"""Simulated traffic: sessions -> logging-policy lists -> impressions and clicks -> the lake.

Everything for one day is built as numpy columns (no Python loop per event), so the same code
writes ten million events. Each day draws from its own random stream (seed, day), and event ids
are formatted from (seed, date, request number, position, type): re-running a seed rewrites
identical files under the same batch key, which the lake treats as an idempotent write.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recstack import lake
from recstack.clock import day_start
from recstack.schemas import EVENT_SCHEMA, ITEM_SCHEMA, EventType
from recstack.settings import Settings
from simulator.policy import LoggingPolicy
from simulator.world import STREAM_DAYS, World, epoch_us

logger = logging.getLogger(__name__)

WORLD_DIR = "world"  # under Settings.root: the ground truth, for load tests and evaluation
_US = 1_000_000
_MINUTES = 1440
_LAST_SESSION_MINUTE = _MINUTES - 10  # clicks (<= 2 min later) stay inside the session's day
_MAX_CLICK_DELAY_US = 120 * _US
_SESSION_BLOCK = 50_000  # sessions per policy call, bounding the [sessions, 3k] draw matrices


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


def world_dir(settings: Settings) -> Path:
    """Where :func:`simulate` saves the ground-truth world (``World.load`` reads it)."""
    return settings.root / WORLD_DIR


def simulate(
    settings: Settings,
    days: int | None = None,
    on_day: Callable[[int, int], None] | None = None,
) -> SimulationSummary:
    """Generate the world of ``settings.sim`` and write ``days`` days of traffic to the lake.

    In: ``settings.sim`` (seed, sizes, start date, sessions per user, list size); ``days``
    defaults to ``settings.sim.days``. Out: ``settings.lake_dir`` gets one
    ``events/date=.../part-sim-<seed>.parquet`` per day and ``items.parquet``;
    ``settings.root/world`` gets the ground truth. ``on_day(day_index, n_events)`` is called
    after each day is written.
    """
    sim = settings.sim
    n_days = sim.days if days is None else int(days)
    if n_days < 1:
        raise ValueError(f"days must be >= 1, got {n_days}")
    started = time.perf_counter()
    world = World.generate(sim)
    saved_to = world.save(world_dir(settings))
    policy = LoggingPolicy.from_world(world, sim.list_size, sim.seed)

    files: list[Path] = []
    n_impressions = n_clicks = 0
    for index in range(n_days):
        day = sim.start_date + dt.timedelta(days=index)
        rng = np.random.default_rng([sim.seed, STREAM_DAYS, index])
        table = simulate_day(world, policy, day, rng)
        files.extend(lake.write_events(table, settings.lake_dir, batch_key=f"sim-{sim.seed}"))
        clicks = int(pc.sum(pc.equal(table["event_type"], EventType.CLICK.value)).as_py() or 0)
        n_clicks += clicks
        n_impressions += table.num_rows - clicks
        logger.info("simulated %s: %d events (%d clicks)", day, table.num_rows, clicks)
        if on_day is not None:
            on_day(index, table.num_rows)

    last_day = sim.start_date + dt.timedelta(days=n_days - 1)
    catalogue = item_table(world, day_start(last_day + dt.timedelta(days=1)))
    files.append(lake.write_items(catalogue, settings.lake_dir))
    summary = SimulationSummary(
        n_users=world.n_users,
        n_items=catalogue.num_rows,
        n_days=n_days,
        n_impressions=n_impressions,
        n_clicks=n_clicks,
        ctr=n_clicks / n_impressions if n_impressions else 0.0,
        first_day=sim.start_date,
        last_day=last_day,
        files=files,
        world_dir=saved_to,
    )
    logger.info(
        "simulation seed=%d: %d impressions, %d clicks (CTR %.4f) in %.1fs",
        sim.seed, n_impressions, n_clicks, summary.ctr, time.perf_counter() - started,
    )
    return summary


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


def simulate_day(
    world: World, policy: LoggingPolicy, day: dt.date, rng: np.random.Generator
) -> pa.Table:
    """One day of traffic as an EVENT_SCHEMA table sorted by time.

    Users start Poisson(activity) sessions at diurnal times; each session is a request that
    shows the logging policy's list (items released before the day starts); each impression
    is clicked with the ground-truth probability, a few seconds later.
    """
    n_sessions = rng.poisson(world.user_activity.astype(np.float64))
    users = np.repeat(np.arange(world.n_users, dtype=np.int64), n_sessions)
    session_us = epoch_us(day_start(day)) + _session_offsets_us(rng, users.shape[0])
    by_time = np.argsort(session_us, kind="stable")  # request numbers follow the clock
    users, session_us = users[by_time], session_us[by_time]
    n_req, k = users.shape[0], policy.list_size

    available = world.available_items(day_start(day))
    lists = np.empty((n_req, k), dtype=np.int64)
    for lo in range(0, n_req, _SESSION_BLOCK):
        block = users[lo : lo + _SESSION_BLOCK]
        lists[lo : lo + _SESSION_BLOCK] = policy.recommend(rng, block, available)

    request = np.repeat(np.arange(n_req, dtype=np.int64), k)
    position = np.tile(np.arange(k, dtype=np.int32), n_req)
    user = np.repeat(users, k)
    item = lists.ravel()
    ts = np.repeat(session_us, k)

    clicked = rng.random(item.shape[0]) < world.click_probability(user, item, position)
    # Reading time: a couple of seconds, plus longer the further down the list.
    delay = 2 * _US + rng.exponential(6 * _US, size=int(clicked.sum()))
    delay += position[clicked] * 1.5 * _US
    click_ts = ts[clicked] + np.minimum(delay, _MAX_CLICK_DELAY_US).astype(np.int64)

    is_click = np.concatenate([np.zeros(item.shape[0], bool), np.ones(click_ts.shape[0], bool)])
    all_ts = np.concatenate([ts, click_ts])
    order = np.lexsort((is_click, all_ts))  # by time; an impression before a click at a tie
    return _event_table(
        prefix=f"s{world.seed}-{day:%Y%m%d}-",
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
        },
        schema=EVENT_SCHEMA,
    )
