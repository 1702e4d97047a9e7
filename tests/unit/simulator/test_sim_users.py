"""Simulated users click by ground truth; replays rank the oracle above any policy above random."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from recstack.schemas import Event
from recstack.settings import Settings
from simulator.replay import compare_to_oracle, replay
from simulator.users import OnlineCtr, SimulatedUser, model_version_of
from simulator.world import World


@pytest.fixture
def world(settings: Settings) -> World:
    return World.generate(settings.sim)


def _response(items: list[int], request_id: str = "req-1") -> dict:
    return {
        "request_id": request_id,
        "user_id": 3,
        "items": [{"item_id": i, "score": 1.0, "source": "ann"} for i in items],
        "model": {"candidates": "3", "ranker": "5"},
    }


def test_clicks_follow_the_ground_truth(world: World) -> None:
    items = list(range(10))
    rng = np.random.default_rng(0)
    expected = SimulatedUser(world, 3).click_probabilities(items)
    trials = 2500
    clicks = np.zeros(len(items))
    for _ in range(trials):  # a fresh user each time: no fatigue across trials
        reaction = SimulatedUser(world, 3, rng=rng).react(_response(items))
        clicks[[items.index(i) for i in reaction.clicked]] += 1
    # Each position's click count is Binomial(trials, p): all within 4 standard deviations ...
    sd = np.sqrt(trials * expected * (1 - expected))
    assert (np.abs(clicks - trials * expected) < 4 * sd + 1).all()
    # ... and the pattern is the ground truth's, not a flat rate (which this test rejects).
    flat = np.full(len(items), clicks.sum() / len(items))
    assert stats.chisquare(clicks, flat).pvalue < 1e-6
    assert stats.pearsonr(clicks, expected).statistic > 0.9


def test_events_are_valid_and_carry_the_request(world: World) -> None:
    user = SimulatedUser(world, 3, rng=np.random.default_rng(1))
    at = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC)
    reaction = user.react(_response([5, 6, 7, world.n_items + 10]), at=at)
    events = [Event.model_validate(e) for e in reaction.events]
    impressions = [e for e in events if e.event_type == "impression"]
    assert [e.item_id for e in impressions] == [5, 6, 7, world.n_items + 10]
    assert [e.position for e in impressions] == [0, 1, 2, 3]
    assert {e.request_id for e in events} == {"req-1"}
    assert {e.model_version for e in events} == {"candidates=3,ranker=5"}
    assert len({e.event_id for e in events}) == len(events)
    assert all(e.ts > at for e in events if e.event_type == "click")
    # An item the world does not know is shown but never clicked.
    assert user.click_probabilities([world.n_items + 10])[0] == 0.0


def test_the_experiment_arm_is_copied_into_every_event(world: World) -> None:
    user = SimulatedUser(world, 3, rng=np.random.default_rng(4))
    best = [int(i) for i in user.best_items(10)]  # likely clicked: clicks carry the arm too
    with_arm = user.react({**_response(best), "arm": "treatment"})
    assert any(e["event_type"] == "click" for e in with_arm.events)
    assert {Event.model_validate(e).arm for e in with_arm.events} == {"treatment"}
    without = user.react(_response(best, "req-2"))  # outside an experiment: no arm
    assert {Event.model_validate(e).arm for e in without.events} == {None}


def test_fatigue_is_remembered_and_bounded(world: World) -> None:
    user = SimulatedUser(world, 3, rng=np.random.default_rng(2), memory=15)
    items = [int(i) for i in user.best_items(10)]
    first = user.click_probabilities(items)
    user.react_to_items(items, "r1")
    again = user.click_probabilities(items)
    assert (again < first).all()
    for n in range(10):
        user.react_to_items(items, f"r{n}")
    assert len(user._recent) == 15 and sum(user._seen.values()) == 15
    assert user.best_items(10).tolist() != items  # the oracle moves on to unseen items


def test_unknown_user_and_model_version_forms(world: World) -> None:
    with pytest.raises(ValueError, match="unknown user_id"):
        SimulatedUser(world, world.n_users)
    assert model_version_of({"model": "v7"}) == "v7"
    assert model_version_of({}) is None


def test_oracle_beats_a_model_beats_random(world: World) -> None:
    quality_order = np.argsort(-world.item_quality)

    def by_quality(user_id: int, k: int) -> list[int]:  # a popularity-like model
        return quality_order[:k].tolist()

    results = compare_to_oracle(world, {"quality": by_quality}, n_requests=400, k=10, seed=3)
    oracle, model, rand = results["oracle"], results["quality"], results["random"]
    assert oracle.fraction_of_oracle == pytest.approx(1.0)
    assert oracle.ctr > model.ctr > rand.ctr
    assert oracle.expected_ctr > 2 * rand.expected_ctr
    assert 0 < rand.fraction_of_oracle < model.fraction_of_oracle < 1
    # Realized CTR is a sample of the expected CTR.
    assert oracle.ctr == pytest.approx(oracle.expected_ctr, rel=0.2)


def test_replay_sends_events_in_api_sized_batches(world: World) -> None:
    batches: list[list[dict]] = []
    result = replay(world, "random", n_requests=250, k=10, seed=4, sink=batches.append)
    assert all(0 < len(b) <= 1000 for b in batches)
    assert sum(map(len, batches)) == result.events_sent == result.impressions + result.clicks
    tally = OnlineCtr()
    assert tally.summary()["fraction_of_oracle"] is None
    with pytest.raises(ValueError, match="unknown policy"):
        replay(world, "best", n_requests=1)


def test_users_module_is_light() -> None:
    """The locustfile imports simulator.users after gevent patching: no pyarrow, no lake."""
    code = "import sys, simulator.users; sys.exit('pyarrow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
