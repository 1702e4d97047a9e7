"""How a drift retraining runs: ``recstack retrain`` in a child process by default, one at a
time, in a background thread (the monitor keeps checking) or inline."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from recstack.settings import REPO_ROOT

if TYPE_CHECKING:
    from monitoring.results import MonitorMetrics

# The monitor's log lines keep the logger name they had before this module was split out.
logger = logging.getLogger("monitoring.monitor")

Retrainer = Callable[[str], int]


def retrain_subprocess(timeout_s: float) -> Retrainer:
    """``python -m app.cli retrain`` in a child process; returns its exit code."""
    def run(cause: str) -> int:
        cmd = [sys.executable, "-m", "app.cli", "retrain"]
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


class RetrainRunner:
    """Runs ``retrainer(cause)``: in a daemon thread (``busy`` while it runs), or inline when
    not ``background`` (experiments on simulated time); the running and last-exit-code gauges
    follow it."""

    def __init__(self, retrainer: Retrainer, metrics: MonitorMetrics, background: bool) -> None:
        self.retrainer = retrainer
        self.metrics = metrics
        self.background = background
        self.thread: threading.Thread | None = None

    @property
    def busy(self) -> bool:
        """A background retraining is still running."""
        return self.thread is not None and self.thread.is_alive()

    def start(self, cause: str) -> None:
        if self.background:
            self.thread = threading.Thread(target=self.run, args=(cause,), name="retrain",
                                           daemon=True)
            self.thread.start()
        else:
            self.run(cause)

    def run(self, cause: str) -> None:
        self.metrics.retrain_running.set(1)
        try:
            code = self.retrainer(cause)
        finally:
            self.metrics.retrain_running.set(0)
        self.metrics.retrain_exit.set(code)
        logger.info("monitor: retraining for (%s) exited %d", cause, code)
