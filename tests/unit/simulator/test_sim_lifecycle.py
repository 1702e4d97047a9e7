"""World model: item lifecycle (daily arrivals, fading interest), fatigue, segments."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recstack.clock import day_start
from recstack.settings import Settings
from simulator.fatigue import RecentImpressions
from simulator.generate import iter_day
from simulator.policy import LoggingPolicy
from simulator.world import COUNTRIES, World, epoch_us


@pytest.fixture
def world(settings: Settings) -> World:
    return World.generate(settings.sim)


def test_new_items_arrive_every_simulated_day(settings: Settings, world: World) -> None:
    for index in range(settings.sim.days):
        start = day_start(settings.sim.start_date + dt.timedelta(days=index))
        arrived = world.available_items(start + dt.timedelta(days=1)) & ~world.available_items(start)
        assert arrived.sum() >= 1, f"no item released on day {index}"


def test_interest_decays_with_age(world: World) -> None:
    items = np.arange(world.n_items)
    released = world.item_created_us
    at_release = world.freshness(items, released)
    np.testing.assert_allclose(at_release, world.freshness_boost)
    week_later = world.freshness(items, released + 7 * 86_400 * 1_000_000)
    assert (week_later < at_release).all()
    user = np.zeros(world.n_items, dtype=np.int64)
    fresh = world.logits(user, items, at_us=released)
    stale = world.logits(user, items, at_us=released + 30 * 86_400 * 1_000_000)
    assert (fresh > stale).all()


def test_recent_impressions_are_bounded_and_counted() -> None:
    recent = RecentImpressions(n_users=3, memory=4)
    recent.record(np.array([0, 0, 1, 0]), np.array([7, 7, 5, 9]))
    np.testing.assert_array_equal(recent.counts([0, 0, 1, 2], [7, 9, 5, 7]), [2, 1, 1, 0])
    # More impressions than memory: only the last 4 of user 0 survive.
    recent.record(np.zeros(5, dtype=np.int64), np.array([1, 2, 3, 4, 5]))
    assert recent.items.shape == (3, 4)
    np.testing.assert_array_equal(recent.counts([0] * 6, [7, 9, 2, 3, 4, 5]), [0, 0, 1, 1, 1, 1])
    with pytest.raises(ValueError, match="memory"):
        RecentImpressions(1, memory=0)


def test_fatigue_lowers_clicks_on_repeated_items(settings: Settings, world: World) -> None:
    policy = LoggingPolicy.from_world(world, settings.sim.list_size, settings.sim.seed)
    day = settings.sim.start_date

    def clicks(recent: RecentImpressions) -> set[tuple[int, int]]:
        rng = np.random.default_rng(11)  # same draws: same lists, same uniforms
        df = next(iter_day(world, policy, day, rng, recent)).to_pandas()
        return set(map(tuple, df[df.event_type == "click"][["request_id", "position"]].values))

    fresh = clicks(RecentImpressions(world.n_users))
    # Every user has just seen every item twice: the same traffic clicks strictly less.
    everyone = np.repeat(np.arange(world.n_users), world.n_items)
    every_item = np.tile(np.arange(world.n_items), world.n_users)
    tired = RecentImpressions(world.n_users, memory=2 * world.n_items)
    tired.record(everyone, every_item)
    tired.record(everyone, every_item)
    fatigued = clicks(tired)
    assert fatigued < fresh  # a strict subset: fatigue only removes clicks
    assert len(fatigued) < 0.7 * len(fresh)


def test_segments_and_join_times(world: World) -> None:
    total = sum(int(world.segment_mask(country=c).sum()) for c in COUNTRIES)
    assert total == world.n_users
    us_mobile = world.segment_mask(country="us", device="mobile")
    assert 0 < us_mobile.sum() < world.segment_mask(country="us").sum()
    with pytest.raises(ValueError, match="unknown country"):
        world.segment_mask(country="mars")
    grown = world.with_new_users(np.random.default_rng(0), 5, epoch_us(world.end), country="br")
    assert grown.n_users == world.n_users + 5
    assert not grown.active_users(day_start(world.start_date))[-5:].any()
    assert grown.active_users(world.end)[-5:].all()
    assert (grown.user_country[-5:] == COUNTRIES.index("br")).all()
