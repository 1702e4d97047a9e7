"""The drift/freshness monitor: one ``check()`` reads what serving did since the last check,
compares it with the champion's references, exports gauges and, when drift persists, starts a
retraining (at most once per cool-down), logging the cause.

In:  the event stream (CTR, coverage, popularity, event integrity), the online store (feature
     values of the active users and the items they were shown), a few sampled API answers
     (scores, candidate sources), MLflow (the champion and its ``feature_reference.json``),
     the pipeline's manifest (freshness, failures).
Out: Prometheus gauges (see :class:`MonitorMetrics`), log lines, ``recstack retrain`` runs.

:class:`DriftChecks` measures (one part per source); :class:`DriftMonitor` turns its signals
into alerts and retrainings (run by :class:`monitoring.retraining.RetrainRunner`) and follows
a CTR drop until it recovers (:class:`monitoring.episodes.EpisodeTracker`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from monitoring import events as ev
from monitoring import references as refs
from monitoring.ctr import CtrCheck
from monitoring.episodes import EpisodeTracker
from monitoring.features import online_features, skew
from monitoring.results import CheckResult, MonitorMetrics
from monitoring.retraining import Retrainer, RetrainRunner, retrain_subprocess
from monitoring.stats import psi_against_reference, psi_samples, share_psi
from monitoring.trigger import AlertState, Cooldown, Signal, cause_of
from recstack.lake import read_users
from recstack.schemas import RETRAIN_HOLD_FILE
from recstack.settings import MonitorSettings, Settings

logger = logging.getLogger(__name__)

# Event-integrity thresholds: a healthy client writes a model version on every event and a
# position 0 in every served list; a few percent of either missing is an upstream bug.
MAX_NULL_MODEL_VERSION = 0.05
MAX_REQUESTS_WITHOUT_TOP = 0.05
POPULAR_HEAD = 50
MAX_SKEW = 0.01  # share of sampled online values that may differ from offline
HOLD_FILE = RETRAIN_HOLD_FILE  # under settings.run_dir


RECENT_USERS = 5000  # user ids per impression the feature check samples from

class DriftChecks:
    """What one check measures, each source in its own part (a failing part is counted and
    logged, the others still run): the champion's references, the event stream (CTR, event
    integrity, catalogue coverage), the online store (feature PSI, skew), sampled API answers
    (score and source mix) and the pipeline's manifest. Figures go to the gauges and the
    check's ``values``, verdicts to its ``signals``.

    ``on_new_champion`` is called when the champion changes (the monitor resets its alerts).
    """

    def __init__(self, settings: Settings, metrics: MonitorMetrics, *, redis: Any,
                 store: Any | None, sample_api: Callable[[list[int]], list[dict[str, Any]]] | None,
                 reference_loader: Callable[[], refs.ChampionReference | None] | None,
                 ctr_check: CtrCheck, on_new_champion: Callable[[], None]) -> None:
        self.settings = settings
        self.cfg: MonitorSettings = settings.monitor
        self.metrics = metrics
        self.redis = redis
        self.store = store
        self.sample_api = sample_api
        self.load_reference = reference_loader or (
            lambda: refs.load_champion(settings, known=self.reference))
        self.on_new_champion = on_new_champion
        self.ctr_check = ctr_check
        self._segments: dict[int, str] | None = None  # user id -> segment (lake users.parquet)
        self.last_id = "0-0"
        self.reference: refs.ChampionReference | None = None
        self.output_reference: dict[str, Any] | None = None  # scores and sources at burn-in
        self.last_materialized_until: Any = None
        # Users and items seen in recent checks: the population the feature checks sample.
        self.recent_users: deque[int] = deque(maxlen=RECENT_USERS)

    def run(self, result: CheckResult, check_no: int) -> None:
        """Every part of check number ``check_no`` (the count of earlier checks: it seeds the
        samples and paces the segment refresh), into ``result``."""
        self._part("reference", self._reference)
        batch = self._part("events", lambda: self._events(check_no)) or ev.EventBatch()
        self._part("ctr", lambda: self.ctr_check.measure(batch, result))
        self._part("integrity", lambda: self._integrity(batch, result))
        # Read once per check: the coverage and the item feature sample both need it.
        catalogue = self._part("catalogue", lambda: refs.catalogue_ids(self.settings))
        catalogue = catalogue if catalogue is not None else np.zeros(0, dtype=np.int64)
        self._part("mix", lambda: self._coverage(batch, catalogue, result))
        self._part("features", lambda: self._features(batch, catalogue, result, check_no))
        self._part("outputs", lambda: self._outputs(batch, result, check_no))
        self._part("pipeline", self._pipeline)
        self._part("skew", lambda: self._skew(result, check_no))

    def _part(self, name: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - one failing source must not stop the rest
            self.metrics.errors.labels(part=name).inc()
            logger.warning("monitor: %s check failed: %s: %s", name, type(exc).__name__, exc)
            return None

    def _reference(self) -> None:
        ref = self.load_reference()
        if ref is None:
            return
        if self.reference is None or ref.key != self.reference.key:
            logger.info("monitor: champion %s (was %s)", ref.key,
                        self.reference.key if self.reference else None)
            self.output_reference = None
            self.on_new_champion()
            with warnings.catch_warnings():  # feast sets PROMETHEUS_MULTIPROC_DIR on import
                warnings.simplefilter("ignore", UserWarning)
                self.metrics.model_created.clear()
            for kind, version in ref.versions.items():
                self.metrics.model_created.labels(
                    model=kind, alias=self.settings.mlflow.serving_alias,
                    version=version).set(ref.created_s[kind])
        self.reference = ref

    def _events(self, check_no: int) -> ev.EventBatch:
        rows, self.last_id = ev.read_stream(self.redis, self.last_id)
        segment_of = None
        if self.cfg.ctr_segment_by:
            if self._segments is None or check_no % 24 == 0:  # new users join
                self._segments = user_segments(self.settings, self.cfg.ctr_segment_by)
            segment_of = self._segments.get
        return ev.EventBatch.from_events(rows, segment_of)

    def _integrity(self, batch: ev.EventBatch, result: CheckResult) -> None:
        if not batch.events:
            return
        null_share = batch.null_model_version / batch.events
        no_top = batch.requests_without_top / batch.requests if batch.requests else float("nan")
        self.metrics.null_version.set(null_share)
        self.metrics.no_top.set(no_top)
        result.values.update(null_model_version=null_share, requests_without_top=no_top)
        result.signals += [Signal("events_null_model_version", null_share, MAX_NULL_MODEL_VERSION),
                           Signal("events_without_top_position", no_top, MAX_REQUESTS_WITHOUT_TOP)]

    def _coverage(self, batch: ev.EventBatch, catalogue: np.ndarray, result: CheckResult) -> None:
        if not batch.items:
            return
        cov = ev.coverage(batch.items, len(catalogue))
        pop = ev.popularity_share(batch.items, refs.popular_items(self.settings), POPULAR_HEAD)
        self.metrics.coverage.set(cov)
        self.metrics.popularity.set(pop)
        result.values.update(coverage=cov, popularity_share=pop)

    def _features(self, batch: ev.EventBatch, catalogue: np.ndarray, result: CheckResult,
                  check_no: int) -> None:
        if self.store is None or self.reference is None or not self.reference.features:
            return
        self.recent_users.extend(batch.user_impressions)
        users, items = feature_sample(np.random.default_rng(check_no), self.recent_users,
                                     catalogue, self.cfg.sample_users, self.cfg.sample_items)
        if len(users) + len(items) == 0:
            return

        values = online_features(self.store, users, items)
        for name, x in values.items():
            ref = self.reference.features.get(name)
            if ref is None or len(x) < self.cfg.psi_min_rows:
                continue
            value = psi_against_reference(ref, x)
            self.metrics.psi.labels(feature=name).set(value)
            result.values[f"psi_{name}"] = value
            result.signals.append(Signal(f"psi_{name}", value, self.cfg.psi_threshold))

    def _outputs(self, batch: ev.EventBatch, result: CheckResult, check_no: int) -> None:
        if self.sample_api is None or not batch.users:
            return
        rng = np.random.default_rng(10_000 + check_no)
        users = [int(u) for u in rng.permutation(sorted(batch.users))[:20]]
        answers = self.sample_api(users)
        scores = [float(i["score"]) for a in answers for i in a.get("items", [])]
        sources = Counter(i.get("source", "unknown") for a in answers for i in a.get("items", []))
        total = sum(sources.values()) or 1
        for s, n in sources.items():
            self.metrics.source_share.labels(source=s).set(n / total)
        if self.output_reference is None or len(self.output_reference["scores"]) < 400:
            # The champion's first few hundred sampled scores are its output reference.
            ref = self.output_reference or {"scores": [], "sources": Counter()}
            ref["scores"] += scores
            ref["sources"].update(sources)
            self.output_reference = ref
            return
        if scores:
            sp = psi_samples(self.output_reference["scores"], scores)
            self.metrics.score_psi.set(sp)
            result.values["score_psi"] = sp
        mix = share_psi(self.output_reference["sources"], dict(sources))
        self.metrics.source_psi.set(mix)
        result.values["source_psi"] = mix

    def _pipeline(self) -> None:
        state = refs.pipeline_state(self.settings)
        self.metrics.pipeline_failed.set(1 if state.last_run_failed else 0)
        if state.materialized_until is not None:
            self.metrics.materialized_until.set(state.materialized_until.timestamp())
            if state.materialized_until != self.last_materialized_until:
                self.last_materialized_until = state.materialized_until
                self.metrics.materialized.set(state.manifest_mtime or time.time())

    def _skew(self, result: CheckResult, check_no: int) -> None:
        """Online values of sampled recent users vs the offline rows as of the end of the last
        materialization (what the online store should hold)."""
        if self.store is None or self.last_materialized_until is None or not self.recent_users:
            return
        rng = np.random.default_rng(20_000 + check_no)
        users = sorted({int(u) for u in rng.choice(np.array(self.recent_users), 50)})
        ratio, n = self.skew_check(users, self.last_materialized_until)
        result.values["skew_mismatch_ratio"] = ratio
        if n:
            result.signals.append(Signal("skew_mismatch_ratio", ratio, MAX_SKEW))

    def skew_check(self, user_ids: list[int], as_of: Any) -> tuple[float, int]:
        ratio, n = skew(self.settings, self.store, user_ids, as_of)
        self.metrics.skew.set(ratio)
        self.metrics.skew_n.set(n)
        return ratio, n


def feature_sample(rng: np.random.Generator, recent_users: deque[int], catalogue: np.ndarray,
                   n_users: int, n_items: int) -> tuple[list[int], list[int]]:
    """(users, items) whose online feature values a check compares with the reference.

    Users per impression, as in the reference (every impression of the champion's holdout
    day): an active user weighs more; sampled with replacement from the recent impressions.
    Items uniformly from the catalogue, as the reference has each item once: weighted by
    impressions, item features would move whenever the serving policy shows other items (a
    new champion), drift or not.
    """
    users = [int(u) for u in rng.choice(np.array(recent_users, dtype=np.int64),
                                        n_users)] if recent_users else []
    items = [int(i) for i in rng.choice(catalogue, min(n_items, len(catalogue)),
                                        replace=False)] if len(catalogue) else []
    return users, items


T = TypeVar("T")


class _HeldBy(Generic[T]):
    """An attribute of the monitor that one of its parts holds, read and written through: the
    monitor keeps every attribute it had before the parts were split out (experiments set
    ``last_id``, tests read ``episode``)."""

    def __init__(self, part: str, name: str = "") -> None:
        self.part, self.name = part, name

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = self.name or name

    def __get__(self, monitor: Any, owner: type | None = None) -> T:
        if monitor is None:
            return self  # type: ignore[return-value]  # on the class: the descriptor
        return getattr(getattr(monitor, self.part), self.name)

    def __set__(self, monitor: Any, value: T) -> None:
        setattr(getattr(monitor, self.part), self.name, value)


class DriftMonitor:
    """Checks drift on demand (``check``); ``run_forever`` calls it every ``interval_s``.

    Every dependency is injectable so experiments can drive it on simulated time: ``clock``
    (seconds, for the cool-down), ``retrainer`` (default: the subprocess), ``sample_api``
    (``users -> list of answers``), ``store`` (Feast), ``redis`` (the event stream).
    """

    redis: _HeldBy[Any] = _HeldBy("checks")
    store: _HeldBy[Any | None] = _HeldBy("checks")
    sample_api: _HeldBy[Callable[[list[int]], list[dict[str, Any]]] | None] = _HeldBy("checks")
    load_reference: _HeldBy[Callable[[], refs.ChampionReference | None]] = _HeldBy("checks")
    ctr: _HeldBy[ev.CtrTracker] = _HeldBy("ctr_check")
    segment_ctr: _HeldBy[ev.SegmentCtr] = _HeldBy("ctr_check")
    last_id: _HeldBy[str] = _HeldBy("checks")
    reference: _HeldBy[refs.ChampionReference | None] = _HeldBy("checks")
    output_reference: _HeldBy[dict[str, Any] | None] = _HeldBy("checks")
    last_materialized_until: _HeldBy[Any] = _HeldBy("checks")
    recent_users: _HeldBy[deque[int]] = _HeldBy("checks")
    retrainer: _HeldBy[Retrainer] = _HeldBy("runner")
    background_retrain: _HeldBy[bool] = _HeldBy("runner", "background")
    retrain_thread: _HeldBy[threading.Thread | None] = _HeldBy("runner", "thread")
    # A CTR drop being worked on (see EpisodeTracker), None: none.
    episode: _HeldBy[dict[str, Any] | None] = _HeldBy("episodes")

    def __init__(self, settings: Settings, *, redis: Any, store: Any | None = None,
                 sample_api: Callable[[list[int]], list[dict[str, Any]]] | None = None,
                 retrainer: Retrainer | None = None, clock: Callable[[], float] = time.time,
                 background_retrain: bool = True, metrics: MonitorMetrics | None = None,
                 reference_loader: Callable[[], refs.ChampionReference | None] | None = None,
                 ) -> None:
        self.settings = settings
        self.cfg: MonitorSettings = settings.monitor
        self.clock = clock
        self.metrics = metrics or MonitorMetrics()
        self.alerts = AlertState(self.cfg.consecutive)
        self.cooldown = Cooldown(self.cfg.cooldown_s)
        # The CTR trackers: fed by the checks, followed by the episodes.
        self.ctr_check = CtrCheck(self.cfg, self.metrics)
        self.checks = DriftChecks(settings, self.metrics, redis=redis, store=store,
                                  sample_api=sample_api, reference_loader=reference_loader,
                                  ctr_check=self.ctr_check, on_new_champion=self.alerts.reset)
        self.runner = RetrainRunner(retrainer or retrain_subprocess(self.cfg.retrain_timeout_s),
                                    self.metrics, background=background_retrain)
        self.episodes = EpisodeTracker(self.cfg, self.ctr_check)
        self.history: list[CheckResult] = []

    # -- one check ------------------------------------------------------------------------
    def check(self) -> CheckResult:
        result = CheckResult(at=self.clock())
        self.metrics.checks.inc()
        self.metrics.last_check.set(time.time())
        self.checks.run(result, len(self.history))
        alerting = self.alerts.update(result.signals)
        result.alerting = [s.name for s in alerting]
        if not self.data_problems(result) and any(
                s.name.startswith("events_") for s in result.signals):
            self.set_hold(None)  # the events are healthy again
        for s in result.signals:
            self.metrics.alert.labels(signal=s.name).set(1 if s.name in result.alerting else 0)
        if alerting:
            self._maybe_retrain(alerting, result)
        if self.episode is not None and result.retrain_cause is None:
            self._follow_up(result)
        self.history.append(result)
        return result

    # -- retraining -----------------------------------------------------------------------
    def data_problems(self, result: CheckResult) -> list[str]:
        """Integrity signals alerting now: retraining on such data would bake the bug in."""
        return [n for n in result.alerting if n.startswith("events_")]

    def _maybe_retrain(self, alerting: list[Signal], result: CheckResult) -> None:
        allowed = self._retrain_signals(alerting, result)
        if not allowed:
            return
        cause = cause_of(allowed)
        if not self.cfg.retrain:
            logger.warning("monitor: drift (%s); retraining disabled", cause)
            return
        if self.runner.busy:
            return
        now = self.clock()
        if not self.cooldown.fire(now):
            logger.info("monitor: drift (%s); cool-down, %.0fs left", cause,
                        self.cooldown.remaining(now))
            return
        self.episodes.on_retrain(allowed, now)
        self.metrics.retrains.labels(cause=",".join(s.name for s in allowed)).inc()
        result.retrain_cause = cause
        logger.warning("monitor: drift detected (%s): retraining", cause)
        self.runner.start(cause)

    def _retrain_signals(self, alerting: list[Signal], result: CheckResult) -> list[Signal]:
        """The alerting signals that may start a retraining (``monitor.retrain_signals``);
        none while the events are broken (the retraining is held: the hold file names why)."""
        cause = cause_of(alerting)
        if self.data_problems(result):
            result.held_cause = cause
            self.set_hold(cause)
            logger.error("monitor: event integrity alert (%s): retraining held until the "
                         "upstream data is fixed", cause)
            return []
        allowed = [s for s in alerting
                   if any(s.name.startswith(p) for p in self.cfg.retrain_signals)]
        if not allowed:
            logger.warning("monitor: drift alert (%s); none of its signals starts a retraining "
                           "(monitor.retrain_signals)", cause)
        return allowed

    def _follow_up(self, result: CheckResult) -> None:
        """During a CTR episode: done once the CTR recovered; else retrain again when the
        episode is due (:class:`EpisodeTracker`), the cool-down allows, no retraining runs and
        none is held."""
        level = self.episodes.check_recovery(result)
        if level is None:
            return  # the window is not full yet, or the CTR recovered (the episode ended)
        now = self.clock()
        if (not self.episodes.due_for_retrain(now) or self.runner.busy
                or not self.cooldown.ready(now) or not self.cfg.retrain
                or self.hold_path.exists()):
            return
        self.cooldown.fire(now)
        cause = self.episodes.retrain_again(level, now)
        result.retrain_cause = cause
        self.metrics.retrains.labels(cause="ctr_not_recovered").inc()
        logger.warning("monitor: %s: retraining again", cause)
        self.runner.start(cause)

    @property
    def hold_path(self) -> Path:
        """While this file exists, retraining on the lake would learn an upstream bug: the
        monitor does not retrain, and a trainer should not either (it names the cause)."""
        return self.settings.run_dir / HOLD_FILE

    def set_hold(self, cause: str | None) -> None:
        if cause is None:
            if self.hold_path.exists():
                logger.warning("monitor: event integrity restored; retraining hold lifted")
                self.hold_path.unlink()
            return
        self.hold_path.parent.mkdir(parents=True, exist_ok=True)
        self.hold_path.write_text(json.dumps({"cause": cause, "since": time.time()}) + "\n")

    # -- skew ----------------------------------------------------------------------------
    def skew_check(self, user_ids: list[int], as_of: Any) -> tuple[float, int]:
        return self.checks.skew_check(user_ids, as_of)


def user_segments(settings: Settings, column: str) -> dict[int, str]:
    """user id -> the user's ``column`` (country, device) from the lake's user profile; empty
    when the lake has none (then no segment is tested)."""
    users = read_users(settings.lake_dir)
    if column not in users.column_names or users.num_rows == 0:
        return {}
    ids, values = users["user_id"].to_pylist(), users[column].to_pylist()
    return {int(u): str(v) for u, v in zip(ids, values) if v is not None}
