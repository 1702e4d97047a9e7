"""Simulated users: given a served list, which items would this user click (ground truth)?

This is the feedback loop's client side. Locust users and offline replays hand a user the list
the deployed model served; the user clicks by the world's click model (taste, quality,
freshness, position bias, and fatigue from what *this* user was shown recently) and returns
the impression and click events, carrying the response's ``request_id``, model version and
experiment arm, to post to ``POST /events``. The next training run then learns from what the model showed
(exposure bias included).

Light on purpose (numpy and the world only, no pyarrow): the locustfile imports it.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from simulator.fatigue import DEFAULT_MEMORY
from simulator.world import World, epoch_us

logger = logging.getLogger(__name__)

_MAX_ID = 100  # request ids are cut so event ids stay within Event's 128 characters
_MAX_VERSION = 128
_MAX_ARM = 64


class Clock(Protocol):
    def now(self) -> dt.datetime: ...


@dataclass
class Reaction:
    """What a user did with one served list."""

    request_id: str
    items: list[int]  # the list as served, top first
    clicked: list[int]  # item ids clicked, in list order
    events: list[dict[str, Any]]  # Event dicts (JSON-ready): impressions, then clicks
    expected_clicks: float  # sum of the true click probabilities (a low-variance CTR estimate)

    @property
    def n_impressions(self) -> int:
        return len(self.items)


def model_version_of(response: Mapping[str, Any]) -> str | None:
    """The served model's version as one string: ``{"candidates": "3", "ranker": "5"}`` ->
    ``"candidates=3,ranker=5"``; a plain string is kept; None when absent."""
    model = response.get("model")
    if model is None:
        return None
    if isinstance(model, Mapping):
        text = ",".join(f"{k}={v}" for k, v in model.items())
    else:
        text = str(model)
    return text[:_MAX_VERSION] or None


class SimulatedUser:
    """One user of the world, with a bounded memory of what they were shown (fatigue).

    ``rng`` draws the clicks (pass a seeded generator for reproducible runs); ``clock`` gives
    the simulated time of each reaction (default: the end of the simulated run, ``world.end``).
    """

    def __init__(
        self,
        world: World,
        user_id: int,
        rng: np.random.Generator | None = None,
        clock: Clock | None = None,
        memory: int = DEFAULT_MEMORY,
    ) -> None:
        if not 0 <= int(user_id) < world.n_users:
            raise ValueError(f"unknown user_id {user_id} (the world has {world.n_users} users)")
        self.world = world
        self.user_id = int(user_id)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.clock = clock
        self._recent: deque[int] = deque(maxlen=memory)
        self._seen: Counter[int] = Counter()

    def now(self) -> dt.datetime:
        return self.clock.now() if self.clock is not None else self.world.end

    def seen(self, item_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """How often each item is in this user's recent-impression memory."""
        return np.array([self._seen.get(int(i), 0) for i in item_ids], dtype=np.int64)

    def click_probabilities(
        self, item_ids: Sequence[int] | np.ndarray, at: dt.datetime | None = None
    ) -> np.ndarray:
        """True P(click) of each item at its position 0..n-1 now; unknown items get 0."""
        items = np.asarray(item_ids, dtype=np.int64).ravel()
        known = (items >= 0) & (items < self.world.n_items)
        prob = np.zeros(items.shape[0], dtype=np.float64)
        if known.any():
            at_us = epoch_us(at or self.now())
            prob[known] = self.world.click_probability(
                self.user_id, items[known], np.flatnonzero(known), at_us=at_us,
                seen=self.seen(items[known]),
            )
        return prob

    def best_items(self, k: int, at: dt.datetime | None = None) -> np.ndarray:
        """The oracle's list: the ``k`` released items this user is likeliest to click right
        now (freshness and this user's fatigue included), best first."""
        at = at or self.now()
        logits = self.world.user_item_logits(self.user_id, at=at)
        for item, n in self._seen.items():
            logits[item] -= self.world.fatigue * n
        logits = np.where(self.world.available_items(at), logits, -np.inf)
        k = min(int(k), int(np.isfinite(logits).sum()))
        if k < 1:
            return np.empty(0, dtype=np.int64)
        top = np.argpartition(-logits, k - 1)[:k]
        return top[np.argsort(-logits[top], kind="stable")].astype(np.int64)

    def oracle_expected_clicks(self, k: int, at: dt.datetime | None = None) -> float:
        """Expected clicks of the oracle's list of ``k`` (the bound for any served list)."""
        at = at or self.now()
        return float(self.click_probabilities(self.best_items(k, at), at).sum())

    def react(self, response: Mapping[str, Any], at: dt.datetime | None = None) -> Reaction:
        """React to a ``GET /recommendations`` body (``request_id``, ``items``, ``model``,
        ``arm``); the arm that served the list is copied into every event."""
        items = [int(item["item_id"]) for item in response.get("items") or []]
        request_id = str(response.get("request_id") or f"sim-{self.user_id}-{self.rng.integers(1 << 62):x}")
        arm = response.get("arm")
        arm = str(arm)[:_MAX_ARM] if arm else None
        return self.react_to_items(items, request_id, model_version_of(response), at, arm)

    def react_to_items(
        self,
        items: Sequence[int],
        request_id: str,
        model_version: str | None = None,
        at: dt.datetime | None = None,
        arm: str | None = None,
    ) -> Reaction:
        """Examine ``items`` top down, click by ground truth, remember the impressions."""
        at = at or self.now()
        prob = self.click_probabilities(items, at)
        clicked_mask = self.rng.random(prob.shape[0]) < prob
        request_id = request_id[:_MAX_ID]
        ts = at.astimezone(dt.UTC)
        events: list[dict[str, Any]] = []
        for position, item in enumerate(items):
            events.append(
                self._event(request_id, position, item, "impression", ts, model_version, arm))
        clicked = []
        for position in np.flatnonzero(clicked_mask):
            # Reading time: a couple of seconds, longer further down the list (as the lake).
            delay = min(2.0 + self.rng.exponential(6.0) + 1.5 * position, 120.0)
            when = ts + dt.timedelta(seconds=float(delay))
            item = items[int(position)]
            clicked.append(item)
            events.append(
                self._event(request_id, int(position), item, "click", when, model_version, arm))
        for item in items:
            self._remember(int(item))
        return Reaction(
            request_id=request_id,
            items=list(items),
            clicked=clicked,
            events=events,
            expected_clicks=float(prob.sum()),
        )

    def _remember(self, item: int) -> None:
        if len(self._recent) == self._recent.maxlen:
            old = self._recent[0]
            self._seen[old] -= 1
            if self._seen[old] <= 0:
                del self._seen[old]
        self._recent.append(item)
        self._seen[item] += 1

    def _event(
        self,
        request_id: str,
        position: int,
        item: int,
        kind: str,
        ts: dt.datetime,
        model_version: str | None,
        arm: str | None = None,
    ) -> dict[str, Any]:
        return {
            "event_id": f"{request_id}-{position:02d}-{kind}",
            "ts": ts.isoformat(),
            "user_id": self.user_id,
            "item_id": int(item),
            "event_type": kind,
            "request_id": request_id,
            "position": position,
            "model_version": model_version,
            "arm": arm,
        }


@dataclass
class OnlineCtr:
    """Running totals of what simulated users did: realized and expected CTR vs the oracle."""

    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    expected_clicks: float = 0.0
    oracle_expected_clicks: float = 0.0
    by_model: dict[str, list[int]] = field(default_factory=dict)  # version -> [imps, clicks]

    def add(self, reaction: Reaction, oracle_expected: float, model_version: str | None) -> None:
        self.requests += 1
        self.impressions += reaction.n_impressions
        self.clicks += len(reaction.clicked)
        self.expected_clicks += reaction.expected_clicks
        self.oracle_expected_clicks += oracle_expected
        counts = self.by_model.setdefault(model_version or "unknown", [0, 0])
        counts[0] += reaction.n_impressions
        counts[1] += len(reaction.clicked)

    def summary(self) -> dict[str, Any]:
        """Figures: ``ctr`` (realized), ``expected_ctr``, ``oracle_expected_ctr`` and
        ``fraction_of_oracle`` (expected clicks served / expected clicks of the oracle)."""
        imps = self.impressions or 1
        return {
            "requests": self.requests,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "ctr": self.clicks / imps,
            "expected_ctr": self.expected_clicks / imps,
            "oracle_expected_ctr": self.oracle_expected_clicks / imps,
            "fraction_of_oracle": (
                self.expected_clicks / self.oracle_expected_clicks
                if self.oracle_expected_clicks
                else None
            ),
            "by_model": {k: {"impressions": v[0], "clicks": v[1]} for k, v in self.by_model.items()},
        }
