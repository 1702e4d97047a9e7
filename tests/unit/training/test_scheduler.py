"""The trainer loop: cadence on a simulated clock, failures survived, clean stop, retrain order."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading

import pytest

from recstack.clock import SimClock
from recstack.schemas import RETRAIN_HOLD_FILE
from recstack.settings import Settings, TrainerSettings
from training.scheduler import (
    RetrainError,
    RetrainHeld,
    Trainer,
    retrain_once,
    run_pipeline_subprocess,
)

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


def test_retrain_runs_pipeline_then_train_and_stops_on_pipeline_failure(settings) -> None:
    order = []
    out = retrain_once(settings, pipeline=lambda s: order.append(("pipeline", s)),
                       train=lambda s: order.append(("train", s)) or "result")
    assert out == "result" and order == [("pipeline", settings), ("train", settings)]

    def broken(s: object) -> None:
        raise RetrainError("pipeline exited 1")

    order.clear()
    try:
        retrain_once(settings, pipeline=broken, train=lambda s: order.append("train"))
    except RetrainError:
        pass
    assert order == []


def test_a_monitor_hold_stops_retraining_before_any_step(settings) -> None:
    hold = settings.run_dir / RETRAIN_HOLD_FILE
    hold.parent.mkdir(parents=True, exist_ok=True)
    hold.write_text(json.dumps({"cause": "events without model_version: 33%", "since": 0}))
    order: list[str] = []
    with pytest.raises(RetrainHeld, match="events without model_version: 33%"):
        retrain_once(settings, pipeline=lambda s: order.append("pipeline"),
                     train=lambda s: order.append("train"))
    assert order == []
    retrain_once(settings, pipeline=lambda s: order.append("pipeline"),
                 train=lambda s: order.append("train"), ignore_hold=True)
    assert order == ["pipeline", "train"]
    hold.unlink()  # lifted: automated retraining runs again
    retrain_once(settings, run_pipeline=False, train=lambda s: order.append("train"))
    assert order[-1] == "train"


def test_pipeline_subprocess_failure_is_one_clear_error(settings, monkeypatch) -> None:
    # No lake: the real `recstack pipeline` fails; its message is carried, not a traceback.
    monkeypatch.setenv("RECSTACK_HOME", str(settings.home))
    try:
        run_pipeline_subprocess(settings, timeout_s=120)
    except RetrainError as exc:
        assert "pipeline exited" in str(exc)
    else:
        raise AssertionError("the pipeline should fail without a lake")


def test_stop_during_the_pipeline_terminates_it_and_registers_nothing(settings, monkeypatch
                                                                      ) -> None:
    import sys
    import time

    import training.scheduler as scheduler
    from training.scheduler import RetrainAborted

    # A pipeline child that would run for a minute; the stop comes 0.3 s in.
    slow = [sys.executable, "-c", "import time; time.sleep(60)"]
    real_popen = scheduler.subprocess.Popen
    children = []

    def popen(cmd, **kwargs):
        child = real_popen(slow, **kwargs)
        children.append(child)
        return child

    monkeypatch.setattr(scheduler.subprocess, "Popen", popen)
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    trained = []
    t0 = time.monotonic()
    try:
        retrain_once(settings, train=lambda s: trained.append(s), stop=stop)
    except RetrainAborted as exc:
        assert "during the pipeline" in str(exc)
    else:
        raise AssertionError("the run should have been aborted")
    assert time.monotonic() - t0 < 30  # not the child's minute (generous: shared machine)
    assert trained == [] and children and children[0].poll() is not None


def test_stop_before_registration_leaves_mlflow_untouched(settings, tmp_path) -> None:
    from tests.unit.training.synthetic import write_world
    from training.train import TrainingAborted, train_and_register

    mlruns = tmp_path / "mlruns"
    settings.mlflow.tracking_uri = f"file://{mlruns}"
    settings.train.embedding_dim = 4
    settings.train.ranker_rounds = 5
    store = write_world(settings, n_users=20, n_items=15, days=3)
    stop = threading.Event()
    stop.set()
    try:
        train_and_register(settings, store=store, stop=stop)
    except TrainingAborted as exc:
        assert "nothing logged or registered" in str(exc)
    else:
        raise AssertionError("training should stop before its first MLflow write")
    assert not mlruns.exists()


def test_an_aborted_run_stops_the_trainer_without_counting_a_failure() -> None:
    from training.scheduler import RetrainAborted

    cfg = TrainerSettings(every_sim_days=1.0, speedup=1.0)
    t = Trainer(SETTINGS, cfg)

    def aborted(settings: object) -> str:
        t.stop()
        raise RetrainAborted("stop requested during the pipeline; nothing registered")

    t.retrain = aborted
    assert t.run_forever(install_signals=False) == 1 and t.failures == 0
