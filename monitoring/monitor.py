"""The drift/freshness monitor: one ``check()`` reads what serving did since the last check,
compares it with the champion's references, exports gauges and, when drift persists, starts a
retraining (at most once per cool-down), logging the cause.

In:  the event stream (CTR, coverage, popularity, event integrity), the online store (feature
     values of the active users and the items they were shown), a few sampled API answers
     (scores, candidate sources), MLflow (the champion and its ``feature_reference.json``),
     the pipeline's manifest (freshness, failures).
Out: Prometheus gauges (see :class:`MonitorMetrics`), log lines, ``recstack retrain`` runs.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client import Counter as PCounter

from monitoring import events as ev
from monitoring import references as refs
from monitoring.stats import psi_against_reference, psi_samples, share_psi
from monitoring.trigger import AlertState, Cooldown, Signal, cause_of
from recstack.schemas import RETRAIN_HOLD_FILE
from recstack.settings import REPO_ROOT, MonitorSettings, Settings

logger = logging.getLogger(__name__)

# Event-integrity thresholds: a healthy client writes a model version on every event and a
# position 0 in every served list; a few percent of either missing is an upstream bug.
MAX_NULL_MODEL_VERSION = 0.05
MAX_REQUESTS_WITHOUT_TOP = 0.05
POPULAR_HEAD = 50
MAX_SKEW = 0.01  # share of sampled online values that may differ from offline
HOLD_FILE = RETRAIN_HOLD_FILE  # under settings.run_dir


class MonitorMetrics:
    """The monitor's gauges, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        g = lambda name, doc, labels=(): Gauge(name, doc, list(labels), registry=r)  # noqa: E731
        self.psi = g("recstack_drift_psi", "PSI of a served feature vs the champion's training "
                     "reference.", ["feature"])
        self.score_psi = g("recstack_drift_score_psi", "PSI of served scores vs the champion's "
                           "first sampled answers.")
        self.source_psi = g("recstack_drift_source_psi", "PSI of the candidate-source mix vs the "
                            "champion's first sampled answers.")
        self.source_share = g("recstack_served_source_share", "Share of served items by "
                              "candidate source.", ["source"])
        self.coverage = g("recstack_catalogue_coverage_ratio", "Share of the catalogue shown "
                          "since the last check.")
        self.popularity = g("recstack_popularity_share_ratio", "Share of impressions on the 50 "
                            "most popular items.")
        self.ctr = g("recstack_online_ctr", "Online CTR of the champion over the last window.")
        self.ctr_baseline = g("recstack_online_ctr_baseline", "The champion's burn-in CTR.")
        self.ctr_ratio = g("recstack_online_ctr_ratio", "Window CTR / baseline CTR.")
        self.ctr_z = g("recstack_online_ctr_z", "Standard errors of the window CTR vs baseline.")
        self.segment_ctr_ratio = g("recstack_online_ctr_segment_ratio", "Window CTR / baseline "
                                   "CTR of a user segment (monitor.ctr_segment_by).", ["segment"])
        self.window_imps = g("recstack_online_impressions_window", "Impressions in the window.")
        self.null_version = g("recstack_events_null_model_version_ratio", "Events without a "
                              "model version since the last check.")
        self.no_top = g("recstack_events_requests_without_top_ratio", "Served lists whose "
                        "impressions lack position 0 (e.g. 1-based positions).")
        self.alert = g("recstack_drift_alert", "1 while a drift signal alerts.", ["signal"])
        self.retrains = PCounter("recstack_drift_retrains", "Retrainings started by drift.",
                                 ["cause"], registry=r)
        self.retrain_running = g("recstack_drift_retrain_running", "1 while a retrain runs.")
        self.retrain_exit = g("recstack_drift_retrain_last_exit_code", "Exit code of the last "
                              "drift-triggered retraining.")
        self.model_created = g("recstack_model_created_timestamp_seconds", "Registration time "
                               "of the serving models.", ["model", "alias", "version"])
        self.materialized = g("recstack_feature_last_materialization_timestamp_seconds",
                              "Wall time the online store last received a materialization.")
        self.materialized_until = g("recstack_feature_materialized_until_timestamp_seconds",
                                    "Data time the online store is materialized up to.")
        self.pipeline_failed = g("recstack_pipeline_last_run_failed", "1 if the pipeline's last "
                                 "run was rejected by validation.")
        self.skew = g("recstack_skew_mismatch_ratio", "Share of sampled online feature values "
                      "that differ from the offline point-in-time values.")
        self.skew_n = g("recstack_skew_checked_values", "Values compared by the skew check.")
        self.checks = PCounter("recstack_monitor_checks", "Monitor checks run.", registry=r)
        self.errors = PCounter("recstack_monitor_check_errors", "Parts of a check that failed.",
                               ["part"], registry=r)
        self.last_check = g("recstack_monitor_last_check_timestamp_seconds", "Wall time of the "
                            "last check.")

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class CheckResult:
    """One check's figures and verdicts (also what experiments record per step)."""

    at: float
    values: dict[str, float] = field(default_factory=dict)
    signals: list[Signal] = field(default_factory=list)
    alerting: list[str] = field(default_factory=list)
    retrain_cause: str | None = None
    held_cause: str | None = None


Retrainer = Callable[[str], int]


def retrain_subprocess(timeout_s: float) -> Retrainer:
    """``python -m recstack.cli retrain`` in a child process; returns its exit code."""
    def run(cause: str) -> int:
        cmd = [sys.executable, "-m", "recstack.cli", "retrain"]
        logger.warning("retraining (%s): %s", cause, " ".join(cmd))
        try:
            proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            logger.error("retraining took longer than %.0fs", timeout_s)
            return 124
        if proc.returncode:
            tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
            logger.error("retraining exited %d: %s", proc.returncode, tail)
        return proc.returncode
    return run


class DriftMonitor:
    """Checks drift on demand (``check``); ``run_forever`` calls it every ``interval_s``.

    Every dependency is injectable so experiments can drive it on simulated time: ``clock``
    (seconds, for the cool-down), ``retrainer`` (default: the subprocess), ``sample_api``
    (``users -> list of answers``), ``store`` (Feast), ``redis`` (the event stream).
    """

    def __init__(self, settings: Settings, *, redis: Any, store: Any | None = None,
                 sample_api: Callable[[list[int]], list[dict[str, Any]]] | None = None,
                 retrainer: Retrainer | None = None, clock: Callable[[], float] = time.time,
                 background_retrain: bool = True, metrics: MonitorMetrics | None = None,
                 reference_loader: Callable[[], refs.ChampionReference | None] | None = None,
                 ) -> None:
        self.settings = settings
        self.cfg: MonitorSettings = settings.monitor
        self.redis = redis
        self.store = store
        self.sample_api = sample_api
        self.retrainer = retrainer or retrain_subprocess(self.cfg.retrain_timeout_s)
        self.clock = clock
        self.background_retrain = background_retrain
        self.metrics = metrics or MonitorMetrics()
        self.load_reference = reference_loader or (
            lambda: refs.load_champion(settings, known=self.reference))
        self.alerts = AlertState(self.cfg.consecutive)
        self.cooldown = Cooldown(self.cfg.cooldown_s)
        self.ctr = ev.CtrTracker(self.cfg.ctr_baseline_impressions, self.cfg.ctr_window_impressions)
        self.segment_ctr = ev.SegmentCtr(self.cfg.ctr_segment_window_impressions,
                                        self.cfg.ctr_segment_baseline_impressions)
        self._segments: dict[int, str] | None = None  # user id -> segment (lake users.parquet)
        self.last_id = "0-0"
        self.reference: refs.ChampionReference | None = None
        self.output_reference: dict[str, Any] | None = None  # scores and sources at burn-in
        self.last_materialized_until: Any = None
        self.retrain_thread: threading.Thread | None = None
        self.history: list[CheckResult] = []
        # A CTR drop being worked on: {"baseline": CTR before the drop, "retrains": n, "day":
        # the day of the last retraining, "segment": the segment that dropped or None: all}.
        self.episode: dict[str, Any] | None = None
        # Users and items seen in recent checks: the population the feature checks sample.
        self.recent_users: deque[int] = deque(maxlen=5000)

    # -- one check ------------------------------------------------------------------------
    def check(self) -> CheckResult:
        result = CheckResult(at=self.clock())
        self.metrics.checks.inc()
        self.metrics.last_check.set(time.time())
        self._part("reference", self._reference)
        batch = self._part("events", self._events) or ev.EventBatch()
        self._part("ctr", lambda: self._ctr(batch, result))
        self._part("integrity", lambda: self._integrity(batch, result))
        # Read once per check: the coverage and the item feature sample both need it.
        catalogue = self._part("catalogue", lambda: refs.catalogue_ids(self.settings))
        catalogue = catalogue if catalogue is not None else np.zeros(0, dtype=np.int64)
        self._part("mix", lambda: self._coverage(batch, catalogue, result))
        self._part("features", lambda: self._features(batch, catalogue, result))
        self._part("outputs", lambda: self._outputs(batch, result))
        self._part("pipeline", self._pipeline)
        self._part("skew", lambda: self._skew(result))
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
            self.alerts.reset()
            with warnings.catch_warnings():  # feast sets PROMETHEUS_MULTIPROC_DIR on import
                warnings.simplefilter("ignore", UserWarning)
                self.metrics.model_created.clear()
            for kind, version in ref.versions.items():
                self.metrics.model_created.labels(
                    model=kind, alias=self.settings.mlflow.serving_alias,
                    version=version).set(ref.created_s[kind])
        self.reference = ref

    def _events(self) -> ev.EventBatch:
        rows, self.last_id = ev.read_stream(self.redis, self.last_id)
        segment_of = None
        if self.cfg.ctr_segment_by:
            if self._segments is None or len(self.history) % 24 == 0:  # new users join
                self._segments = user_segments(self.settings, self.cfg.ctr_segment_by)
            segment_of = self._segments.get
        return ev.EventBatch.from_events(rows, segment_of)

    def _ctr(self, batch: ev.EventBatch, result: CheckResult) -> None:
        self.ctr.add(batch)
        ratio, z = self.ctr.signal()
        imps, _ = self.ctr.window_counts
        m = self.metrics
        m.ctr.set(self.ctr.window_ctr)
        m.ctr_baseline.set(self.ctr.baseline_ctr)
        m.ctr_ratio.set(ratio)
        m.ctr_z.set(z)
        m.window_imps.set(imps)
        result.values.update(ctr=self.ctr.window_ctr, ctr_baseline=self.ctr.baseline_ctr,
                             ctr_ratio=ratio, ctr_z=z)
        # Both: the drop is large (ratio) and not noise (z).
        result.signals.append(Signal(
            "online_ctr_ratio", ev.drop_signal_value(ratio, z, self.cfg.ctr_drop, self.cfg.ctr_z),
            1 - self.cfg.ctr_drop, above=False))
        if not self.cfg.ctr_segment_by:
            return
        self.segment_ctr.add(batch)
        for seg, (r, _) in self.segment_ctr.signals().items():
            m.segment_ctr_ratio.labels(segment=seg).set(r)
        seg, r, z = self.segment_ctr.worst()
        if seg is not None:
            result.values.update(ctr_segment_ratio=r, ctr_segment_z=z)
            result.signals.append(Signal(
                f"online_ctr_ratio_{self.cfg.ctr_segment_by}",
                ev.drop_signal_value(r, z, self.cfg.ctr_drop, self.cfg.ctr_segment_z),
                1 - self.cfg.ctr_drop, above=False, detail=f"{self.cfg.ctr_segment_by}={seg}"))

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

    def _features(self, batch: ev.EventBatch, catalogue: np.ndarray, result: CheckResult
                  ) -> None:
        if self.store is None or self.reference is None or not self.reference.features:
            return
        # Users per impression, as in the reference (every impression of the champion's
        # holdout day): an active user weighs more; sampled with replacement from the recent
        # impressions. Items uniformly from the catalogue, as the reference has each item once:
        # weighted by impressions, item features would move whenever the serving policy shows
        # other items (a new champion), drift or not.
        rng = np.random.default_rng(len(self.history))
        self.recent_users.extend(batch.user_impressions)
        users = [int(u) for u in rng.choice(np.array(self.recent_users, dtype=np.int64),
                                            self.cfg.sample_users)] if self.recent_users else []
        items = [int(i) for i in rng.choice(catalogue, min(self.cfg.sample_items, len(catalogue)),
                                            replace=False)] if len(catalogue) else []
        if len(users) + len(items) == 0:
            return
        from monitoring.features import online_features

        values = online_features(self.store, users, items)
        for name, x in values.items():
            ref = self.reference.features.get(name)
            if ref is None or len(x) < self.cfg.psi_min_rows:
                continue
            value = psi_against_reference(ref, x)
            self.metrics.psi.labels(feature=name).set(value)
            result.values[f"psi_{name}"] = value
            result.signals.append(Signal(f"psi_{name}", value, self.cfg.psi_threshold))

    def _outputs(self, batch: ev.EventBatch, result: CheckResult) -> None:
        if self.sample_api is None or not batch.users:
            return
        rng = np.random.default_rng(10_000 + len(self.history))
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

    def _skew(self, result: CheckResult) -> None:
        """Online values of sampled recent users vs the offline rows as of the end of the last
        materialization (what the online store should hold)."""
        if self.store is None or self.last_materialized_until is None or not self.recent_users:
            return
        rng = np.random.default_rng(20_000 + len(self.history))
        users = sorted({int(u) for u in rng.choice(np.array(self.recent_users), 50)})
        ratio, n = self.skew_check(users, self.last_materialized_until)
        result.values["skew_mismatch_ratio"] = ratio
        if n:
            result.signals.append(Signal("skew_mismatch_ratio", ratio, MAX_SKEW))

    # -- retraining -----------------------------------------------------------------------
    def data_problems(self, result: CheckResult) -> list[str]:
        """Integrity signals alerting now: retraining on such data would bake the bug in."""
        return [n for n in result.alerting if n.startswith("events_")]

    def _maybe_retrain(self, alerting: list[Signal], result: CheckResult) -> None:
        cause = cause_of(alerting)
        problems = self.data_problems(result)
        if problems:
            result.held_cause = cause
            self.set_hold(cause)
            logger.error("monitor: event integrity alert (%s): retraining held until the "
                         "upstream data is fixed", cause)
            return
        allowed = [s for s in alerting
                   if any(s.name.startswith(p) for p in self.cfg.retrain_signals)]
        if not allowed:
            logger.warning("monitor: drift alert (%s); none of its signals starts a retraining "
                           "(monitor.retrain_signals)", cause)
            return
        alerting, cause = allowed, cause_of(allowed)
        if not self.cfg.retrain:
            logger.warning("monitor: drift (%s); retraining disabled", cause)
            return
        if self.retrain_thread is not None and self.retrain_thread.is_alive():
            return
        now = self.clock()
        if not self.cooldown.fire(now):
            logger.info("monitor: drift (%s); cool-down, %.0fs left", cause,
                        self.cooldown.remaining(now))
            return
        label = ",".join(s.name for s in alerting)
        if "online_ctr_ratio" in label and self.episode is None:
            # The episode follows the CTR that dropped: everyone's, else the worst segment's.
            names = {s.name for s in alerting}
            seg = None if "online_ctr_ratio" in names else self.segment_ctr.worst()[0]
            tracker = self.ctr if seg is None else self.segment_ctr.trackers[seg]
            self.episode = {"baseline": tracker.baseline_ctr, "retrains": 0, "segment": seg}
        if self.episode is not None:
            self.episode["retrains"] += 1
            self.episode["day"] = _day(now)
        self.metrics.retrains.labels(cause=label).inc()
        result.retrain_cause = cause
        logger.warning("monitor: drift detected (%s): retraining", cause)
        if self.background_retrain:
            self.retrain_thread = threading.Thread(target=self._run_retrain, args=(cause,),
                                                   name="retrain", daemon=True)
            self.retrain_thread.start()
        else:
            self._run_retrain(cause)

    def _follow_up(self, result: CheckResult) -> None:
        """During a CTR episode: done once the window CTR (of whatever version serves now) is
        back within ``ctr_drop`` of the level before the drop; else retrain again when the
        cool-down allows and ``episode_new_day_hours`` of a day after the episode's last
        retraining have passed, up to ``max_episode_retrains``. (Labels and the gate's holdout
        are whole days, the newest one held out: a retraining on the same day, or before any
        of the next day exists, trains on the same days as the last, so it can only repeat it.
        In the drift experiment it did: the same AUC to four digits, rejected.)"""
        assert self.episode is not None
        seg = self.episode.get("segment")
        tracker = self.ctr if seg is None else self.segment_ctr.trackers[seg]
        imps, _ = tracker.window_counts
        if imps < tracker.window_impressions:
            return  # a new champion's window is not full yet
        level = tracker.window_ctr / self.episode["baseline"]
        result.values["ctr_vs_pre_drop"] = level
        if level >= 1 - self.cfg.ctr_drop:
            logger.warning("monitor: online CTR%s recovered to %.0f%% of its level before the "
                           "drop after %d retraining(s)", f" of {seg}" if seg else "",
                           100 * level, self.episode["retrains"])
            self.episode = None
            return
        if self.episode["retrains"] >= self.cfg.max_episode_retrains:
            return
        if (self.retrain_thread is not None and self.retrain_thread.is_alive()) \
                or not self.cooldown.ready(self.clock()) or not self.cfg.retrain \
                or self.hold_path.exists() or _day(
                    self.clock() - 3600 * self.cfg.episode_new_day_hours
                ) <= self.episode.get("day", -1):
            return
        self.cooldown.fire(self.clock())
        self.episode["retrains"] += 1
        self.episode["day"] = _day(self.clock())
        cause = (f"online CTR{f' of {seg}' if seg else ''} not recovered: {level:.2f} of its "
                 f"level before the drop")
        result.retrain_cause = cause
        self.metrics.retrains.labels(cause="ctr_not_recovered").inc()
        logger.warning("monitor: %s: retraining again", cause)
        if self.background_retrain:
            self.retrain_thread = threading.Thread(target=self._run_retrain, args=(cause,),
                                                   name="retrain", daemon=True)
            self.retrain_thread.start()
        else:
            self._run_retrain(cause)

    def _run_retrain(self, cause: str) -> None:
        self.metrics.retrain_running.set(1)
        try:
            code = self.retrainer(cause)
        finally:
            self.metrics.retrain_running.set(0)
        self.metrics.retrain_exit.set(code)
        logger.info("monitor: retraining for (%s) exited %d", cause, code)

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
        from monitoring.features import skew

        ratio, n = skew(self.settings, self.store, user_ids, as_of)
        self.metrics.skew.set(ratio)
        self.metrics.skew_n.set(n)
        return ratio, n


def _day(at: float) -> int:
    """The UTC day number of a clock reading (unix seconds)."""
    return int(at // 86_400)


def user_segments(settings: Settings, column: str) -> dict[int, str]:
    """user id -> the user's ``column`` (country, device) from the lake's user profile; empty
    when the lake has none (then no segment is tested)."""
    from recstack.lake import read_users

    users = read_users(settings.lake_dir)
    if column not in users.column_names or users.num_rows == 0:
        return {}
    ids, values = users["user_id"].to_pylist(), users[column].to_pylist()
    return {int(u): str(v) for u, v in zip(ids, values) if v is not None}
