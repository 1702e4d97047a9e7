"""Simulated users through the recommendation API: one GET per session, clicks by ground truth,
the events (with the response's arm) posted back.

``client`` is anything with httpx's ``get``/``post`` (an ``httpx.Client`` on a running API, or
Starlette's ``TestClient`` on an in-process app). Latency is measured at the client, per arm;
a non-200 answer counts as an error of the user's arm (read from ``GET /experiment`` when the
answer carries none).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from app.experiments.online.simulate import ExperimentLog, sessions
from serving.arms import assign
from simulator.users import SimulatedUser, model_version_of
from simulator.world import World

EVENT_BATCH = 500


def drive_api(
    client: Any,
    world: World,
    days: int,
    salt: str,
    weights: dict[str, float],
    list_size: int = 10,
    seed: int = 0,
    start: dt.datetime | None = None,
    users: np.ndarray | None = None,
    post_events: bool = True,
    on_request: Callable[[int, int], None] | None = None,
) -> ExperimentLog:
    """``days`` simulated days of sessions through ``client``; returns the experiment's log."""
    rng = np.random.default_rng([seed, 11])
    start = start or world.end
    users = np.arange(world.n_users) if users is None else np.asarray(users, dtype=np.int64)
    names = list(weights)
    simulated: dict[int, SimulatedUser] = {}
    shown = {name: np.zeros(world.n_items, dtype=bool) for name in names}
    latency: dict[str, list[float]] = {name: [] for name in names}
    versions: dict[str, set[str]] = {name: set() for name in names}
    records: list[tuple[int, int, str, int, int, float, int]] = []
    pending: list[dict[str, Any]] = []
    plan = [(day, sessions(world, rng, users, start + dt.timedelta(days=day)))
            for day in range(days)]
    total, done = sum(len(s) for _, s in plan), 0
    for day, who in plan:
        day_start = start + dt.timedelta(days=day)
        offsets = np.sort(rng.uniform(0, 86_400, size=who.size))
        for user_id, offset in zip(rng.permutation(who).tolist(), offsets.tolist(), strict=True):
            at = day_start + dt.timedelta(seconds=offset)
            user = simulated.get(user_id)
            if user is None:
                user = simulated[user_id] = SimulatedUser(
                    world, user_id, rng=np.random.default_rng([seed, 12, user_id]))
            t = time.perf_counter()
            resp = client.get(f"/recommendations/{user_id}", params={"k": list_size})
            seconds = time.perf_counter() - t
            if resp.status_code != 200:
                arm = names[assign(user_id, salt, list(weights.values()))]
                latency[arm].append(seconds)
                records.append((day, user_id, arm, 0, 0, 0.0, 1))
            else:
                body = resp.json()
                arm = body.get("arm") or names[0]
                latency.setdefault(arm, []).append(seconds)
                versions.setdefault(arm, set()).add(model_version_of(body) or "unknown")
                reaction = user.react(body, at=at)
                if arm in shown:
                    shown[arm][[i for i in reaction.items if 0 <= i < world.n_items]] = True
                records.append((day, user_id, arm, reaction.n_impressions, len(reaction.clicked),
                                reaction.expected_clicks, 0))
                if post_events:
                    pending.extend(reaction.events)
                    if len(pending) >= EVENT_BATCH:
                        _post(client, pending)
            done += 1
            if on_request is not None:
                on_request(done, total)
    if post_events and pending:
        _post(client, pending)
    rows = pd.DataFrame(records, columns=["day", "user_id", "arm", "impressions", "clicks",
                                          "expected_clicks", "errors"])
    rows["requests"] = 1
    rows = rows.groupby(["day", "user_id", "arm"], as_index=False).sum()
    return ExperimentLog(rows, world.n_items, shown,
                         {a: np.asarray(v) for a, v in latency.items()}, backend="api",
                         versions={a: sorted(v) for a, v in versions.items()})


def _post(client: Any, events: list[dict[str, Any]]) -> None:
    resp = client.post("/events", json={"events": events})
    if resp.status_code != 202:
        raise RuntimeError(f"POST /events answered {resp.status_code}: {resp.text[:200]}")
    events.clear()
