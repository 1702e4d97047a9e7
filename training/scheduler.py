"""Periodic retraining: pipeline -> materialize -> train -> evaluate -> gate, now or every N
simulated days.

In:  the lake as the event sink left it; the settings (``TrainerSettings`` for the cadence).
Out: one :class:`training.train.TrainResult` per run (new versions; champion only if the gate
     lets them).

Why the pipeline runs in a subprocess (``python -m recstack.cli pipeline``): training must not
import the pipelines stage (stages hand off through artifacts), a Beam run's memory is
returned to the OS when its process ends (the trainer lives for days), and a crashed pipeline
cannot take the trainer down. The composition root may inject another callable instead.
"""

from __future__ import annotations

import datetime as dt
import logging
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

from recstack.clock import SimClock, day_start
from recstack.settings import REPO_ROOT, Settings, TrainerSettings

logger = logging.getLogger(__name__)

PipelineRunner = Callable[[Settings], None]


class RetrainError(RuntimeError):
    """A retraining step failed; the champion is unchanged. The message says which step."""


def run_pipeline_subprocess(settings: Settings, timeout_s: float = 1800.0) -> None:
    """``python -m recstack.cli pipeline`` (Beam features + feast apply + materialize) in a child
    process with this process's environment; raises RetrainError with its last output lines."""
    cmd = [sys.executable, "-m", "recstack.cli", "pipeline"]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RetrainError(f"pipeline took longer than {timeout_s:.0f}s") from exc
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise RetrainError(f"pipeline exited {proc.returncode}: {tail}")


def retrain_once(
    settings: Settings,
    run_pipeline: bool = True,
    pipeline: PipelineRunner | None = None,
    train: Callable[[Settings], Any] | None = None,
) -> Any:
    """One retraining: the pipeline (unless ``run_pipeline`` is False), then training and the
    gate. ``pipeline`` and ``train`` default to the subprocess and ``train_and_register``."""
    if run_pipeline:
        logger.info("retrain: running the feature pipeline and materialization")
        (pipeline or run_pipeline_subprocess)(settings)
    if train is None:
        from training.train import train_and_register as train
    logger.info("retrain: training and gate")
    return train(settings)


class Trainer:
    """Retrains every ``every_sim_days`` simulated days on a :class:`SimClock` until stopped.

    SIGTERM/SIGINT set a stop flag: a run in progress finishes (MLflow never sees half a
    registration) and the loop exits; between runs the wait is interrupted at once. A failed
    run is logged and retried at the next tick — the champion stays whatever happens.
    """

    def __init__(self, settings: Settings, cfg: TrainerSettings | None = None,
                 clock: SimClock | None = None,
                 retrain: Callable[[Settings], Any] | None = None) -> None:
        self.settings = settings
        self.cfg = cfg or settings.trainer
        # Simulated time continues the world's calendar: the day after the simulated days.
        start = day_start(settings.sim.start_date + dt.timedelta(days=settings.sim.days))
        self.clock = clock or SimClock(start, speedup=self.cfg.speedup)
        self.retrain = retrain or (lambda s: retrain_once(
            s, run_pipeline=self.cfg.run_pipeline,
            pipeline=lambda st: run_pipeline_subprocess(st, self.cfg.pipeline_timeout_s)))
        self.stop_event = threading.Event()
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
