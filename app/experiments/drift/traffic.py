"""Simulated users against API arms, hour by hour of simulated time.

Every arm sees the same users at the same simulated moments (one draw per request); each arm
has its own users' fatigue memory, so the arms diverge only by what they serve. Figures per
arm and hour: impressions, clicks, expected clicks (ground truth) and the oracle's expected
clicks for the same user and moment.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from simulator.users import SimulatedUser, model_version_of
from simulator.world import World


@dataclass
class ArmHour:
    arm: str
    hour: int  # simulated hours since the first live hour
    at: dt.datetime
    requests: int = 0
    errors: int = 0
    impressions: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0
    oracle_clicks: float = 0.0
    # The same two sums over the users the scenario affects (ground truth the experiment knows,
    # serving never does), so the summary can tell the shifted segment's loss from the rest.
    affected_expected_clicks: float = 0.0
    affected_oracle_clicks: float = 0.0
    model: str = ""

    def row(self) -> dict[str, Any]:
        return {"arm": self.arm, "hour": self.hour, "at": self.at.isoformat(),
                "requests": self.requests, "errors": self.errors,
                "impressions": self.impressions, "clicks": self.clicks,
                "expected_clicks": self.expected_clicks, "oracle_clicks": self.oracle_clicks,
                "affected_expected_clicks": self.affected_expected_clicks,
                "affected_oracle_clicks": self.affected_oracle_clicks,
                "fraction_of_oracle": (self.expected_clicks / self.oracle_clicks
                                       if self.oracle_clicks else float("nan")),
                "model": self.model}


@dataclass
class Arm:
    """One API (``url``) and its simulated users; ``post_events``: feed the live loop."""

    name: str
    url: str
    post_events: bool
    users: dict[int, SimulatedUser] = field(default_factory=dict)
    client: httpx.Client | None = None

    def user(self, world: World, user_id: int) -> SimulatedUser:
        user = self.users.get(user_id)
        if user is None:
            user = self.users[user_id] = SimulatedUser(world, user_id)
        user.world = world
        return user

    def http(self) -> httpx.Client:
        if self.client is None:
            self.client = httpx.Client(base_url=self.url, timeout=10.0)
        return self.client


def draw_requests(world: World, at: dt.datetime, n: int, rng: np.random.Generator
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(user ids weighted by activity among joined users, seconds into the hour), by time."""
    active = np.flatnonzero(world.active_users(at))
    weights = world.user_activity[active].astype(np.float64)
    users = rng.choice(active, size=n, p=weights / weights.sum())
    offsets = np.sort(rng.uniform(0, 3600, size=n))
    return users, offsets


def play_hour(arms: list[Arm], world: World, hour: int, at: dt.datetime, n: int, k: int,
              rng: np.random.Generator, affected: np.ndarray | None = None,
              ) -> tuple[list[ArmHour], list[dict[str, Any]]]:
    """``n`` requests in the simulated hour starting ``at``, on every arm; returns the arms'
    figures and the events to post (of the arms with ``post_events``). ``affected``: bool mask
    by user id of the users a scenario changes (their sums are also kept apart)."""
    users, offsets = draw_requests(world, at, n, rng)
    seeds = rng.integers(1 << 31, size=n)  # same click draws on every arm
    out = {a.name: ArmHour(a.name, hour, at) for a in arms}
    events: dict[str, list[dict[str, Any]]] = {a.name: [] for a in arms}

    def run(arm: Arm) -> None:
        rec = out[arm.name]
        for user_id, off, seed in zip(users.tolist(), offsets.tolist(), seeds.tolist()):
            when = at + dt.timedelta(seconds=off)
            rec.requests += 1
            try:
                resp = arm.http().get(f"/recommendations/{user_id}", params={"k": k})
                body = resp.json() if resp.status_code == 200 else None
            except httpx.HTTPError:
                body = None
            if body is None:
                rec.errors += 1
                continue
            user = arm.user(world, user_id)
            user.rng = np.random.default_rng(seed)
            oracle = user.oracle_expected_clicks(k, when)
            reaction = user.react(body, when)
            rec.impressions += reaction.n_impressions
            rec.clicks += len(reaction.clicked)
            rec.expected_clicks += reaction.expected_clicks
            rec.oracle_clicks += oracle
            if affected is not None and affected[user_id]:
                rec.affected_expected_clicks += reaction.expected_clicks
                rec.affected_oracle_clicks += oracle
            rec.model = model_version_of(body) or ""
            if arm.post_events:
                events[arm.name] += reaction.events

    # One thread per arm: each waits on its own API process most of the time.
    threads = [threading.Thread(target=run, args=(a,)) for a in arms]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [out[a.name] for a in arms], [e for a in arms for e in events[a.name]]


def warm_memories(arms: list[Arm], world: World, last_impressions: dict[int, list[int]],
                  at: dt.datetime) -> None:
    """Give every arm's users the recent-impression memory they had at the end of the lake's
    days (fatigue), so the first live hours are not inflated by fresh, unfatigued users."""
    for arm in arms:
        for user_id, items in last_impressions.items():
            arm.user(world, user_id).react_to_items(items, "warmup", None, at)


def post_events(arm: Arm, events: list[dict[str, Any]], batch: int = 1000) -> int:
    """POST /events in batches; returns the accepted count (raises on a refused batch)."""
    accepted = 0
    for i in range(0, len(events), batch):
        resp = arm.http().post("/events", json={"events": events[i:i + batch]})
        if resp.status_code != 202:
            raise RuntimeError(f"POST /events answered {resp.status_code}: {resp.text[:200]}")
        accepted += len(events[i:i + batch])
    return accepted
