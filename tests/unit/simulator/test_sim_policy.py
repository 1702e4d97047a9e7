"""Policies: the logging policy's lists, and the oracle/random bounds."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.clock import day_start
from recstack.settings import Settings
from simulator.policy import LoggingPolicy, expected_ctr, oracle_topk, random_topk
from simulator.world import World


@pytest.fixture
def world(settings: Settings) -> World:
    return World.generate(settings.sim)


def test_logging_lists_are_full_distinct_and_released(settings: Settings, world: World) -> None:
    policy = LoggingPolicy.from_world(world, settings.sim.list_size, settings.sim.seed)
    available = world.available_items(day_start(settings.sim.start_date))
    users = np.random.default_rng(0).integers(0, world.n_users, size=500)
    lists = policy.recommend(np.random.default_rng(1), users, available)
    assert lists.shape == (500, settings.sim.list_size) and lists.dtype == np.int64
    assert all(len(set(row)) == lists.shape[1] for row in lists.tolist())
    assert available[lists].all()
    again = policy.recommend(np.random.default_rng(1), users, available)
    np.testing.assert_array_equal(lists, again)


def test_logging_policy_favours_the_users_categories(settings: Settings, world: World) -> None:
    policy = LoggingPolicy.from_world(world, settings.sim.list_size, settings.sim.seed)
    users = np.repeat(np.arange(world.n_users), 5)
    lists = policy.recommend(np.random.default_rng(2), users, np.ones(world.n_items, bool))
    shown_fav = world.item_category[lists] == world.user_favourites[users, :1]
    share_of_catalogue = np.bincount(world.item_category, minlength=world.n_categories)[
        world.user_favourites[users, 0]
    ] / world.n_items
    assert shown_fav.mean() > share_of_catalogue.mean() + 0.1  # signal, with exploration left


def test_tiny_catalogue_still_gets_distinct_full_lists(world: World) -> None:
    policy = LoggingPolicy.from_world(world, list_size=10, seed=1)
    available = np.zeros(world.n_items, bool)
    available[:11] = True  # forces the exact (without replacement) path for most rows
    lists = policy.recommend(np.random.default_rng(3), np.arange(50), available)
    assert all(len(set(row)) == 10 for row in lists.tolist())
    assert (lists < 11).all()
    with pytest.raises(ValueError, match="available"):
        too_few = available & (np.arange(world.n_items) < 5)
        policy.recommend(np.random.default_rng(3), np.arange(5), too_few)


def test_oracle_beats_logging_beats_random(settings: Settings, world: World) -> None:
    k = settings.sim.list_size
    rng = np.random.default_rng(4)
    users = rng.integers(0, world.n_users, size=200)
    policy = LoggingPolicy.from_world(world, k, settings.sim.seed)
    oracle = np.stack([oracle_topk(world, u, k) for u in users])
    random = np.stack([random_topk(rng, world, k) for _ in users])
    logging_lists = policy.recommend(rng, users, np.ones(world.n_items, bool))
    ctr_oracle = expected_ctr(world, users, oracle)
    ctr_logging = expected_ctr(world, users, logging_lists)
    ctr_random = expected_ctr(world, users, random)
    assert ctr_oracle > 1.5 * ctr_logging
    assert ctr_logging > ctr_random


def test_oracle_is_sorted_by_true_probability(world: World) -> None:
    top = oracle_topk(world, 5, 10)
    p = world.click_probability(5, top, 0)
    assert (np.diff(p) <= 0).all()
    assert p[-1] >= np.sort(world.click_probability(5, np.arange(world.n_items), 0))[-10]
    available = np.arange(world.n_items) % 2 == 0
    assert (oracle_topk(world, 5, 10, available) % 2 == 0).all()


def test_k_is_bounded(world: World) -> None:
    with pytest.raises(ValueError, match="k must be"):
        oracle_topk(world, 0, world.n_items + 1)
    with pytest.raises(ValueError, match="k must be"):
        random_topk(np.random.default_rng(0), world, 0)
    everything = random_topk(np.random.default_rng(0), world, world.n_items)
    assert len(set(everything.tolist())) == world.n_items
