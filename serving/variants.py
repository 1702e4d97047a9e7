"""Loads the model pair of each non-champion arm, the way the Maintainer loads the champion.

An arm names its models by alias (``challenger``) or by ranker version (``7``; its candidates
model is the version registered by the same MLflow run). Every ``ab.poll_s`` the names are
resolved again and a moved alias is hot-swapped; the arm's Recommender is rebuilt whenever the
replica's feature readers change (a new item table after a materialization). Until an arm is
loaded its users are served by the control (the response still names their assigned arm).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mlflow import MlflowClient

from recstack.settings import Settings
from serving import artifacts
from serving.arms import Arm, Experiment
from serving.candidates import AnnCandidateSource
from serving.recommender import Recommender
from serving.resources import Resources

logger = logging.getLogger(__name__)


def resolve_versions(client: Any, settings: Settings, spec: str) -> dict[str, str]:
    """``{"candidates": v, "ranker": v}`` named by ``spec``: an alias, ``ranker@alias``, a
    ranker version number or ``ranker@N``."""
    m = settings.mlflow
    spec = spec.split("@", 1)[1] if spec.startswith(f"{m.ranker_model}@") else spec
    if spec.isdigit():
        ranker = client.get_model_version(m.ranker_model, spec)
        found = [v for v in client.search_model_versions(f"name='{m.candidates_model}'")
                 if v.run_id == ranker.run_id]
        if not found:
            raise LookupError(f"no {m.candidates_model} version from the run of ranker v{spec}")
        return {"candidates": str(found[0].version), "ranker": str(ranker.version)}
    return artifacts.alias_pair(settings, spec, client)  # one alias read: never a half-moved pair


def compose(arm_parts: tuple[Any, Any], resources: Resources,
            readers: tuple[Any, Any] | None = None) -> Recommender:
    """A Recommender of the arm's (candidate source, ranker) with the replica's budgets and list
    sizes, over ``readers`` (user reader, item table) or else the replica's own readers."""
    candidates, ranker = arm_parts
    user_features, item_features = readers or (resources.user_features, resources.item_features)
    return Recommender(
        candidates, ranker, user_features, item_features,
        n_candidates=resources.n_candidates, budgets=resources.budgets,
        popular=getattr(candidates, "popular", None), seen=resources.seen,
    )


class VariantLoader:
    """Keeps the non-main arms of ``experiment`` loaded (``run`` is the background task).

    ``readers(source, ranker) -> (user reader, item table)`` builds feature readers for the
    arm's own ranker (its feature service may differ from the champion's); without it the arm
    reads the replica's readers, and features they lack are scored as missing.
    """

    def __init__(self, settings: Settings, experiment: Experiment, resources: Resources,
                 on_loaded: Any = None, readers: Any = None) -> None:
        self.settings = settings
        self.readers = readers
        self.experiment = experiment
        self.resources = resources
        self.on_loaded = on_loaded
        self.parts: dict[str, tuple[Any, Any]] = {}
        self.built_with: dict[str, tuple[int, int, int]] = {}
        self.checked_at = -float("inf")
        self.last_error: str | None = None

    def arms(self) -> list[Arm]:
        e = self.experiment
        return [a for a in e.arms + ([e.shadow_arm] if e.shadow_arm else []) if not a.main]

    async def run(self) -> None:
        backoff = 1.0
        period = min(self.settings.ab.poll_s, self.settings.serving.materialization_poll_s)
        while True:
            try:
                await asyncio.to_thread(self.step)
                self.last_error, backoff = None, 1.0
                await asyncio.sleep(period)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("experiment arms not loaded (retrying in %.0fs): %s", backoff,
                               self.last_error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)

    def step(self, client: Any = None, load: Any = None) -> None:
        """Resolve (when due) and load each arm's versions; rebuild recommenders whose feature
        readers changed. ``client``/``load`` are injectable for tests."""
        now = time.monotonic()
        if now - self.checked_at >= self.settings.ab.poll_s:
            if client is None:
                uri = self.settings.mlflow.uri
                client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            load = load or artifacts.load_models
            for arm in self.arms():
                versions = resolve_versions(client, self.settings, arm.models)
                if versions != arm.versions or arm.name not in self.parts:
                    loaded = load(self.settings, versions)
                    self.parts[arm.name] = (AnnCandidateSource(loaded.candidates), loaded.ranker)
                    arm.versions = versions
                    self.built_with.pop(arm.name, None)
                    logger.info("arm %s (%s) loaded: %s", arm.name, arm.models, versions)
            self.checked_at = now
        self.rebuild()

    def rebuild(self) -> None:
        r = self.resources
        key = (id(r.user_features), id(r.item_features), id(r.budgets))
        for arm in self.arms():
            parts = self.parts.get(arm.name)
            if parts is None or r.item_features is None or self.built_with.get(arm.name) == key:
                continue
            own = self.readers(*parts) if self.readers is not None else None
            arm.recommender = compose(parts, r, own)
            self.built_with[arm.name] = key
            if self.on_loaded is not None:
                self.on_loaded(arm)
