"""What a replica serves with, and the background task that loads and refreshes it.

``Resources`` is swapped attribute by attribute (an atomic reference swap in CPython), so
request threads always see a complete ``Recommender``; they never take a lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from recstack.schemas import ITEM_FEATURE_VIEW, ITEM_FEATURES, USER_FEATURE_VIEW, USER_FEATURES
from recstack.settings import ServingSettings, Settings
from serving.breaker import CircuitBreaker
from serving.candidates import AnnCandidateSource
from serving.features import ITEM_KEY, USER_KEY, ItemFeatureTable
from serving.metrics import ServingMetrics
from serving.onlinestore import RedisFeatureReader
from serving.protocols import (
    CandidateSource,
    EventSink,
    ItemFeatureSource,
    Ranker,
    UserFeatureReader,
)
from serving.recommender import Budgets, Recommender, Scorer

logger = logging.getLogger(__name__)

Ping = Callable[[], Awaitable[bool]]
Role = Literal["api", "candidates", "ranking"]


def budgets_of(settings: Settings, tuning: ServingSettings) -> Budgets:
    """The per-request deadline and per-stage budgets, in seconds."""
    return Budgets(
        deadline_s=settings.serving.deadline_ms / 1000,
        candidates_s=tuning.candidates_budget_ms / 1000,
        user_features_s=tuning.user_features_budget_ms / 1000,
        ranking_s=tuning.ranking_budget_ms / 1000,
    )


@dataclass
class Resources:
    """The parts the app composes; fakes can be passed for any of them in tests."""

    candidates: CandidateSource | None = None
    ranker: Ranker | None = None
    user_features: UserFeatureReader | None = None
    item_features: ItemFeatureSource | None = None
    events: EventSink | None = None
    ping: Ping | None = None  # is Redis answering?
    n_candidates: int = 500
    deadline_s: float = 0.1
    budgets: Budgets | None = None
    popular: np.ndarray | None = None  # fallback list when candidates fail (default: the model's)
    scorer: Scorer | None = None  # split mode: the ranking service's client
    role: Role = "api"
    recommender: Recommender | None = field(default=None, init=False)
    last_error: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.rebuild()

    def rebuild(self) -> None:
        """Compose a new Recommender from the current parts (None until candidates exist)."""
        if self.candidates is None:
            self.recommender = None
            return
        self.recommender = Recommender(
            self.candidates, self.ranker, self.user_features, self.item_features,
            n_candidates=self.n_candidates, deadline_s=self.deadline_s,
            budgets=self.budgets, popular=self.popular, scorer=self.scorer,
        )

    def missing(self) -> list[str]:
        """What is not loaded yet (Redis is checked separately, it needs a round trip)."""
        parts: dict[str, object] = {"candidates model": self.candidates}
        if self.role != "candidates" and self.scorer is None:  # ranks here
            parts |= {"ranker model": self.ranker, "user features": self.user_features,
                      "item features": self.item_features}
        if self.role == "api":
            parts["event stream"] = self.events
        return [name for name, part in parts.items() if part is None]

    async def redis_ok(self) -> bool:
        if self.ping is None:
            return False
        try:
            return bool(await self.ping())
        except Exception:
            return False


class DelayedRanker:
    """A ranker made slow on purpose (``inject_ranking_delay_ms``): the chaos knob that shows the
    ``ranker_late`` fallback on a real stack."""

    def __init__(self, ranker: Ranker, delay_ms: float) -> None:
        self.ranker = ranker
        self.delay_s = delay_ms / 1000
        self.version = ranker.version
        self.feature_names = ranker.feature_names

    def score(self, features: np.ndarray) -> np.ndarray:
        time.sleep(self.delay_s)
        return self.ranker.score(features)


def materialization_stamp(store: Any, view: str) -> tuple[int, str] | None:
    """(number of materialization intervals, end of the last) of ``view`` in the Feast registry.

    ``feast materialize`` records every run in the registry, so a change of this stamp means new
    rows reached the online store. Refreshes the store's cached registry first.
    """
    store.refresh_registry()
    intervals = store.get_feature_view(view).materialization_intervals
    if not intervals:
        return None
    return len(intervals), str(intervals[-1][1])


class Maintainer:
    """Loads the champion models, keeps item features and models fresh.

    Every ``materialization_poll_s`` it checks whether a materialization finished (the Feast
    registry's intervals of the item view) and reloads the in-process item table if so; every
    ``item_refresh_s`` it polls the MLflow alias and hot-swaps new versions. Retries with
    back-off while MLflow, Feast or Redis are unreachable (the app stays alive and not ready).
    """

    def __init__(
        self,
        settings: Settings,
        resources: Resources,
        metrics: ServingMetrics,
        redis_client: Any = None,
        tuning: ServingSettings | None = None,
        remote: tuple[Any, Any] | None = None,
    ) -> None:
        self.settings = settings
        # Split-mode API: (candidate service client, ranking service client); no local stages.
        self.remote = remote
        self.tuning = tuning or settings.serving
        self.resources = resources
        self.metrics = metrics
        self.redis_client = redis_client
        self.store: Any = None
        self.versions: dict[str, str] = {}
        self.models_checked_at = -float("inf")
        self.item_stamp: tuple[int, str] | None = None
        self.items_loaded = False
        self.breaker = CircuitBreaker(
            self.tuning.breaker_threshold, self.tuning.breaker_cooldown_s, name="redis",
            on_change=metrics.breaker_changed,
        )
        metrics.breaker_state.labels(dependency="redis").set(0)

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await asyncio.to_thread(self.step)
                self.resources.last_error = None
                backoff = 0.5
                await asyncio.sleep(self.tuning.materialization_poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.resources.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("serving resources not loaded (retrying in %.1fs): %s",
                               backoff, self.resources.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _reader(self, view: str, features: list[str], key: str, breaker: Any) -> RedisFeatureReader:
        return RedisFeatureReader(
            self.redis_client, self.settings.feast.project, view, features, key, breaker
        )

    def step(self) -> None:
        """One pass: new model versions if the alias moved (when due), item features when a
        materialization finished (or the model changed, or they never loaded)."""
        from recstack.featurestore import open_store
        from serving.artifacts import champion_versions, load_models

        r = self.resources
        models_changed = False
        now = time.monotonic()
        if now - self.models_checked_at >= self.settings.serving.item_refresh_s:
            versions = champion_versions(self.settings)
            self.models_checked_at = now
            if versions != self.versions:
                loaded = load_models(self.settings, versions)
                r.popular = loaded.candidates.popular
                if self.remote is not None:
                    from serving.remote import HttpCandidateSource, HttpScorer

                    r.candidates = HttpCandidateSource(self.remote[0], r.popular)
                    r.scorer = HttpScorer(self.remote[1])
                else:
                    r.candidates = AnnCandidateSource(loaded.candidates)
                    r.ranker = loaded.ranker
                    if self.tuning.inject_ranking_delay_ms:
                        r.ranker = DelayedRanker(loaded.ranker, self.tuning.inject_ranking_delay_ms)
                self.versions = versions
                self.metrics.set_models(versions)
                models_changed = True
                r.rebuild()  # items new to this model are NaN until the refresh below
        if self.remote is not None or r.role == "candidates":
            return  # features are read where the ranking runs
        if r.user_features is None:
            r.user_features = self._reader(USER_FEATURE_VIEW, USER_FEATURES, USER_KEY, self.breaker)
        if self.store is None:
            self.store = open_store(self.settings)
        stamp = materialization_stamp(self.store, ITEM_FEATURE_VIEW)
        if models_changed or stamp != self.item_stamp or not self.items_loaded:
            items = r.candidates.item_ids  # type: ignore[union-attr]
            reader = self._reader(ITEM_FEATURE_VIEW, ITEM_FEATURES, ITEM_KEY, None)
            values = reader.read_many(items.tolist())
            r.item_features = ItemFeatureTable(items, values)
            self.item_stamp, self.items_loaded = stamp, True
            found = int(np.isfinite(values).any(axis=1).sum())
            logger.info("item features loaded (materialization %s): %d items, %d with values",
                        stamp, len(items), found)
        r.rebuild()
