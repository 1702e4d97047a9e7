"""The world: seeded generation, the ground-truth click model, save/load."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recstack.clock import day_start
from recstack.settings import Settings
from simulator.world import NEW_ITEM_FRACTION, World


def _arrays(world: World) -> dict[str, np.ndarray]:
    return {k: v for k, v in vars(world).items() if isinstance(v, np.ndarray)}


def test_same_seed_same_world_and_different_seed_differs(settings: Settings) -> None:
    a, b = World.generate(settings.sim), World.generate(settings.sim)
    other = World.generate(settings.sim.model_copy(update={"seed": settings.sim.seed + 1}))
    for name, value in _arrays(a).items():
        np.testing.assert_array_equal(value, getattr(b, name), err_msg=name)
    assert a.bias == b.bias
    assert not np.array_equal(a.item_embedding, other.item_embedding)


def test_shapes_and_latent_structure(settings: Settings) -> None:
    sim = settings.sim
    world = World.generate(sim)
    sizes = (world.n_users, world.n_items, world.n_categories)
    assert sizes == (sim.n_users, sim.n_items, sim.n_categories)
    assert world.item_category.min() >= 0 and world.item_category.max() < sim.n_categories
    np.testing.assert_allclose(np.linalg.norm(world.user_taste, axis=1), 1.0, rtol=1e-5)
    n_fav = (world.user_favourites >= 0).sum(axis=1)
    assert n_fav.min() >= 1 and n_fav.max() <= 3
    assert world.user_activity.min() > 0
    assert abs(world.user_activity.mean() - sim.sessions_per_user_per_day) < 0.3
    # Some items are released during the simulated days, the rest before the first day.
    start = day_start(sim.start_date)
    released_during = ~world.available_items(start)
    assert released_during.sum() == round(NEW_ITEM_FRACTION * sim.n_items)
    assert world.available_items(start + dt.timedelta(days=sim.days)).all()


def test_users_prefer_their_favourite_categories(settings: Settings) -> None:
    world = World.generate(settings.sim)
    users = np.arange(world.n_users)
    fav = world.user_favourites[:, 0]
    in_fav = world.item_category[None, :] == fav[:, None]
    logits = np.stack([world.user_item_logits(u) for u in users])
    assert logits[in_fav].mean() > logits[~in_fav].mean() + 1.0


def test_click_probability_broadcasts_and_decays_with_position(settings: Settings) -> None:
    world = World.generate(settings.sim)
    items = np.arange(world.n_items)
    p = world.click_probability(3, items[:, None], np.arange(10)[None, :])
    assert p.shape == (world.n_items, 10)
    assert ((p > 0) & (p < 1)).all()
    assert (np.diff(p, axis=1) < 0).all()  # same item, lower slot: less likely clicked
    np.testing.assert_allclose(p[:, 1] / p[:, 0], 2.0**-world.position_exponent)


def test_bad_ids_are_a_clear_error(settings: Settings) -> None:
    world = World.generate(settings.sim)
    with pytest.raises(ValueError, match="item ids"):
        world.click_probability([0], [world.n_items], [0])
    with pytest.raises(ValueError, match="user ids"):
        world.click_probability([-1], [0], [0])
    with pytest.raises(ValueError, match="positions"):
        world.click_probability([0], [0], [-1])


def test_save_load_round_trip(settings: Settings) -> None:
    world = World.generate(settings.sim)
    path = world.save(settings.root / "world")
    loaded = World.load(path)
    for name, value in _arrays(world).items():
        np.testing.assert_array_equal(value, getattr(loaded, name), err_msg=name)
        assert getattr(loaded, name).dtype == value.dtype
    assert loaded.seed == world.seed and loaded.start_date == world.start_date
    assert loaded.bias == world.bias
    users, items = np.arange(20), np.arange(20)
    np.testing.assert_array_equal(
        world.click_probability(users, items, 0), loaded.click_probability(users, items, 0)
    )


def test_load_missing_world_says_what_to_do(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="recstack simulate"):
        World.load(tmp_path / "nowhere")
