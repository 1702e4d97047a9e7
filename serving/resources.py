"""What a replica serves with, and the background task that loads and refreshes it.

``Resources`` is swapped attribute by attribute (an atomic reference swap in CPython), so
request threads always see a complete ``Recommender``; they never take a lock.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from recstack import featurestore
from recstack.clock import stack_clock
from recstack.schemas import (
    FEATURE_VIEW_FEATURES,
    ITEM_FEATURE_VIEW,
    ITEM_FEATURE_VIEW_V2,
    USER_CATEGORY_FEATURE_VIEW,
    USER_FEATURE_VIEW,
    USER_FEATURE_VIEW_V2,
)
from recstack.settings import ServingSettings, Settings
from serving import artifacts
from serving.breaker import CircuitBreaker
from serving.candidates import AnnCandidateSource
from serving.features import ITEM_KEY, USER_KEY, ItemFeatureTable
from serving.metrics import ServingMetrics
from serving.onlinestore import RedisFeatureReader, RedisUserContextReader
from serving.protocols import (
    CandidateSource,
    EventSink,
    ItemFeatureSource,
    Ranker,
    SeenReader,
    UserFeatureReader,
)
from serving.recommender import Budgets, Recommender, Scorer
from serving.remote import HttpCandidateSource, HttpScorer
from serving.seen import RedisSeenReader

logger = logging.getLogger(__name__)

USER_VIEWS = (USER_FEATURE_VIEW, USER_FEATURE_VIEW_V2)  # keyed by user_id: one Redis hash
ITEM_VIEWS = (ITEM_FEATURE_VIEW, ITEM_FEATURE_VIEW_V2)  # keyed by item_id

Ping = Callable[[], Awaitable[bool]]
Role = Literal["api", "candidates", "ranking"]


def budgets_of(settings: Settings, tuning: ServingSettings) -> Budgets:
    """The per-request deadline and per-stage budgets, in seconds."""
    return Budgets(
        deadline_s=settings.serving.deadline_ms / 1000,
        candidates_s=tuning.candidates_budget_ms / 1000,
        user_features_s=tuning.user_features_budget_ms / 1000,
        ranking_s=tuning.ranking_budget_ms / 1000,
        item_features_min_share=tuning.item_features_min_share,
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
    seen: SeenReader | None = None  # the seen policy's reader (None: policy "none")
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
            budgets=self.budgets, popular=self.popular, scorer=self.scorer, seen=self.seen,
        )

    def missing(self, to_recommend: bool = False) -> list[str]:
        """What this replica lacks to serve: its own state only (models, an item table with
        values, the event stream unless ``to_recommend``). Redis is shared by every replica and
        its outage is served degraded (the breaker), so it is no part of readiness: a Redis
        blip must not take every replica out of the balancer at once."""
        parts: dict[str, object] = {"candidates model": self.candidates}
        if self.role != "candidates" and self.scorer is None:  # ranks here
            parts |= {"ranker model": self.ranker, "user features": self.user_features,
                      "item features": self.item_features}
            counts = self.item_feature_counts()
            if counts is not None and counts[1] == 0:
                parts[f"item features (none in the online store yet: 0 of {counts[0]} items "
                      "have values; waiting for a materialization)"] = None
        if self.role == "api" and not to_recommend:
            parts["event stream"] = self.events
        return [name for name, part in parts.items() if part is None]

    def item_feature_counts(self) -> tuple[int, int] | None:
        """(catalogue items in the in-process table, items with at least one value), or None
        when this replica holds no table (not loaded, or ranked elsewhere)."""
        table = self.item_features
        if table is None or not hasattr(table, "n_with_values"):
            return None
        return len(table), int(table.n_with_values)  # type: ignore[arg-type]

    def item_feature_share(self) -> float:
        """Share of the table's items with values (1.0 without a table: nothing to miss)."""
        counts = self.item_feature_counts()
        if counts is None or counts[0] == 0:
            return 1.0 if counts is None else 0.0
        return counts[1] / counts[0]

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


def registry_file_stamp(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of the Feast registry file, None if it is not a local file.

    Every ``feast apply`` and materialization rewrites the registry file, so an unchanged
    stamp means no materialization finished: one ``stat`` instead of opening the store and
    parsing the registry every poll.
    """
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def user_context_reader(redis_client: Any, project: str, breaker: CircuitBreaker,
                        ranker: Ranker) -> RedisUserContextReader:
    """One-round-trip reader of the user (and user x category) features ``ranker`` reads."""
    wanted = set(ranker.feature_names)
    user_views = [(view, [n for n in FEATURE_VIEW_FEATURES[view] if n in wanted])
                  for view in USER_VIEWS]
    cat_names = [n for n in FEATURE_VIEW_FEATURES[USER_CATEGORY_FEATURE_VIEW]
                 if n in wanted]
    return RedisUserContextReader(
        redis_client, project,
        [(v, names) for v, names in user_views if names],
        (USER_CATEGORY_FEATURE_VIEW, cat_names) if cat_names else None,
        breaker, user_key=USER_KEY,
    )


def item_feature_table(redis_client: Any, project: str, source: AnnCandidateSource,
                       ranker: Ranker, log_level: int = logging.INFO) -> ItemFeatureTable:
    """The item features ``ranker`` reads, for every item ``source`` can return."""
    wanted = set(ranker.feature_names)
    items = source.item_ids
    names: list[str] = []
    blocks = []
    for view in ITEM_VIEWS:
        view_names = [n for n in FEATURE_VIEW_FEATURES[view] if n in wanted]
        if view_names:
            reader = RedisFeatureReader(redis_client, project, view, view_names, ITEM_KEY, None)
            blocks.append(reader.read_many(items.tolist()))
            names += view_names
    values = (np.concatenate(blocks, axis=1) if blocks
              else np.empty((len(items), 0), dtype=np.float32))
    table = ItemFeatureTable(items, values, names=names, categories=source.item_categories)
    logger.log(log_level, "item features loaded: %d items x %d features, %d with values",
               len(items), len(names), table.n_with_values)
    return table


def freeze_heap(collect_first: bool) -> None:
    """Move what was just loaded (models, tables, the libraries' module state) out of the
    cyclic garbage collector's reach.

    After loading MLflow, Feast and the models a replica holds ~300k+ long-lived container
    objects, and each full collection walked them all holding the GIL: ~200 ms on an idle
    core, 0.5-2 s on a loaded one, every few seconds for the first minute and then now and
    then; every request in flight waited (late stages, degraded answers, the p99). Frozen
    objects are never scanned; what requests allocate is still collected. With
    ``collect_first`` (the first time, before the replica is ready) a full collection runs
    first, so load-time garbage is not frozen with the rest.
    """
    if collect_first:
        gc.collect()
    gc.freeze()


class MaterializationWatch:
    """Did a materialization finish since the item table was loaded? A ``stat`` of the Feast
    registry file first; the registry itself is read only when that file changed.

    What ``changed()`` saw is pending until ``commit()`` (the table of it is loaded), so a
    failed load is retried at the next step.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Any = None
        self.registry_path = Path(settings.feast_env()["RECSTACK_FEAST_REGISTRY"])
        self.registry_stamp: tuple[int, int] | None = None
        self.item_stamp: tuple[int, str] | None = None
        self._pending: tuple[Any, Any] | None = None

    def changed(self) -> bool:
        """True when the item view has a materialization the table has not seen."""
        file_stamp = registry_file_stamp(self.registry_path)
        if file_stamp is not None and file_stamp == self.registry_stamp:
            return False

        if self.store is None:
            self.store = featurestore.open_store(self.settings)
        stamp = materialization_stamp(self.store, ITEM_FEATURE_VIEW)
        self._pending = (file_stamp, stamp)
        if stamp == self.item_stamp:
            self.registry_stamp = file_stamp
            return False
        return True

    def commit(self) -> None:
        """The item table was loaded after the last ``changed()``: its stamps are current."""
        if self._pending is not None:
            self.registry_stamp, self.item_stamp = self._pending
            self._pending = None


class Maintainer:
    """Loads the champion models, keeps item features and models fresh.

    Every ``materialization_poll_s`` it checks whether a materialization finished and reloads
    the in-process item table if so; every ``item_refresh_s`` it polls the MLflow alias and
    hot-swaps new versions. A new model is swapped in together with its item table and user
    feature reader (built for the columns that model reads), so no request sees a model with
    another model's features. A step where nothing changed costs one ``stat`` of the Feast
    registry file (and, when due, one alias read): no store, no rebuild. Retries with back-off
    while MLflow, Feast or Redis are unreachable (the app stays alive and not ready).
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
        self.versions: dict[str, str] = {}
        self.models_checked_at = -float("inf")
        self.materialization = MaterializationWatch(settings)
        self.items_loaded = False
        self.heap_frozen = False
        self.rebuilds = 0
        # Set once the first load attempt ended (loaded, or failed with last_error set).
        self.first_pass = asyncio.Event()
        self.breaker = CircuitBreaker(
            self.tuning.breaker_threshold, self.tuning.breaker_cooldown_s, name="redis",
            on_change=metrics.breaker_changed,
        )
        metrics.breaker_state.labels(dependency="redis").set(0)
        if settings.seen.policy != "none" and redis_client is not None:
            resources.seen = RedisSeenReader(redis_client, settings.seen, stack_clock(settings),
                                             self.breaker)

    async def run(self) -> None:
        backoff = 0.5
        while True:
            try:
                await asyncio.to_thread(self.step)
                self.resources.last_error = None
                backoff = 0.5
                self.first_pass.set()
                await asyncio.sleep(self.tuning.materialization_poll_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.resources.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("serving resources not loaded (retrying in %.1fs): %s",
                               backoff, self.resources.last_error)
                self.first_pass.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    def _user_reader(self, ranker: Ranker) -> RedisUserContextReader:
        return user_context_reader(self.redis_client, self.settings.feast.project, self.breaker,
                                   ranker)

    def _item_table(self, source: AnnCandidateSource, ranker: Ranker,
                    log_level: int = logging.INFO) -> ItemFeatureTable:
        return item_feature_table(self.redis_client, self.settings.feast.project, source,
                                  ranker, log_level)

    def readers_for(self, source: AnnCandidateSource, ranker: Ranker
                    ) -> tuple[RedisUserContextReader, ItemFeatureTable]:
        """(user reader, item table) for another model pair's own columns (an experiment arm
        whose feature service differs from the champion's); reads Redis for the item table."""
        return self._user_reader(ranker), self._item_table(source, ranker)

    def step(self) -> None:
        """One pass: new model versions if the alias moved (when due), item features when a
        materialization finished (or the model changed, or they never loaded). Swaps and
        rebuilds the recommender only when something changed."""
        r = self.resources
        loaded = self._new_models()
        ranks_here = self.remote is None and r.role != "candidates"
        materialized = ranks_here and self.materialization.changed()
        if loaded is None and not materialized and (self.items_loaded or not ranks_here):
            if ranks_here and self._item_table_empty():
                self._refill_empty_table(r)
            return  # the steady state: nothing to swap, nothing to rebuild
        if loaded is not None and not ranks_here:
            self._swap_stage_models(loaded)
            return
        if loaded is None and r.candidates is None:
            return  # no model yet (the alias check is not due): nothing to attach features to
        self._swap_with_features(loaded)

    def _new_models(self) -> Any:
        """The champion's models if the alias check is due and the alias moved, else None."""
        loaded = None
        now = time.monotonic()
        if now - self.models_checked_at >= self.settings.serving.item_refresh_s:
            versions = artifacts.champion_versions(self.settings)
            if versions != self.versions:
                loaded = artifacts.load_models(self.settings, versions)
            # Only now: a failed load is retried at the next step (with back-off), not after
            # item_refresh_s (a replica stayed unready for a minute after one MLflow hiccup).
            self.models_checked_at = now
        return loaded

    def _swap_stage_models(self, loaded: Any) -> None:
        """A replica that does not rank here (the candidate service, the split-mode API): the
        candidate source (local, or the candidate service's client) and the ranking client."""
        r = self.resources
        self._freeze_heap()  # before the swap: the first time, the replica is not ready yet
        r.popular = loaded.candidates.popular
        if self.remote is not None:
            r.candidates = HttpCandidateSource(self.remote[0], r.popular)
            r.scorer = HttpScorer(self.remote[1])
        else:
            r.candidates = AnnCandidateSource(loaded.candidates)
        self._swapped(loaded)

    def _swap_with_features(self, loaded: Any) -> None:
        """New models (``loaded``) with their own item table and user reader, or the current
        models with a new item table: everything is built first, then swapped in with one
        rebuild."""
        r = self.resources
        source = (AnnCandidateSource(loaded.candidates) if loaded is not None
                  else r.candidates)
        ranker: Any = loaded.ranker if loaded is not None else r.ranker
        table = self._item_table(source, ranker)  # type: ignore[arg-type]
        user_reader = (self._user_reader(ranker) if loaded is not None or r.user_features is None
                       else r.user_features)
        if loaded is not None:
            r.popular = loaded.candidates.popular
            r.candidates = source
            r.ranker = (DelayedRanker(ranker, self.tuning.inject_ranking_delay_ms)
                        if self.tuning.inject_ranking_delay_ms else ranker)
        self._freeze_heap()  # before the swap: the first time, the replica is not ready yet
        r.user_features = user_reader
        r.item_features = table
        self.items_loaded = True
        self.materialization.commit()
        if loaded is not None:
            self._swapped(loaded)
        else:
            self._rebuild()

    def _item_table_empty(self) -> bool:
        counts = self.resources.item_feature_counts()
        return counts is not None and counts[0] > 0 and counts[1] == 0

    def _refill_empty_table(self, r: Resources) -> None:
        """Read the item table again while it has no values (the replica is not ready): Redis
        may have come back with its data (its append-only file) or been refilled without a new
        materialization stamp. Swapped in only once it has values: one pipelined read of the
        catalogue per poll while not ready, nothing once ready."""
        # Quiet while still empty: /readyz says why, and this runs every poll (5 s).
        table = self._item_table(r.candidates, r.ranker, log_level=logging.DEBUG)  # type: ignore[arg-type]
        if table.n_with_values == 0:
            return
        logger.info("item features back: %d items, %d with values", len(table),
                    table.n_with_values)
        r.item_features = table
        self._rebuild()

    def _freeze_heap(self) -> None:
        """``freeze_heap``, collecting first the first time (before the replica is ready)."""
        freeze_heap(collect_first=not self.heap_frozen)
        self.heap_frozen = True

    def _swapped(self, loaded: Any) -> None:
        self.versions = loaded.versions
        self.metrics.set_models(self.versions)
        self._rebuild()

    def _rebuild(self) -> None:
        self.resources.rebuild()
        self.rebuilds += 1
