"""``recstack experiment drift``: drift -> detection -> retraining -> recovery, on a private stack.

1. bootstrap: a small world's ``warm_days`` of logging-policy traffic -> pipeline -> train
   (champion); the champion pair also gets the alias ``frozen``;
2. two API processes: ``live`` serves ``@champion`` (retrained by the monitor), ``frozen``
   serves ``@frozen`` (the counterfactual: retraining disabled); the same simulated users at
   the same simulated moments query both; only the live arm's events reach the stream, the
   sink and the lake;
3. every simulated hour the drift monitor (monitoring.monitor) checks the stream, the online
   features and sampled answers; a drift alert runs ``recstack retrain`` (synchronously: the
   simulated clock waits for it) and the live API hot-swaps the new champion; every simulated
   midnight the feature pipeline runs (fresh features for both arms).
Out: the report folder (timeline CSV and plot, summary.json).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import redis as redis_lib
from mlflow.tracking import MlflowClient
from rich.console import Console
from rich.progress import Progress

from app.experiments.drift.ministack import MiniStack, free_port
from app.experiments.drift.plots import timeline_figure
from app.experiments.drift.replay import false_alarms
from app.experiments.drift.traffic import Arm, play_hour, post_events, warm_memories
from app.experiments.report import ReportFolder
from monitoring.events import EVENTS_STREAM
from monitoring.monitor import DriftMonitor
from monitoring.onlinestore import RedisOnlineStore
from monitoring.service import api_sampler
from recstack.clock import day_start
from recstack.lake import read_events
from recstack.settings import Settings
from simulator.scenarios import load_scenario
from simulator.world import World

logger = logging.getLogger(__name__)


RECOVERY_HOLD_H = 6  # simulated hours a recovery must hold (not a brief crossing)


@dataclass
class DriftConfig:
    scenario: str = "taste-shift"
    n_users: int = 1000
    n_items: int = 400
    n_categories: int = 8
    seed: int = 42
    # Logging-policy days in the lake before the live run: more than a week, so the champion's
    # feature reference has full 7-day windows, like the live features it is compared with.
    warm_days: int = 8
    # Live days before the monitor watches: the pre-shift window must be past the new policy's
    # warm-up (see README.md, "Why the defaults are what they are": burn_in_days).
    burn_in_days: int = 2
    live_days: int = 5  # burn-in included
    shift_day: int = 11  # 0-based simulated day the scenario starts (a live day)
    # Retraining weighs recent events more (train.recency_half_life_days): after a shift the
    # candidate model follows the new tastes instead of averaging them with a week of old ones.
    recency_half_life_days: float | None = 1.0
    # About 3 requests per user and simulated day, so that a segment's shift stands out of the
    # CTR tests' noise (see README.md, "Why the defaults are what they are": requests_per_hour).
    requests_per_hour: int = 120
    k: int = 10
    retrain: bool = True
    cooldown_hours: float = 12.0
    # Recovered: the 6-hour fraction of the oracle back at >= this share of its pre-shift level
    # and staying there for RECOVERY_HOLD_H simulated hours.
    recovery_level: float = 0.9

    def check(self) -> None:
        """Raise ValueError unless the shift falls after a monitored pre-shift day and leaves
        at least one live day after it (the recovery window)."""
        first_watched = self.warm_days + self.burn_in_days
        last_live = self.warm_days + self.live_days - 1
        if not first_watched + 1 <= self.shift_day <= last_live - 1:
            raise ValueError(
                f"shift_day {self.shift_day} must be in {first_watched + 1}..{last_live - 1}: "
                f"after {self.burn_in_days} burn-in day(s) and one watched pre-shift day, "
                f"before the last of {self.live_days} live day(s)")


def _settings(base: Settings, cfg: DriftConfig, home: Any, redis_port: int, mlflow_port: int
              ) -> Settings:
    return base.model_copy(update={
        "home": home,
        "sim": base.sim.model_copy(update={
            "n_users": cfg.n_users, "n_items": cfg.n_items, "n_categories": cfg.n_categories,
            "seed": cfg.seed, "days": cfg.warm_days}),
        "redis": base.redis.model_copy(update={"port": redis_port, "password": None}),
        "mlflow": base.mlflow.model_copy(update={"port": mlflow_port, "tracking_uri": None}),
        # The CTR tests' windows in simulated hours whatever the traffic (k impressions per
        # request): everyone's 10 h against the 10 h before; a segment's 2.5 h of all traffic
        # (about 7 h of a third of the users) against 7.5 h of all traffic before.
        "monitor": base.monitor.model_copy(update={
            "ctr_baseline_impressions": 10 * cfg.k * cfg.requests_per_hour,
            "ctr_window_impressions": 10 * cfg.k * cfg.requests_per_hour,
            "ctr_segment_window_impressions": round(2.5 * cfg.k * cfg.requests_per_hour),
            "ctr_segment_baseline_impressions": round(7.5 * cfg.k * cfg.requests_per_hour),
            "ctr_z": 3.0, "ctr_segment_z": 4.0, "consecutive": 3,
            "cooldown_s": cfg.cooldown_hours * 3600, "retrain": cfg.retrain,
            "sample_users": 200, "sample_items": 200}),
    })


def shifted_scenario(name: str, day: int) -> Any:
    sc = load_scenario(name)
    first = sc.first_day
    return sc.model_copy(update={"drifts": [d.model_copy(update={"day": d.day - first + day})
                                            for d in sc.drifts]})


def run_drift(base: Settings, cfg: DriftConfig, console: Any = None) -> dict[str, Any]:
    """Runs the experiment; returns the summary (also written into the report folder)."""
    cfg.check()
    console = console or Console(stderr=True)
    report = ReportFolder.create(base, "drift", f"Drift experiment: {cfg.scenario}")
    settings = _settings(base, cfg, base.root / "experiments" / report.path.name, free_port(),
                         free_port())
    t_start = time.perf_counter()
    with MiniStack.create(settings, _stack_env(cfg)) as stack:
        with console.status("bootstrap: Redis, MLflow, simulate, pipeline, train"):
            live, frozen = _bootstrap(stack, settings, cfg)
        console.print(f"bootstrap done in {time.perf_counter() - t_start:.0f}s")
        run, t0, shift_at = _live_days(stack, settings, cfg, live, frozen, console)
    timeline = pd.DataFrame(run.rows)
    summary = summarize(timeline, run.marks, shift_at, t0, cfg)
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 1)

    with console.status("false alarms: offline replay of a 7-day run without a scenario"):
        summary.update(false_alarms(settings, cfg))
    path = _write_report(report, cfg, summary, timeline, run, t0)
    summary["report"] = str(path)
    return summary


@dataclass
class _LiveRun:
    """What every simulated hour of the live days works with and what it records: the private
    stack, its settings and Redis client, the simulated clock (``sim_now["t"]``: the monitor's
    clock and the time of the retrainer's marks), and the timeline rows, monitor checks and
    marks the report is made of."""

    stack: Any
    settings: Settings
    cfg: DriftConfig
    rclient: Any
    sim_now: dict[str, dt.datetime]
    marks: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)


def _stack_env(cfg: DriftConfig) -> dict[str, str]:
    """The private stack's environment: quick item and materialization refreshes, loose
    serving budgets, and the retraining's recency weighting."""
    return {
        "RECSTACK_SERVING__ITEM_REFRESH_S": "1", "RECSTACK_SERVING__MATERIALIZATION_POLL_S": "1",
        "RECSTACK_SERVING__DEADLINE_MS": "1000", "RECSTACK_SERVING__CANDIDATES_BUDGET_MS": "300",
        "RECSTACK_SERVING__RANKING_BUDGET_MS": "300",
        "RECSTACK_SERVING__USER_FEATURES_BUDGET_MS": "200",
        **({"RECSTACK_TRAIN__RECENCY_HALF_LIFE_DAYS": str(cfg.recency_half_life_days)}
           if cfg.recency_half_life_days else {}),
    }


def _bootstrap(stack: Any, settings: Settings, cfg: DriftConfig) -> tuple[Any, Any]:
    """Redis and MLflow, ``warm_days`` of logging-policy traffic, the pipeline and the champion
    (also aliased ``frozen``), the sink; returns the two arms (live, frozen)."""
    stack.start_infra(settings.redis.port, settings.mlflow.port)
    for verb in (("simulate", "--days", str(cfg.warm_days)), ("pipeline",), ("train",)):
        proc = stack.run_cli(*verb)
        if proc.returncode:
            raise RuntimeError(f"bootstrap `recstack {' '.join(verb)}` failed: "
                               f"{(proc.stderr or proc.stdout)[-500:]}")
    _alias_frozen(settings)
    stack.start_sink()
    live = Arm("live", stack.start_api("api-live", "champion"), post_events=True)
    frozen = Arm("frozen", stack.start_api("api-frozen", "frozen"), post_events=False)
    return live, frozen


def _live_days(stack: Any, settings: Settings, cfg: DriftConfig, live: Any, frozen: Any,
               console: Any) -> tuple[_LiveRun, dt.datetime, dt.datetime]:
    """The world and its scenario from the first live day on, the arms' memories warmed with
    the lake's last impressions, the drift monitor, then every live hour played; returns the
    run's record, the first live midnight (``t0``) and the moment the shift starts."""
    marks: list[dict[str, Any]] = []
    world = World.generate(settings.sim)
    scenario = shifted_scenario(cfg.scenario, cfg.shift_day)
    first_live = settings.sim.start_date + dt.timedelta(days=cfg.warm_days)
    t0 = day_start(first_live)
    shift_at = day_start(settings.sim.start_date + dt.timedelta(days=cfg.shift_day))
    marks.append({"kind": "shift", "at": shift_at.isoformat(), "detail": cfg.scenario})
    rclient = redis_lib.Redis.from_url(settings.redis.url)
    warm_memories([live, frozen], world, _last_impressions(settings), t0)
    affected = affected_users(scenario, world, cfg.warm_days + cfg.live_days - 1)
    run = _LiveRun(stack, settings, cfg, rclient, {"t": t0}, marks)
    monitor = _drift_monitor(run, live)
    _play_hours(run, monitor, live, frozen, world, scenario, affected, t0, console)
    return run, t0, shift_at


def _drift_monitor(run: _LiveRun, live: Any) -> Any:
    """The drift monitor on the private stack, sampling the live arm, on the simulated clock; its
    retrainer runs ``recstack retrain`` synchronously (the simulated clock waits) and marks it."""
    def retrainer(cause: str) -> int:
        run.marks.append({"kind": "retrain", "at": run.sim_now["t"].isoformat(), "detail": cause})
        _drain(run.rclient)
        proc = run.stack.run_cli("retrain")
        verdict = _last_line(proc, "gate")
        run.marks.append({"kind": "retrain_done", "at": run.sim_now["t"].isoformat(),
                          "detail": f"exit {proc.returncode}: {verdict}"})
        return proc.returncode

    return DriftMonitor(
        run.settings, redis=run.rclient,
        store=RedisOnlineStore(run.rclient, run.settings.feast.project),
        sample_api=api_sampler(live.url, k=run.cfg.k), retrainer=retrainer,
        clock=lambda: run.sim_now["t"].timestamp(), background_retrain=False)


def _play_hours(run: _LiveRun, monitor: Any, live: Any, frozen: Any, world: Any, scenario: Any,
                affected: np.ndarray, t0: dt.datetime, console: Any) -> None:
    """Every simulated hour of the live days: both arms serve the same requests, the live arm's
    events reach the stream, a new champion is marked as a promotion; then the burn-in's
    pipeline or, after the burn-in, the monitor's check (see ``_watch_hour``)."""
    cfg = run.cfg
    rng = np.random.default_rng([cfg.seed, 9])
    worlds: dict[int, Any] = {}
    last_model = None
    hours = 24 * cfg.live_days
    with Progress(console=console) as progress:
        task = progress.add_task("simulated hours", total=hours)
        for hour in range(hours):
            at = t0 + dt.timedelta(hours=hour)
            run.sim_now["t"] = at
            day_index = cfg.warm_days + hour // 24
            if day_index not in worlds:
                worlds[day_index] = scenario.world_on(world, day_index)
            arms = [live, frozen]
            figures, events = play_hour(arms, worlds[day_index], hour, at,
                                        cfg.requests_per_hour, cfg.k, rng, affected)
            run.rows += [f.row() for f in figures]
            if events:
                post_events(live, events)
            if figures[0].model and figures[0].model != last_model:
                if last_model is not None:
                    run.marks.append({"kind": "promotion", "at": at.isoformat(),
                                      "detail": figures[0].model})
                last_model = figures[0].model
            run.sim_now["t"] = at + dt.timedelta(hours=1)
            if hour < 24 * cfg.burn_in_days:  # the stack "was already running"
                _burn_in_hour(run, monitor, hour)
                progress.update(task, advance=1)
                continue
            _watch_hour(run, monitor, hour)
            progress.update(task, advance=1, description=(
                f"day {day_index} h{hour % 24:02d} "
                f"live {figures[0].row()['fraction_of_oracle']:.2f}"
                f" frozen {figures[1].row()['fraction_of_oracle']:.2f}"))


def _burn_in_hour(run: _LiveRun, monitor: Any, hour: int) -> None:
    """An hour before the monitor watches: it will start at the stream's end; the daily
    pipeline still runs at simulated midnight."""
    monitor.last_id = "$"  # the monitor starts after the burn-in
    if hour % 24 == 23:
        _drain(run.rclient)
        run.stack.run_cli("pipeline")


def _watch_hour(run: _LiveRun, monitor: Any, hour: int) -> None:
    """A watched hour: the monitor's check (recorded, its alerts marked; it may retrain), and at
    simulated midnight the daily feature pipeline (a failure is marked)."""
    if monitor.last_id == "$":
        monitor.last_id = _last_stream_id(run.rclient)
    result = monitor.check()
    run.checks.append({"hour": hour, "at": run.sim_now["t"].isoformat(), **result.values,
                       "alerting": ",".join(result.alerting),
                       "retrain": result.retrain_cause or ""})
    if result.alerting:
        retrainable = [a for a in result.alerting if any(
            a.startswith(p) for p in run.settings.monitor.retrain_signals)]
        run.marks.append({"kind": "alert" if retrainable else "feature_alert",
                          "at": run.sim_now["t"].isoformat(),
                          "detail": ",".join(result.alerting)})
    if hour % 24 == 23:  # simulated midnight: the daily feature pipeline
        _drain(run.rclient)
        proc = run.stack.run_cli("pipeline")
        if proc.returncode:
            run.marks.append({"kind": "pipeline_failed", "at": run.sim_now["t"].isoformat(),
                              "detail": (proc.stderr or "")[-200:]})


def _write_report(report: Any, cfg: DriftConfig, summary: dict[str, Any],
                  timeline: pd.DataFrame, run: _LiveRun, t0: dt.datetime) -> Any:
    """The timeline, checks and marks as CSV, the timeline plot, the figures and the marks;
    returns the finished report's path."""
    marks = run.marks
    report.csv("timeline", timeline)
    report.csv("checks", pd.DataFrame(run.checks))
    report.csv("marks", pd.DataFrame(marks))
    report.figure("timeline", timeline_figure(timeline, marks, t0, cfg),
                  "Fraction of the oracle's expected clicks per simulated hour (6-hour mean), "
                  "live (drift monitor retrains) vs frozen (retraining disabled).")
    report.text("## Figures\n```json\n" + json.dumps(summary, indent=2, default=str) + "\n```")
    report.table(marks, ["kind", "at", "detail"])
    return report.finish(summary, settings_used=asdict(cfg))


def affected_users(scenario: Any, world: Any, day_index: int) -> np.ndarray:
    """Bool mask of the users whose ground truth the scenario changes by ``day_index`` (a
    taste shift's segment); all False for scenarios that change items or events only."""
    shifted = scenario.world_on(world, day_index)
    return np.any(shifted.user_taste != world.user_taste, axis=1)


def _last_impressions(settings: Settings, memory: int = 20) -> dict[int, list[int]]:
    """Each user's last ``memory`` impressions in the lake, oldest first."""
    ev = read_events(settings.lake_dir).to_pandas()
    ev = ev[ev["event_type"] == "impression"].sort_values("ts")
    tail = ev.groupby("user_id").tail(memory)
    return {int(u): g["item_id"].astype(int).tolist() for u, g in tail.groupby("user_id")}


def _alias_frozen(settings: Settings) -> None:
    client = MlflowClient(settings.mlflow.uri, settings.mlflow.uri)
    for name in (settings.mlflow.candidates_model, settings.mlflow.ranker_model):
        mv = client.get_model_version_by_alias(name, settings.mlflow.serving_alias)
        client.set_registered_model_alias(name, "frozen", mv.version)


def _drain(client: Any, timeout_s: float = 60.0) -> None:
    """Wait until the sink has written and acknowledged everything in the stream."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            groups = client.xinfo_groups(EVENTS_STREAM)
        except Exception:  # noqa: BLE001 - no stream yet
            return
        if groups and all((g.get("lag") or 0) == 0 and g.get("pending", 0) == 0 for g in groups):
            return
        time.sleep(0.3)
    logger.warning("the sink did not drain the stream in %.0fs", timeout_s)


def _last_stream_id(client: Any) -> str:
    """The id of the newest stream entry now (the monitor reads what comes after it)."""
    entries = client.xrevrange(EVENTS_STREAM, count=1)
    if not entries:
        return "0-0"
    entry_id = entries[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def _last_line(proc: Any, word: str) -> str:
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if word in ln.lower()]
    return lines[-1].strip()[-200:] if lines else ""


def summarize(timeline: pd.DataFrame, marks: list[dict[str, Any]], shift_at: dt.datetime,
              t0: dt.datetime, cfg: DriftConfig) -> dict[str, Any]:
    """The figures the issue names, from the hourly timeline and the marks."""
    out: dict[str, Any] = {"scenario": cfg.scenario, "shift_at": shift_at.isoformat()}
    shift_h = (shift_at - t0).total_seconds() / 3600

    def at_h(mark: dict[str, Any]) -> float:
        return (dt.datetime.fromisoformat(mark["at"]) - t0).total_seconds() / 3600

    alerts = [m for m in marks if m["kind"] == "alert"]
    after = [at_h(m) for m in alerts if at_h(m) > shift_h]
    out["alerts_before_shift"] = sum(1 for m in alerts if at_h(m) <= shift_h)
    feature = [m for m in marks if m["kind"] == "feature_alert"]
    out["feature_psi_alert_checks_before_shift"] = sum(1 for m in feature if at_h(m) <= shift_h)
    out["feature_psi_alert_checks_after_shift"] = sum(1 for m in feature if at_h(m) > shift_h)
    out["drift_detection_delay_sim_days"] = (
        round((after[0] - shift_h) / 24, 3) if after else None)
    retrains = [at_h(m) for m in marks if m["kind"] == "retrain"]
    promotions = [at_h(m) for m in marks if m["kind"] == "promotion"]
    out["retrains"] = len(retrains)
    out["promotions"] = len(promotions)
    out["first_retrain_delay_sim_days"] = next(
        (round((h - shift_h) / 24, 3) for h in retrains if h > shift_h), None)
    for arm in ("live", "frozen"):
        t = timeline[timeline["arm"] == arm].sort_values("hour")
        out.update(_segment_fractions(t, arm, shift_h, cfg.recovery_level))
        frac = (t["expected_clicks"].rolling(6, min_periods=6).sum()
                / t["oracle_clicks"].rolling(6, min_periods=6).sum())
        pre = t[(t["hour"] < shift_h) & (t["hour"] >= shift_h - 12)]
        pre_frac = pre["expected_clicks"].sum() / pre["oracle_clicks"].sum()
        last = t[t["hour"] >= t["hour"].max() - 11]
        end_frac = last["expected_clicks"].sum() / last["oracle_clicks"].sum()
        post = t[t["hour"] >= shift_h]
        low = (post["expected_clicks"].rolling(6).sum() / post["oracle_clicks"].rolling(6).sum())
        out[f"{arm}_pre_shift_fraction_of_oracle"] = round(float(pre_frac), 4)
        out[f"{arm}_min_fraction_of_oracle_6h"] = round(float(low.min()), 4)
        out[f"{arm}_final_12h_fraction_of_oracle"] = round(float(end_frac), 4)
        out[f"{arm}_ctr_recovery_fraction"] = round(float(end_frac / pre_frac), 4)
        rec_h = recovery_hour(t["hour"].to_numpy(float), frac.to_numpy(float),
                              cfg.recovery_level * pre_frac, shift_h)
        out[f"{arm}_ctr_recovery_time_sim_days"] = (
            round((rec_h - shift_h) / 24, 3) if rec_h is not None else None)
    return out


def recovery_hour(hours: np.ndarray, frac: np.ndarray, level: float, shift_h: float,
                  hold_h: int = RECOVERY_HOLD_H) -> float | None:
    """When the rolling fraction of the oracle is back for good: the first hour after its
    first dip below ``level`` (after ``shift_h``) from which it stays at or above ``level``
    for ``hold_h`` consecutive hourly points; ``shift_h`` when it never dipped, None when it
    does not come back (a brief crossing that falls again does not count)."""
    after = hours >= shift_h
    ok = np.where(np.isnan(frac), False, frac >= level - 1e-12)
    dipped = np.flatnonzero(after & ~ok & ~np.isnan(frac))
    if len(dipped) == 0:
        return shift_h
    run = 0
    for i in range(int(dipped[0]) + 1, len(hours)):
        run = run + 1 if ok[i] else 0
        if run == hold_h:
            return float(hours[i - hold_h + 1])
    return None


def _segment_fractions(t: pd.DataFrame, arm: str, shift_h: float,
                       level: float = 0.9) -> dict[str, float]:
    """Pre-shift and final-12 h fractions of the oracle of the users the scenario affects and
    of the others (when the timeline splits them), and the 12 h before the pre-shift window:
    a reviewer sees where a loss is (the shifted segment or everyone) and whether the
    pre-shift baseline was flat (steady state) or still moving."""
    out: dict[str, float] = {}
    last = t[t["hour"] >= t["hour"].max() - 11]
    pre = t[(t["hour"] < shift_h) & (t["hour"] >= shift_h - 12)]
    before = t[(t["hour"] < shift_h - 12) & (t["hour"] >= shift_h - 24)]
    if len(before) and before["oracle_clicks"].sum() > 0:
        out[f"{arm}_pre_shift_previous_12h_fraction_of_oracle"] = round(float(
            before["expected_clicks"].sum() / before["oracle_clicks"].sum()), 4)
    if "affected_oracle_clicks" not in t or t["affected_oracle_clicks"].sum() <= 0:
        return out

    def sums(part: pd.DataFrame, seg: str) -> tuple[float, float]:
        e, o = part["affected_expected_clicks"].sum(), part["affected_oracle_clicks"].sum()
        if seg == "unaffected":
            e, o = part["expected_clicks"].sum() - e, part["oracle_clicks"].sum() - o
        return float(e), float(o)

    hit = t.sort_values("hour")
    seg_frac = (hit["affected_expected_clicks"].rolling(6, min_periods=6).sum()
                / hit["affected_oracle_clicks"].rolling(6, min_periods=6).sum())
    e0, o0 = sums(pre, "affected")
    if o0:
        rec = recovery_hour(hit["hour"].to_numpy(float), seg_frac.to_numpy(float),
                            level * e0 / o0, shift_h)
        out[f"{arm}_affected_ctr_recovery_time_sim_days"] = (
            round((rec - shift_h) / 24, 3) if rec is not None else None)
    for seg in ("affected", "unaffected"):
        fracs = []
        for label, part in (("pre_shift", pre), ("final_12h", last)):
            e, o = sums(part, seg)
            fracs.append(e / o if o else float("nan"))
            out[f"{arm}_{seg}_{label}_fraction_of_oracle"] = round(fracs[-1], 4)
        out[f"{arm}_{seg}_ctr_recovery_fraction"] = (
            round(fracs[1] / fracs[0], 4) if fracs[0] else float("nan"))
    return out
