"""Simulated traffic for an experiment, without HTTP: policy arms on the world, vectorised.

Arms named ``policy:<name>`` are simulator policies instead of registry models: ``logging``
(the historical production policy), ``random``, ``oracle`` (the ground truth's best list) and
``oracle:<sigma>`` (the oracle ranking by the true logit plus Gaussian noise of std ``sigma``:
a better-than-logging model of tunable quality). Users are assigned with the API's own hash
(:func:`serving.arms.assign_many`), sessions per user and day are Poisson with the user's
activity, and clicks are drawn from the true click probabilities (position bias included;
no fatigue across sessions, unlike :class:`simulator.users.SimulatedUser`). This is what lets
the A/A and planted-model tests run dozens of experiments in seconds.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from serving.arms import assign_many
from simulator.policy import LoggingPolicy
from simulator.world import World, epoch_us

POLICY_PREFIX = "policy:"
_CHUNK = 512


@dataclass
class ExperimentLog:
    """What an experiment's traffic produced, per (day, user, arm), plus per-request latency
    and errors (API runs only) and the items each arm showed (catalogue coverage)."""

    rows: pd.DataFrame  # day, user_id, arm, requests, impressions, clicks, expected_clicks, errors
    n_items: int
    shown: dict[str, np.ndarray] = field(default_factory=dict)  # arm -> bool [n_items]
    latency_s: dict[str, np.ndarray] = field(default_factory=dict)  # arm -> seconds per request
    backend: str = "simulated policies"
    versions: dict[str, list[str]] = field(default_factory=dict)  # arm -> model versions served


def is_policy(spec: str) -> bool:
    return spec.startswith(POLICY_PREFIX)


class PolicyArm:
    """A simulator policy that serves lists for batches of users at a time."""

    def __init__(self, spec: str, world: World, list_size: int, seed: int) -> None:
        name = spec.removeprefix(POLICY_PREFIX)
        self.spec, self.world, self.k = spec, world, list_size
        self.sigma: float | None = None
        self.logging: LoggingPolicy | None = None
        if name == "logging":
            self.logging = LoggingPolicy.from_world(world, list_size, seed)
        elif name == "oracle":
            self.sigma = 0.0
        elif name.startswith("oracle:"):
            self.sigma = float(name.split(":", 1)[1])
        elif name != "random":
            raise ValueError(f"unknown policy {spec!r}: policy:logging, policy:random, "
                             "policy:oracle or policy:oracle:<noise sigma>")
        self.kind = name.split(":", 1)[0]

    def lists(self, rng: np.random.Generator, users: np.ndarray, at: dt.datetime) -> np.ndarray:
        available = self.world.available_items(at)
        if self.logging is not None:
            return self.logging.recommend(rng, users, available)
        if self.sigma is None:  # random: k distinct items by random keys
            keys = rng.random((users.size, self.world.n_items))
        else:
            keys = self._logits(users, at)
            if self.sigma > 0:
                keys = keys + rng.normal(0.0, self.sigma, size=keys.shape)
        keys = np.where(available[None, :], keys, -np.inf)
        top = np.argpartition(-keys, self.k - 1, axis=1)[:, :self.k]
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1, kind="stable")
        return np.take_along_axis(top, order, axis=1).astype(np.int64)

    def _logits(self, users: np.ndarray, at: dt.datetime) -> np.ndarray:
        w = self.world
        base = (w.item_quality + w.category_boost[w.item_category]).astype(np.float64)
        base = base + w.freshness(np.arange(w.n_items), epoch_us(at))
        aff = w.affinity_scale * (w.user_taste[users] @ w.item_embedding.T).astype(np.float64)
        return aff + base[None, :] + (w.user_bias[users].astype(np.float64) + w.bias)[:, None]


def sessions(world: World, rng: np.random.Generator, users: np.ndarray,
             at: dt.datetime) -> np.ndarray:
    """User ids of one day's sessions: Poisson(activity) per active user, repeated."""
    active = world.active_users(at)[users]
    lam = world.user_activity[users].astype(np.float64) * active
    return np.repeat(users, rng.poisson(lam))


def simulate_policies(
    world: World,
    arms: Sequence[tuple[str, str, float]],  # (arm name, policy spec, weight)
    salt: str,
    days: int,
    list_size: int = 10,
    seed: int = 0,
    start: dt.datetime | None = None,
    users: np.ndarray | None = None,
    on_day: object = None,
) -> ExperimentLog:
    """``days`` simulated days of the experiment; arm ``i`` of a user is the API's assignment."""
    rng = np.random.default_rng([seed, 10])
    start = start or world.end
    users = np.arange(world.n_users) if users is None else np.asarray(users, dtype=np.int64)
    assigned = assign_many(users, salt, [w for _, _, w in arms])
    arm_of = dict(zip(users.tolist(), assigned.tolist(), strict=True))
    policies = [PolicyArm(spec, world, list_size, seed + i) for i, (_, spec, _) in enumerate(arms)]
    shown = {name: np.zeros(world.n_items, dtype=bool) for name, _, _ in arms}
    frames = []
    positions = np.arange(list_size)[None, :]
    for day in range(days):
        at = start + dt.timedelta(days=day, hours=12)
        who = sessions(world, rng, users, at)
        arm_idx = np.fromiter((arm_of[int(u)] for u in who), dtype=np.int64, count=who.size)
        for a, (name, _, _) in enumerate(arms):
            u_arm = who[arm_idx == a]
            for lo in range(0, u_arm.size, _CHUNK):
                u = u_arm[lo:lo + _CHUNK]
                lists = policies[a].lists(rng, u, at)
                prob = world.click_probability(u[:, None], lists, positions, at_us=epoch_us(at))
                clicks = rng.random(prob.shape) < prob
                shown[name][lists.ravel()] = True
                frames.append(pd.DataFrame({
                    "day": day, "user_id": u, "arm": name, "requests": 1,
                    "impressions": lists.shape[1], "clicks": clicks.sum(axis=1),
                    "expected_clicks": prob.sum(axis=1), "errors": 0,
                }))
        if callable(on_day):
            on_day(day)
    rows = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["day", "user_id", "arm", "requests", "impressions", "clicks",
                 "expected_clicks", "errors"])
    rows = rows.groupby(["day", "user_id", "arm"], as_index=False).sum()
    return ExperimentLog(rows, world.n_items, shown)
