"""False drift alarms, measured cheaply: an offline replay of the monitor's detectors over a
7-day simulated run without a scenario, hour by hour, on the lake's logging-policy traffic:
the event-stream detectors (online CTR vs its baseline, overall and per user segment; event
integrity) and the feature-drift detectors (PSI of the sampled users' and items' features
against the reference a champion trained on the warm days would carry). The live loop would
need a week of served traffic; the detectors see the events and the materialized features
either way.

The features are the feature pipeline's offline tables read as of each day's midnight: what the
online store holds after the daily materialization (the monitor's skew check compares the same
two)."""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from monitoring.events import CtrTracker, EventBatch, SegmentCtr, drop_signal_value
from monitoring.features import newest_as_of
from monitoring.monitor import (
    MAX_NULL_MODEL_VERSION,
    MAX_REQUESTS_WITHOUT_TOP,
    RECENT_USERS,
    feature_sample,
    user_segments,
)
from monitoring.stats import psi_against_reference
from monitoring.trigger import AlertState, Signal
from pipelines import features as feature_pipeline
from pipelines.run import feature_argv
from recstack.clock import day_start
from recstack.lake import read_events
from recstack.schemas import ITEM_FEATURES, ITEM_FEATURES_FILE, USER_FEATURES, USER_FEATURES_FILE
from recstack.settings import Settings
from simulator.generate import simulate
from training.train import feature_reference


class FeatureReplay:
    """The monitor's feature check (``DriftChecks._features``) on offline tables: per check,
    users sampled from the recent impressions and items from the catalogue, their values as of
    the check's midnight, PSI against ``reference`` per feature."""

    def __init__(self, settings: Settings, reference: dict[str, dict[str, float]],
                 users: pd.DataFrame, items: pd.DataFrame) -> None:
        self.cfg = settings.monitor
        self.reference = reference
        self.users, self.items = users, items
        self.catalogue = np.sort(items["item_id"].unique())
        self.recent_users: deque[int] = deque(maxlen=RECENT_USERS)
        self._rows: dict[tuple[str, dt.datetime], pd.DataFrame] = {}  # one as-of read a day

    @classmethod
    def from_tables(cls, settings: Settings, events: pd.DataFrame, holdout_day: dt.date
                    ) -> FeatureReplay:
        """The tables under ``settings.features_dir``; the reference from ``holdout_day``'s
        impressions with the features as of its midnight, as training builds it."""
        users = pd.read_parquet(settings.features_dir / USER_FEATURES_FILE,
                                columns=["user_id", "event_timestamp", *USER_FEATURES])
        items = pd.read_parquet(settings.features_dir / ITEM_FEATURES_FILE,
                                columns=["item_id", "event_timestamp", *ITEM_FEATURES])
        day = events[(events["day"] == holdout_day) & (events["event_type"] == "impression")]
        at = day_start(holdout_day)
        rows = (day[["user_id", "item_id"]]
                .join(newest_as_of(users, "user_id", at), on="user_id")
                .join(newest_as_of(items, "item_id", at), on="item_id"))
        return cls(settings, feature_reference(rows, [*USER_FEATURES, *ITEM_FEATURES]),
                   users, items)

    def _at(self, table: pd.DataFrame, key: str, midnight: dt.datetime) -> pd.DataFrame:
        if (key, midnight) not in self._rows:
            self._rows[(key, midnight)] = newest_as_of(table, key, midnight)
        return self._rows[(key, midnight)]

    def signals(self, hour: pd.Timestamp, batch: EventBatch, check_no: int) -> list[Signal]:
        self.recent_users.extend(batch.user_impressions)
        users, items = feature_sample(np.random.default_rng(check_no), self.recent_users,
                                      self.catalogue, self.cfg.sample_users,
                                      self.cfg.sample_items)
        midnight = day_start(hour.date())
        out = []
        for ids, table, key, names in ((users, self.users, "user_id", USER_FEATURES),
                                       (items, self.items, "item_id", ITEM_FEATURES)):
            if not ids:
                continue
            values = self._at(table, key, midnight).reindex(ids)
            for name in names:
                x = values[name].to_numpy(dtype=np.float64)
                if len(x) >= self.cfg.psi_min_rows and name in self.reference:
                    out.append(Signal(f"psi_{name}",
                                      psi_against_reference(self.reference[name], x),
                                      self.cfg.psi_threshold))
        return out


def replay_alarms(events: pd.DataFrame, settings: Settings,
                  segments: dict[int, str] | None = None,
                  features: FeatureReplay | None = None) -> dict[str, Any]:
    """Feed ``events`` (lake rows) to the detectors one simulated hour at a time;
    ``segments`` (user id -> segment) adds the per-segment CTR test, as the monitor has it;
    ``features`` the feature-drift detectors."""
    cfg = settings.monitor
    ctr = CtrTracker(cfg.ctr_baseline_impressions, cfg.ctr_window_impressions)
    by_segment = SegmentCtr(cfg.ctr_segment_window_impressions,
                            cfg.ctr_segment_baseline_impressions)
    state = AlertState(cfg.consecutive)
    alarms_by: dict[str, int] = {}
    events = events.sort_values("ts")
    hours = events["ts"].dt.floor("h")
    onsets, alerting_checks, checks = 0, 0, 0
    top_psi: dict[str, float] = {}
    was = False
    for hour, chunk in events.groupby(hours):
        rows = chunk[["event_type", "user_id", "item_id", "request_id", "position",
                      "model_version"]].to_dict("records")
        for r in rows:
            if pd.isna(r["position"]):
                r["position"] = None
        batch = EventBatch.from_events(rows, segments.get if segments else None)
        ctr.add(batch)
        ratio, z = ctr.signal()
        signals = [Signal("online_ctr_ratio", drop_signal_value(ratio, z, cfg.ctr_drop, cfg.ctr_z),
                          1 - cfg.ctr_drop, above=False)]
        if segments:
            by_segment.add(batch)
            _, r, sz = by_segment.worst()
            signals.append(Signal("online_ctr_ratio_segment",
                                  drop_signal_value(r, sz, cfg.ctr_drop, cfg.ctr_segment_z),
                                  1 - cfg.ctr_drop, above=False))
        if batch.events:
            signals.append(Signal("events_null_model_version",
                                  batch.null_model_version / batch.events, MAX_NULL_MODEL_VERSION))
        if batch.requests:
            signals.append(Signal("events_without_top_position",
                                  batch.requests_without_top / batch.requests,
                                  MAX_REQUESTS_WITHOUT_TOP))
        if features is not None:
            psis = features.signals(hour, batch, checks)
            for sig in psis:
                top_psi[sig.name] = max(top_psi.get(sig.name, 0.0), sig.value)
            signals += psis
        alerting = state.update(signals)
        checks += 1
        alerting_checks += bool(alerting)
        if alerting and not was:
            onsets += 1
            for a in alerting:
                alarms_by[a.name] = alarms_by.get(a.name, 0) + 1
        was = bool(alerting)
    return {"checks": checks, "alerting_checks": alerting_checks, "alarms": onsets,
            "alarms_by_signal": alarms_by, "max_psi": {k: round(v, 4) for k, v in top_psi.items()}}


def false_alarms(base: Settings, cfg: Any, days: int = 7) -> dict[str, Any]:
    """Simulate ``cfg.warm_days`` + ``days`` days without a scenario into a scratch home, run
    the feature pipeline, and replay the last ``days`` against a reference from the last warm
    day (where the live run's champion has its holdout)."""
    with tempfile.TemporaryDirectory(prefix="recstack-replay-") as tmp:
        s = base.model_copy(update={"home": Path(tmp), "sim": base.sim.model_copy(update={
            "n_users": cfg.n_users, "n_items": cfg.n_items, "n_categories": cfg.n_categories,
            "seed": cfg.seed + 1, "days": cfg.warm_days + days,
            # as many requests a day as the live run serves (a session is one request)
            "sessions_per_user_per_day": cfg.requests_per_hour * 24 / cfg.n_users})})
        simulate(s, days=cfg.warm_days + days)
        events = read_events(s.lake_dir).to_pandas()
        events["day"] = events["ts"].dt.date
        segments = (user_segments(s, s.monitor.ctr_segment_by)
                    if s.monitor.ctr_segment_by else None)
        feature_pipeline.run(feature_argv(s))
        first = s.sim.start_date + dt.timedelta(days=cfg.warm_days)
        feats = FeatureReplay.from_tables(s, events, first - dt.timedelta(days=1))
    out = replay_alarms(events[events["day"] >= first], s, segments, feats)
    return {"false_alarms_7d_no_scenario": out["alarms"],
            "false_alarm_checks_7d": out["checks"],
            "false_alarms_by_signal": out["alarms_by_signal"],
            # the highest PSI per feature over the replay (drift above psi_threshold)
            "false_alarm_max_psi": out["max_psi"],
            "false_alarm_method": "offline replay of the event-stream detectors (CTR, CTR "
                                  f"per {s.monitor.ctr_segment_by or 'nothing'}, integrity) and "
                                  "the feature-drift detectors (PSI per feature) over "
                                  f"{days} simulated days of logging-policy "
                                  f"traffic without a scenario, checked hourly",
            "false_alarm_run_started": dt.date.isoformat(s.sim.start_date)}
