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
from typing import Any

from recstack.settings import Settings
from serving.candidates import AnnCandidateSource
from serving.features import FeastUserFeatures, fetch_item_features
from serving.metrics import ServingMetrics
from serving.protocols import (
    CandidateSource, EventSink, ItemFeatureSource, Ranker, UserFeatureReader,
)
from serving.recommender import Recommender

logger = logging.getLogger(__name__)

Ping = Callable[[], Awaitable[bool]]


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
        )

    def missing(self) -> list[str]:
        """What is not loaded yet (Redis is checked separately, it needs a round trip)."""
        parts = {
            "candidates model": self.candidates, "ranker model": self.ranker,
            "user features": self.user_features, "item features": self.item_features,
            "event stream": self.events,
        }
        return [name for name, part in parts.items() if part is None]

    async def redis_ok(self) -> bool:
        if self.ping is None:
            return False
        try:
            return bool(await self.ping())
        except Exception:
            return False


class Maintainer:
    """Loads the champion models, opens Feast, keeps item features and models fresh.

    Retries with back-off while MLflow or Feast are unreachable (the app stays alive and not
    ready); afterwards polls the alias every ``item_refresh_s`` and hot-swaps new versions.
    """

    def __init__(self, settings: Settings, resources: Resources, metrics: ServingMetrics) -> None:
        self.settings = settings
        self.resources = resources
        self.metrics = metrics
        self.store: Any = None
        self.versions: dict[str, str] = {}
        self.items_loaded_at = 0.0

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await asyncio.to_thread(self.step)
                self.resources.last_error = None
                backoff = 0.5
                await asyncio.sleep(self.settings.serving.item_refresh_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.resources.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("serving resources not loaded (retrying in %.1fs): %s",
                               backoff, self.resources.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def step(self) -> None:
        """One pass: new model versions if the alias moved, Feast, item features when due."""
        from serving.artifacts import champion_versions, load_models
        from recstack.featurestore import open_store

        r = self.resources
        versions = champion_versions(self.settings)
        models_changed = versions != self.versions
        if models_changed:
            loaded = load_models(self.settings, versions)
            r.candidates, r.ranker = AnnCandidateSource(loaded.candidates), loaded.ranker
            self.versions = versions
            self.metrics.set_models(versions)
            self.items_loaded_at = 0.0  # the new model's items need features now
            r.rebuild()  # item features of items new to this model are NaN until the refresh
        if self.store is None:
            self.store = open_store(self.settings)
            _short_redis_timeouts(self.store, self.settings.redis.socket_timeout_s)
            r.user_features = FeastUserFeatures(self.store)
        due = time.monotonic() - self.items_loaded_at >= self.settings.serving.item_refresh_s
        if models_changed or due or r.item_features is None:
            # The store caches its registry; a replica started before `feast apply` (or a new
            # view version) would otherwise read a stale, possibly empty, registry for minutes.
            self.store.refresh_registry()
            items = r.candidates.item_ids  # type: ignore[union-attr]
            r.item_features = fetch_item_features(self.store, items)
            self.items_loaded_at = time.monotonic()
        r.rebuild()


def _short_redis_timeouts(store: Any, timeout_s: float) -> None:
    """Make Feast's Redis client fail fast: short socket timeouts, no retry back-off.

    redis-py 7 retries a refused connection 3 times with 1-10 s exponential back-off by
    default, so a dead Redis held each request for seconds (measured: > 5 s). Feast offers no
    setting for either, so we set the timeouts in its connection string and the retry policy on
    its client (private Feast API, guarded: if it moves, the breaker still limits the damage).
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    try:
        cfg = store.config.online_store
        if getattr(cfg, "type", "redis") != "redis":
            return
        if "socket_timeout" not in cfg.connection_string:
            # Connecting may take a little longer than a command on a busy machine.
            cfg.connection_string += (
                f",socket_timeout={timeout_s},socket_connect_timeout={max(timeout_s, 0.2)}"
            )
        client = store._get_provider().online_store._get_client(cfg)
        client.set_retry(Retry(NoBackoff(), 0))
    except Exception:
        logger.warning("could not shorten Feast's Redis timeouts", exc_info=True)
