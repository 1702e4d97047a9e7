"""The trainer loop: cadence on a simulated clock, failures survived, clean stop, retrain order."""

from __future__ import annotations

import datetime as dt
import os
import signal
import threading

from recstack.clock import SimClock
from recstack.settings import Settings, TrainerSettings
from training.scheduler import RetrainError, Trainer, retrain_once, run_pipeline_subprocess

SETTINGS = Settings()


def test_interval_follows_simulated_days() -> None:
    clock = SimClock(dt.datetime(2026, 1, 1, tzinfo=dt.UTC), speedup=86400.0)
    t = Trainer(SETTINGS, TrainerSettings(every_sim_days=0.5), clock=clock, retrain=lambda s: 1)
    assert t.interval_wall_s() == 0.5
    default = Trainer(SETTINGS, TrainerSettings(), retrain=lambda s: 1)
    start = SETTINGS.sim.start_date + dt.timedelta(days=SETTINGS.sim.days)
    assert default.clock.now().date() == start  # the world's calendar goes on


def test_failed_runs_do_not_stop_the_loop() -> None:
    calls = []

    def flaky(settings: object) -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("MLflow down")
        return "ok"

    cfg = TrainerSettings(every_sim_days=1e-6, speedup=86400.0, max_runs=3)
    t = Trainer(SETTINGS, cfg, retrain=flaky)
    assert t.run_forever(install_signals=False) == 3
    assert t.failures == 1 and len(calls) == 3


def test_sigterm_stops_between_runs() -> None:
    cfg = TrainerSettings(every_sim_days=1.0, speedup=1.0)  # a day of wall time between runs
    t = Trainer(SETTINGS, cfg, retrain=lambda s: "ok")
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGTERM)).start()
    old = signal.getsignal(signal.SIGTERM)
    try:
        assert t.run_forever() == 1
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, signal.default_int_handler)


def test_retrain_runs_pipeline_then_train_and_stops_on_pipeline_failure() -> None:
    order = []
    out = retrain_once("S", pipeline=lambda s: order.append(("pipeline", s)),
                       train=lambda s: order.append(("train", s)) or "result")
    assert out == "result" and order == [("pipeline", "S"), ("train", "S")]

    def broken(s: object) -> None:
        raise RetrainError("pipeline exited 1")

    order.clear()
    try:
        retrain_once("S", pipeline=broken, train=lambda s: order.append("train"))
    except RetrainError:
        pass
    assert order == []


def test_pipeline_subprocess_failure_is_one_clear_error(settings, monkeypatch) -> None:
    # No lake: the real `recstack pipeline` fails; its message is carried, not a traceback.
    monkeypatch.setenv("RECSTACK_HOME", str(settings.home))
    try:
        run_pipeline_subprocess(settings, timeout_s=120)
    except RetrainError as exc:
        assert "pipeline exited" in str(exc)
    else:
        raise AssertionError("the pipeline should fail without a lake")
