"""``recstack experiment databug``: an upstream bug (1-based positions, a third of the events
without a model version) must be caught before a model trained on it becomes champion.

1. a small world simulated with the ``data-bug`` scenario starting on the first day after a
   clean bootstrap window; the bug's days are held back from the lake;
2. bootstrap: pipeline + train on the clean days (champion);
3. the first bugged day "arrives" hour by hour: the drift monitor's event checks read each
   hour's events (as the stream would deliver them) and alert; the monitor holds retraining
   (``run/retrain_hold.json``);
4. the day lands in the lake: ``recstack pipeline`` shows whether validation rejects it;
5. counterfactual: ``recstack retrain`` regardless of the hold (a trainer that ignores it):
   does the gate promote a model trained on the bug?
Out: report folder with the hourly checks and summary.json (detection delay in simulated
days, which layer caught it, whether the champion stayed clean, false alarms).
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import pyarrow.parquet as pq
import yaml
from mlflow.tracking import MlflowClient
from rich.console import Console

from app.experiments.drift.drift import DriftConfig, _settings
from app.experiments.drift.ministack import MiniStack, free_port
from app.experiments.drift.replay import false_alarms
from app.experiments.report import ReportFolder
from monitoring.monitor import MAX_NULL_MODEL_VERSION, MAX_REQUESTS_WITHOUT_TOP, DriftMonitor
from recstack.lake import partition_dir
from recstack.settings import Settings
from simulator.scenarios import scenario_path


def run_databug(base: Settings, n_users: int = 600, n_items: int = 400, warm_days: int = 3,
                console: Any = None) -> dict[str, Any]:
    console = console or Console(stderr=True)
    cfg = DriftConfig(scenario="data-bug", n_users=n_users, n_items=n_items, warm_days=warm_days)
    report = ReportFolder.create(base, "databug", "Data-bug experiment: upstream event bug")
    settings = _settings(base, cfg, base.root / "experiments" / report.path.name, free_port(),
                         free_port())
    t0 = time.perf_counter()
    bug_day = settings.sim.start_date + dt.timedelta(days=warm_days)
    summary: dict[str, Any] = {"scenario": "data-bug", "bug_starts": bug_day.isoformat()}
    with MiniStack.create(settings, {"RECSTACK_PIPELINE__MAX_ROW_SWING": "0.5"}) as stack:
        with console.status("bootstrap: Redis, MLflow, simulate (bug held back), pipeline, train"):
            held, src, champion_before = _bootstrap(stack, settings, report, warm_days, bug_day)
        # 3. the bugged day, hour by hour, through the monitor's event checks.
        rows, caught = _watch_bugged_day(settings, held, bug_day)
        summary.update(caught)
        # 4. the day lands in the lake: does pipeline validation reject it?
        pipeline_rc, validation = _land_bugged_day(stack, held, src)
        summary.update(validation)
        # 5. counterfactual: a retraining that ignores the hold.
        summary.update(_counterfactual_retrain(stack, settings, pipeline_rc, champion_before))
    summary["caught_before_champion"] = bool(
        summary["caught_by_pipeline_validation"]
        or (summary["caught_by_monitor"] and summary["drift_detection_delay_sim_days"] < 1.0))
    summary["ctr_recovery_fraction"] = None
    summary["ctr_recovery_time_sim_days"] = None
    summary.update(false_alarms(settings, cfg))
    summary["wall_seconds"] = round(time.perf_counter() - t0, 1)
    checks = pd.DataFrame(rows)
    report.csv("checks", checks)
    report.figure("integrity", _figure(checks), "Event-integrity signals per simulated hour of "
                  "the first bugged day (thresholds dashed).")
    report.table([{"figure": k, "value": v} for k, v in summary.items()])
    path = report.finish(summary)
    summary["report"] = str(path)
    return summary


def _bootstrap(stack: Any, settings: Settings, report: Any, warm_days: int, bug_day: dt.date
               ) -> tuple[Path, Path, dict[str, str]]:
    """Redis and MLflow; ``warm_days`` clean days and the first bugged one simulated, the bugged
    day's lake partition moved aside; pipeline and training on the clean days. Returns the
    held-back folder, the partition it belongs in and the champion trained on clean data."""
    stack.start_infra(settings.redis.port, settings.mlflow.port)
    scenario_file = report.path / "data-bug-shifted.yaml"
    _write_shifted(scenario_file, warm_days)
    _ok(stack.run_cli("simulate", "--days", str(warm_days + 1),
                      "--scenario", str(scenario_file)), "simulate")
    held = report.path / "held-back"
    src = partition_dir(settings.lake_dir, bug_day)
    shutil.move(str(src), str(held))
    _ok(stack.run_cli("pipeline"), "pipeline (clean days)")
    _ok(stack.run_cli("train"), "train (clean days)")
    champion_before = _champion(settings)
    return held, src, champion_before


def _watch_bugged_day(settings: Settings, held: Path, bug_day: dt.date
                      ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The held-back day's events hour by hour through the drift monitor's event checks (as the
    stream would deliver them); returns one row per hourly check and the summary's figures on
    the monitor (detection delay, signals, whether it held retraining)."""
    bugged = pq.read_table(held).to_pandas()
    retrains: list[str] = []
    monitor = DriftMonitor(settings, redis=_ListStream(),
                           retrainer=lambda c: retrains.append(c) or 0,
                           background_retrain=False, reference_loader=lambda: None)
    rows = []
    first_alert_h = None
    for hour, chunk in bugged.sort_values("ts").groupby(bugged["ts"].dt.floor("h")):
        monitor.redis.load(chunk)
        result = monitor.check()
        h = (hour - pd.Timestamp(bug_day, tz="UTC")).total_seconds() / 3600
        rows.append({"hour": h, **result.values, "alerting": ",".join(result.alerting),
                     "held": result.held_cause or ""})
        if result.alerting and first_alert_h is None:
            first_alert_h = h + 1  # the check runs at the end of the hour
    summary: dict[str, Any] = {}
    summary["drift_detection_delay_sim_days"] = (
        round(first_alert_h / 24, 3) if first_alert_h is not None else None)
    summary["caught_by_monitor"] = first_alert_h is not None
    summary["monitor_alert_signals"] = sorted({a for r in rows for a in r["alerting"].split(",")
                                                if a})
    summary["retrain_hold_file_written"] = monitor.hold_path.exists()
    summary["monitor_started_retrains"] = len(retrains)
    return rows, summary


def _land_bugged_day(stack: Any, held: Path, src: Path) -> tuple[int, dict[str, Any]]:
    """The held-back day back in the lake and ``recstack pipeline`` run on it; returns its exit
    code and the summary's figures on whether validation rejected the day."""
    shutil.move(str(held), str(src))
    proc = stack.run_cli("pipeline")
    summary: dict[str, Any] = {}
    summary["caught_by_pipeline_validation"] = proc.returncode != 0
    summary["pipeline_exit_code"] = proc.returncode
    summary["pipeline_message"] = (proc.stderr or proc.stdout).strip().splitlines()[-1][-300:] \
        if (proc.stderr or proc.stdout).strip() else ""
    return proc.returncode, summary


def _counterfactual_retrain(stack: Any, settings: Settings, pipeline_rc: int,
                            champion_before: dict[str, str]) -> dict[str, Any]:
    """``recstack retrain --ignore-hold`` (a trainer that ignores the monitor's hold; without the
    pipeline if it rejected the day): the summary's figures on whether the gate promoted a model
    trained on the bug."""
    proc = stack.run_cli("retrain", "--no-pipeline" if pipeline_rc else "--pipeline",
                         "--ignore-hold")
    champion_after = _champion(settings)
    summary: dict[str, Any] = {}
    summary["counterfactual_retrain_exit_code"] = proc.returncode
    summary["counterfactual_bugged_model_promoted"] = champion_after != champion_before
    summary["champion_before"] = champion_before
    summary["champion_after_counterfactual"] = champion_after
    return summary


class _ListStream:
    """A stand-in for the Redis stream: ``xrange`` returns the rows loaded for this hour."""

    def __init__(self) -> None:
        self.rows: list[tuple[bytes, dict]] = []
        self.n = 0

    def load(self, frame: pd.DataFrame) -> None:
        self.rows = []
        for r in frame.to_dict("records"):
            self.n += 1
            fields = {k: ("" if v is None or (isinstance(v, float) and v != v) else str(v))
                      for k, v in r.items() if k in ("event_type", "user_id", "item_id",
                                                    "request_id", "position", "model_version")}
            fields = {k: v for k, v in fields.items() if v != ""}
            self.rows.append((f"{self.n}-0".encode(), fields))

    def xrange(self, stream: str, min: str, max: str, count: int) -> list:  # noqa: A002
        rows, self.rows = self.rows[:count], self.rows[count:]
        return rows


def _write_shifted(path: Any, day: int) -> None:
    spec = yaml.safe_load(scenario_path("data-bug").read_text())
    for d in spec["drifts"]:
        d["day"] = day
    path.write_text(yaml.safe_dump(spec))


def _ok(proc: Any, what: str) -> None:
    if proc.returncode:
        raise RuntimeError(f"{what} failed: {(proc.stderr or proc.stdout)[-500:]}")


def _champion(settings: Settings) -> dict[str, str]:
    client = MlflowClient(settings.mlflow.uri, settings.mlflow.uri)
    return {n: str(client.get_model_version_by_alias(n, settings.mlflow.serving_alias).version)
            for n in (settings.mlflow.candidates_model, settings.mlflow.ranker_model)}


def _figure(checks: pd.DataFrame) -> Any:
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(9, 3.5))
    for col, thr, label in (("null_model_version", MAX_NULL_MODEL_VERSION,
                             "events without model_version"),
                            ("requests_without_top", MAX_REQUESTS_WITHOUT_TOP,
                             "lists without position 0")):
        if col in checks:
            line, = ax.plot(checks["hour"], checks[col], marker="o", ms=3, label=label)
            ax.axhline(thr, ls="--", color=line.get_color(), lw=0.8)
    ax.set_xlabel("simulated hours since the bug started")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
