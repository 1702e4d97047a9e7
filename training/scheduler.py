"""Periodic retraining: pipeline -> materialize -> train -> evaluate -> gate, now or every N
simulated days.

In:  the lake as the event sink left it; the settings (``TrainerSettings`` for the cadence).
Out: one :class:`training.train.TrainResult` per run (new versions; champion only if the gate
     lets them).

Why the pipeline runs in a subprocess (``python -m app.cli pipeline``): training must not
import the pipelines stage (stages hand off through artifacts), a Beam run's memory is
returned to the OS when its process ends (the trainer lives for days), and a crashed pipeline
cannot take the trainer down. The composition root may inject another callable instead.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

from recstack.clock import SimClock, day_start
from recstack.schemas import RETRAIN_HOLD_FILE
from recstack.settings import REPO_ROOT, Settings, TrainerSettings
from training.train import TrainingAborted, train_and_register

logger = logging.getLogger(__name__)

PipelineRunner = Callable[[Settings], None]


class RetrainError(RuntimeError):
    """A retraining step failed; the champion is unchanged. The message says which step."""


class RetrainAborted(RetrainError):
    """A stop was requested before anything was registered; the champion is unchanged."""


class RetrainHeld(RetrainError):
    """The monitor holds retraining (the events look broken); nothing ran."""


def retrain_hold(settings: Settings) -> str | None:
    """The monitor's reason to hold automated retraining, or None (see RETRAIN_HOLD_FILE)."""
    path = settings.run_dir / RETRAIN_HOLD_FILE
    try:
        cause = json.loads(path.read_text()).get("cause")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError):
        cause = None
    return str(cause or f"unreadable hold file {path}")


STOP_GRACE_S = 30.0  # how long a stopped pipeline child may take to exit before it is killed


def run_pipeline_subprocess(settings: Settings, timeout_s: float = 1800.0,
                            stop: threading.Event | None = None) -> None:
    """``python -m app.cli pipeline`` (Beam features + feast apply + materialize) in a child
    process with this process's environment; raises RetrainError with its last output lines.

    When ``stop`` is set meanwhile, the child gets SIGTERM (what supervisord's ``stopasgroup``
    would send it), is waited for (killed after STOP_GRACE_S) and RetrainAborted is raised.
    """
    cmd = [sys.executable, "-m", "app.cli", "pipeline"]
    with tempfile.TemporaryFile("w+") as out, subprocess.Popen(
            cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, text=True) as proc:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop is not None and stop.is_set():
                _end(proc)
                raise RetrainAborted("stop requested during the pipeline; nothing registered")
            if time.monotonic() > deadline:
                _end(proc)
                raise RetrainError(f"pipeline took longer than {timeout_s:.0f}s")
        if proc.returncode != 0:
            out.seek(0)
            tail = " | ".join(out.read().strip().splitlines()[-3:])
            raise RetrainError(f"pipeline exited {proc.returncode}: {tail}")


def _end(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after STOP_GRACE_S; returns once the child is gone."""
    proc.terminate()
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def retrain_once(
    settings: Settings,
    run_pipeline: bool = True,
    pipeline: PipelineRunner | None = None,
    train: Callable[[Settings], Any] | None = None,
    stop: threading.Event | None = None,
    ignore_hold: bool = False,
) -> Any:
    """One retraining: the pipeline (unless ``run_pipeline`` is False), then training and the
    gate. ``pipeline`` and ``train`` default to the subprocess and ``train_and_register``.

    ``stop`` (set by SIGTERM in the trainer) aborts the run at the next safe point — during the
    pipeline, between the steps, or in training before the first MLflow write — with
    RetrainAborted; once registration has begun the run finishes it, so MLflow never holds
    half a registration. While the monitor holds retraining (``RETRAIN_HOLD_FILE``: the events
    look broken, so a model trained on them must not reach the gate) it raises RetrainHeld,
    unless ``ignore_hold``.
    """
    hold = None if ignore_hold else retrain_hold(settings)
    if hold is not None:
        raise RetrainHeld(
            f"retraining is held by the monitor: {hold} (fix the upstream data, or remove "
            f"{settings.run_dir / RETRAIN_HOLD_FILE} / pass --ignore-hold to train anyway)")
    if run_pipeline:
        logger.info("retrain: running the feature pipeline and materialization")
        if pipeline is None:
            run_pipeline_subprocess(settings, settings.trainer.pipeline_timeout_s, stop)
        else:
            pipeline(settings)
    if stop is not None and stop.is_set():
        raise RetrainAborted("stop requested after the pipeline; nothing registered")
    logger.info("retrain: training and gate")
    if train is None:
        try:
            return train_and_register(settings, stop=stop)
        except TrainingAborted as exc:
            raise RetrainAborted(str(exc)) from exc
    return train(settings)


class Trainer:
    """Retrains every ``every_sim_days`` simulated days on a :class:`SimClock` until stopped.

    SIGTERM/SIGINT set a stop flag: a run in progress stops at its next safe point (the
    pipeline child is terminated; training stops before its first MLflow write) or, once
    registration has begun, finishes it (MLflow never sees half a registration); then the loop
    exits. Between runs the wait is interrupted at once. A failed run is logged and retried at
    the next tick — the champion stays whatever happens.
    """

    def __init__(self, settings: Settings, cfg: TrainerSettings | None = None,
                 clock: SimClock | None = None,
                 retrain: Callable[[Settings], Any] | None = None) -> None:
        self.settings = settings
        self.cfg = cfg or settings.trainer
        # Simulated time continues the world's calendar: the day after the simulated days.
        start = day_start(settings.sim.start_date + dt.timedelta(days=settings.sim.days))
        self.clock = clock or SimClock(start, speedup=self.cfg.speedup)
        self.stop_event = threading.Event()
        self.retrain = retrain or (lambda s: retrain_once(
            s, run_pipeline=self.cfg.run_pipeline,
            pipeline=lambda st: run_pipeline_subprocess(st, self.cfg.pipeline_timeout_s,
                                                        self.stop_event),
            stop=self.stop_event))
        self.runs = 0
        self.failures = 0

    def stop(self, *_: object) -> None:
        logger.info("trainer: stop requested")
        self.stop_event.set()

    def interval_wall_s(self) -> float:
        return self.clock.wall_seconds_for(dt.timedelta(days=self.cfg.every_sim_days))

    def tick(self) -> bool:
        """One run; True if it succeeded."""
        self.runs += 1
        logger.info("trainer: run %d at simulated %s", self.runs, self.clock.now().isoformat())
        try:
            result = self.retrain(self.settings)
        except RetrainAborted as exc:
            logger.warning("trainer: run %d aborted, champion unchanged: %s", self.runs, exc)
            return False
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any one failed run
            self.failures += 1
            logger.error("trainer: run %d failed, champion unchanged: %s: %s",
                         self.runs, type(exc).__name__, exc)
            return False
        logger.info("trainer: run %d done: %s", self.runs, getattr(result, "gate_reason", result))
        return True

    def run_forever(self, install_signals: bool = True) -> int:
        """Loop until stopped or ``max_runs`` runs; returns the number of runs."""
        if install_signals:
            signal.signal(signal.SIGTERM, self.stop)
            signal.signal(signal.SIGINT, self.stop)
        interval = self.interval_wall_s()
        logger.info("trainer: every %.3g simulated days = %.1f wall seconds",
                    self.cfg.every_sim_days, interval)
        while not self.stop_event.is_set():
            self.tick()
            if self.cfg.max_runs and self.runs >= self.cfg.max_runs:
                break
            self.stop_event.wait(interval)
        logger.info("trainer: stopped after %d run(s), %d failed", self.runs, self.failures)
        return self.runs
