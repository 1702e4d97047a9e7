"""Online experiments at the API: deterministic arm assignment, canary guard, shadow scoring.

A user's arm is a pure function of ``(salt, user_id)`` and the arm weights: the first 8 bytes of
``blake2b("<salt>:<user_id>")`` give a point in [0, 1) that falls into one arm's slice of the
cumulative weights. Every replica assigns the same user to the same arm with no shared state,
and a new salt re-randomises everyone (independent of the previous experiment).

Modes: ``ab`` (users see their arm), ``canary`` (a small treatment weight; the
:class:`CanaryGuard` sets it to 0 when the arm's error rate or p99 latency breaks the SLO over
its window), ``shadow`` (everyone is served the control; the treatment scores the same request
on a background thread fed by a bounded queue that drops when full; never served).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

Mode = Literal["ab", "canary", "shadow"]
_SCALE = float(1 << 64)


def bucket(user_id: int, salt: str) -> float:
    """The user's stable point in [0, 1) for experiment ``salt``."""
    digest = hashlib.blake2b(f"{salt}:{int(user_id)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


def pick(point: float, weights: Sequence[float]) -> int:
    """Index of the arm whose slice of the cumulative (normalised) weights holds ``point``."""
    total = float(sum(weights))
    if total <= 0:
        return 0
    edge = 0.0
    for i, w in enumerate(weights):
        edge += w / total
        if point < edge:
            return i
    return max(i for i, w in enumerate(weights) if w > 0)  # float round-off at the top


def assign(user_id: int, salt: str, weights: Sequence[float]) -> int:
    """Arm index of ``user_id``."""
    return pick(bucket(user_id, salt), weights)


def assign_many(user_ids: Sequence[int] | np.ndarray, salt: str,
                weights: Sequence[float]) -> np.ndarray:
    """Arm index of each user id (int64), the same as :func:`assign` one by one."""
    points = np.fromiter((bucket(int(u), salt) for u in user_ids), dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if w.sum() <= 0:
        return np.zeros(points.shape, dtype=np.int64)
    edges = np.cumsum(w / w.sum())
    idx = np.searchsorted(edges, points, side="right")
    return np.minimum(idx, np.flatnonzero(w > 0).max()).astype(np.int64)


@dataclass
class Arm:
    """One arm: its name (a bounded metric label), the models it names and its weight.

    ``recommender`` serves the arm; None means "the replica's own champion recommender" when
    ``main`` is True, or "not loaded yet" otherwise (the request is served by the control).
    """

    name: str
    models: str  # "champion", "challenger", or a ranker version number
    weight: float
    main: bool = False  # served by the replica's champion recommender
    recommender: Any = None
    versions: dict[str, str] | None = None


@dataclass
class ExperimentEvent:
    at: float  # unix seconds
    kind: str  # "rollback"
    arm: str
    reason: str


class CanaryGuard:
    """Watches one arm's last ``window`` requests; a breach of the SLO rolls the arm back.

    An error is a failed recommendation of the arm or one served degraded because a stage of
    the arm was unavailable. The SLO is checked once ``min_requests`` are in the window:
    error rate above ``max_error_rate`` or p99 latency above ``p99_ms`` -> ``on_breach(reason)``
    (once; the arm gets no more traffic, so the window stops moving).
    """

    def __init__(self, arm: str, window: int, min_requests: int, max_error_rate: float,
                 p99_ms: float, on_breach: Callable[[str], None]) -> None:
        self.arm = arm
        self.min_requests = min_requests
        self.max_error_rate = max_error_rate
        self.p99_s = p99_ms / 1000
        self.on_breach = on_breach
        self.errors: deque[bool] = deque(maxlen=window)
        self.seconds: deque[float] = deque(maxlen=window)
        self.tripped = False
        self._lock = threading.Lock()

    def record(self, ok: bool, seconds: float) -> str | None:
        """Adds one request; returns the breach reason when this request tripped the guard."""
        with self._lock:
            if self.tripped:
                return None
            self.errors.append(not ok)
            self.seconds.append(seconds)
            n = len(self.errors)
            if n < self.min_requests:
                return None
            rate = sum(self.errors) / n
            p99 = float(np.quantile(np.fromiter(self.seconds, float), 0.99))
            reason = None
            if rate > self.max_error_rate:
                reason = (f"error rate {rate:.1%} > {self.max_error_rate:.1%} "
                          f"over the last {n} requests")
            elif p99 > self.p99_s:
                reason = (f"p99 latency {p99 * 1000:.1f} ms > {self.p99_s * 1000:.0f} ms "
                          f"over the last {n} requests")
            if reason is None:
                return None
            self.tripped = True
        self.on_breach(reason)
        return reason


@dataclass
class ShadowJob:
    user_id: int
    k: int
    deadline_s: float
    served: list[int]


class ShadowRunner:
    """Scores requests with the shadow arm on one background thread, off the response path.

    ``submit`` never blocks: when ``maxsize`` jobs are waiting the job is dropped (counted).
    Each scored job's latency and its overlap with the served list go to ``on_result``; its
    list is logged at DEBUG and never returned to a client.
    """

    def __init__(self, arm: Arm, maxsize: int,
                 on_result: Callable[[str, float, float | None], None]) -> None:
        self.arm = arm
        self.on_result = on_result  # (outcome, seconds, overlap with the served list)
        self.jobs: queue.Queue[ShadowJob | None] = queue.Queue(maxsize=maxsize)
        self.counts = {"scored": 0, "dropped": 0, "failed": 0, "not_loaded": 0}
        self.seconds: deque[float] = deque(maxlen=10_000)  # the latest scored jobs
        self.overlaps: deque[float] = deque(maxlen=10_000)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="shadow", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._thread is None:
            return
        while True:  # make room for the sentinel: waiting jobs are dropped at shutdown
            try:
                self.jobs.put_nowait(None)
                break
            except queue.Full:
                try:
                    self.jobs.get_nowait()
                except queue.Empty:
                    pass
        self._thread.join(timeout_s)
        self._thread = None

    def submit(self, job: ShadowJob) -> bool:
        try:
            self.jobs.put_nowait(job)
            return True
        except queue.Full:
            self._count("dropped", 0.0, None)
            return False

    def drain(self, timeout_s: float = 5.0) -> None:
        """Waits until every submitted job was handled (tests, orderly shutdown)."""
        end = time.monotonic() + timeout_s
        while self.jobs.unfinished_tasks and time.monotonic() < end:
            time.sleep(0.005)

    def _work(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                self._score(job)
            finally:
                self.jobs.task_done()

    def _score(self, job: ShadowJob) -> None:
        rec = self.arm.recommender
        if rec is None:
            self._count("not_loaded", 0.0, None)
            return
        t = time.perf_counter()
        try:
            out = rec.recommend(job.user_id, job.k, job.deadline_s)
        except Exception:
            logger.warning("shadow arm %s failed", self.arm.name, exc_info=True)
            self._count("failed", time.perf_counter() - t, None)
            return
        seconds = time.perf_counter() - t
        items = [i.item_id for i in out.items]
        overlap = len(set(items) & set(job.served)) / max(len(job.served), 1)
        logger.debug("shadow %s user %d: %s (overlap %.2f, %.1f ms, degraded %s)",
                     self.arm.name, job.user_id, items, overlap, seconds * 1000, out.degraded)
        self.seconds.append(seconds)
        self.overlaps.append(overlap)
        self._count("scored", seconds, overlap)

    def _count(self, outcome: str, seconds: float, overlap: float | None) -> None:
        self.counts[outcome] += 1
        self.on_result(outcome, seconds, overlap)


@dataclass
class Experiment:
    """The arms of one replica's experiment and their current weights.

    ``arms[0]`` is the control. In shadow mode every user is assigned the control and
    ``shadow`` holds the arm that scores in the background.
    """

    name: str
    salt: str
    mode: Mode
    arms: list[Arm]
    shadow_arm: Arm | None = None
    guards: dict[str, CanaryGuard] = field(default_factory=dict)
    shadow: ShadowRunner | None = None
    events: list[ExperimentEvent] = field(default_factory=list)
    on_rollback: Callable[[str, str], None] | None = None

    @property
    def control(self) -> Arm:
        return self.arms[0]

    @property
    def arm_names(self) -> list[str]:
        names = [a.name for a in self.arms]
        return names + ([self.shadow_arm.name] if self.shadow_arm is not None else [])

    def choose(self, user_id: int) -> Arm:
        return self.arms[assign(user_id, self.salt, [a.weight for a in self.arms])]

    def arm(self, name: str) -> Arm:
        for a in self.arms + ([self.shadow_arm] if self.shadow_arm else []):
            if a.name == name:
                return a
        raise KeyError(name)

    def add_canary_guard(self, arm: str, window: int, min_requests: int,
                         max_error_rate: float, p99_ms: float) -> None:
        self.guards[arm] = CanaryGuard(
            arm, window, min_requests, max_error_rate, p99_ms,
            on_breach=lambda reason: self.roll_back(arm, reason),
        )

    def roll_back(self, name: str, reason: str) -> None:
        """The arm gets no more users (weight 0); the event is kept and logged."""
        self.arm(name).weight = 0.0
        self.events.append(ExperimentEvent(time.time(), "rollback", name, reason))
        logger.warning("canary arm %s rolled back: %s", name, reason,
                       extra={"experiment": self.name, "arm": name, "event": "rollback"})
        if self.on_rollback is not None:
            self.on_rollback(name, reason)

    def record(self, arm: str, ok: bool, seconds: float) -> None:
        guard = self.guards.get(arm)
        if guard is not None:
            guard.record(ok, seconds)

    def describe(self) -> dict[str, Any]:
        """What ``GET /experiment`` shows."""
        def one(a: Arm) -> dict[str, Any]:
            return {"name": a.name, "models": a.models, "weight": a.weight,
                    "versions": a.versions, "loaded": a.main or a.recommender is not None}

        return {
            "name": self.name, "salt": self.salt, "mode": self.mode,
            "arms": [one(a) for a in self.arms],
            "shadow": None if self.shadow_arm is None else {
                **one(self.shadow_arm), **(self.shadow.counts if self.shadow else {})},
            "events": [e.__dict__ for e in self.events],
        }


def build_experiment(ab: Any, serving_alias: str = "champion") -> Experiment | None:
    """The experiment of ``settings.ab`` (None when ``mode`` is off); arms named control and
    treatment. Guards and the shadow runner are added by the app (they need its metrics)."""
    if ab.mode == "off":
        return None
    control = Arm("control", ab.control, 1.0, main=ab.control == serving_alias)
    treatment = Arm("treatment", ab.treatment, 0.0, main=ab.treatment == serving_alias)
    if ab.mode == "shadow":
        return Experiment(ab.name, ab.salt, "shadow", [control], shadow_arm=treatment)
    weight = ab.treatment_weight if ab.mode == "ab" else ab.canary_weight
    control.weight, treatment.weight = 1.0 - weight, weight
    return Experiment(ab.name, ab.salt, ab.mode, [control, treatment])
