"""Offline replay: serve a policy to simulated users and measure its CTR against the oracle.

A policy is ``"oracle"``, ``"random"`` or any callable ``(user_id, k) -> item ids`` (best
first), e.g. a wrapper around a trained model or an HTTP client of the API. Every policy of a
comparison sees the same sequence of users (drawn by activity, seeded), each a
:class:`~simulator.users.SimulatedUser` with its own fatigue memory, and the events can be fed
to a ``sink`` (e.g. :func:`http_sink` posting to ``POST /events``) so the next training run
learns from them.

Figures: realized ``ctr`` (clicks / impressions, sampled), ``expected_ctr`` (mean true click
probability of what was shown: the same quantity without sampling noise), and
``fraction_of_oracle`` = expected clicks / the oracle's expected clicks for the same requests.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from simulator.streams import STREAM_REPLAY
from simulator.users import SimulatedUser
from simulator.world import World

logger = logging.getLogger(__name__)

Policy = Callable[[int, int], Sequence[int]]
Sink = Callable[[list[dict[str, Any]]], None]
MAX_BATCH = 1000  # POST /events accepts at most this many events per batch


@dataclass
class ReplayResult:
    """What one policy achieved on the replayed requests."""

    name: str
    requests: int
    impressions: int
    clicks: int
    expected_clicks: float
    oracle_expected_clicks: float
    events_sent: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ctr(self) -> float:
        return self.clicks / self.impressions if self.impressions else 0.0

    @property
    def expected_ctr(self) -> float:
        return self.expected_clicks / self.impressions if self.impressions else 0.0

    @property
    def fraction_of_oracle(self) -> float:
        if not self.oracle_expected_clicks:
            return 0.0
        return self.expected_clicks / self.oracle_expected_clicks

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "ctr": round(self.ctr, 5),
            "expected_ctr": round(self.expected_ctr, 5),
            "fraction_of_oracle": round(self.fraction_of_oracle, 4),
        }


def replay_users(world: World, n_requests: int, seed: int, at: dt.datetime) -> np.ndarray:
    """The users of ``n_requests`` requests, drawn by activity among users joined by ``at``."""
    if n_requests < 1:
        raise ValueError(f"n_requests must be >= 1, got {n_requests}")
    weight = world.user_activity.astype(np.float64) * world.active_users(at)
    if weight.sum() <= 0:
        raise ValueError(f"no user of the world is active at {at}")
    rng = np.random.default_rng([seed, STREAM_REPLAY])
    return rng.choice(world.n_users, size=n_requests, p=weight / weight.sum())


def replay(
    world: World,
    policy: str | Policy,
    n_requests: int = 2000,
    k: int = 10,
    seed: int = 0,
    at: dt.datetime | None = None,
    sink: Sink | None = None,
    name: str | None = None,
) -> ReplayResult:
    """Serve ``policy`` to ``n_requests`` simulated requests at simulated time ``at``.

    In: the world (ground truth), a policy (see the module docstring), list size ``k``,
    ``seed`` (users and clicks), ``at`` (default: the end of the simulated run). Out: a
    :class:`ReplayResult`; events (impressions + clicks, ``model_version`` = the policy's name)
    go to ``sink`` in batches of at most 1000 when one is given.
    """
    at = at or world.end
    label = name or (policy if isinstance(policy, str) else getattr(policy, "__name__", "policy"))
    users = replay_users(world, n_requests, seed, at)
    click_rng = np.random.default_rng([seed, STREAM_REPLAY, 1])
    choose_rng = np.random.default_rng([seed, STREAM_REPLAY, 2])
    population: dict[int, SimulatedUser] = {}
    available = np.flatnonzero(world.available_items(at))
    result = ReplayResult(label, 0, 0, 0, 0.0, 0.0)
    buffer: list[dict[str, Any]] = []
    for number, user_id in enumerate(users.tolist()):
        user = population.get(user_id)
        if user is None:
            user = population[user_id] = SimulatedUser(world, user_id, rng=click_rng)
        if policy == "oracle":
            items = user.best_items(k, at)
        elif policy == "random":
            items = choose_rng.choice(available, size=min(k, available.size), replace=False)
        elif callable(policy):
            items = np.asarray(policy(user_id, k), dtype=np.int64)[:k]
        else:
            raise ValueError(f"unknown policy {policy!r}: 'oracle', 'random' or a callable")
        oracle = user.oracle_expected_clicks(k, at)
        reaction = user.react_to_items(
            [int(i) for i in items], f"replay-{label}-{seed}-{number:07d}", label, at
        )
        result.requests += 1
        result.impressions += reaction.n_impressions
        result.clicks += len(reaction.clicked)
        result.expected_clicks += reaction.expected_clicks
        result.oracle_expected_clicks += oracle
        if sink is not None:
            buffer.extend(reaction.events)
            if len(buffer) >= MAX_BATCH - 2 * k:  # a request's events never straddle batches
                sink(buffer)
                result.events_sent += len(buffer)
                buffer = []
    if sink is not None and buffer:
        sink(buffer)
        result.events_sent += len(buffer)
    logger.info(
        "replay %s: %d requests, CTR %.4f, %.1f%% of the oracle",
        label, result.requests, result.ctr, 100 * result.fraction_of_oracle,
    )
    return result


def compare_to_oracle(
    world: World,
    policies: Mapping[str, Policy] | None = None,
    n_requests: int = 2000,
    k: int = 10,
    seed: int = 0,
    at: dt.datetime | None = None,
) -> dict[str, ReplayResult]:
    """Replay the oracle, random and each named policy on the same users; results by name."""
    named: dict[str, str | Policy] = {"oracle": "oracle", "random": "random", **(policies or {})}
    return {
        label: replay(world, policy, n_requests, k, seed, at, name=label)
        for label, policy in named.items()
    }


def http_sink(base_url: str, timeout_s: float = 10.0) -> Sink:
    """A sink that posts each batch to ``{base_url}/events`` (raises unless the API says 202)."""
    client = httpx.Client(base_url=base_url, timeout=timeout_s)

    def post(events: list[dict[str, Any]]) -> None:
        for lo in range(0, len(events), MAX_BATCH):
            resp = client.post("/events", json={"events": events[lo : lo + MAX_BATCH]})
            if resp.status_code != 202:
                raise RuntimeError(f"POST /events answered {resp.status_code}: {resp.text[:200]}")

    return post
