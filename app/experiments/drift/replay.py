"""False drift alarms, measured cheaply: an offline replay of the monitor's event-stream
detectors (online CTR vs its baseline, overall and per user segment; event integrity) over a
7-day simulated run without a scenario, hour by hour, on the lake's logging-policy traffic. (The live loop would need a week
of served traffic; the detectors only see the events either way, and features are not
replayed here.)"""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.events import CtrTracker, EventBatch, SegmentCtr, drop_signal_value
from monitoring.monitor import MAX_NULL_MODEL_VERSION, MAX_REQUESTS_WITHOUT_TOP, user_segments
from monitoring.trigger import AlertState, Signal
from recstack.lake import read_events
from recstack.settings import Settings
from simulator.generate import simulate


def replay_alarms(events: pd.DataFrame, settings: Settings,
                  segments: dict[int, str] | None = None) -> dict[str, Any]:
    """Feed ``events`` (lake rows) to the detectors one simulated hour at a time;
    ``segments`` (user id -> segment) adds the per-segment CTR test, as the monitor has it."""
    cfg = settings.monitor
    ctr = CtrTracker(cfg.ctr_baseline_impressions, cfg.ctr_window_impressions)
    by_segment = SegmentCtr(cfg.ctr_segment_window_impressions,
                            cfg.ctr_segment_baseline_impressions)
    state = AlertState(cfg.consecutive)
    alarms_by: dict[str, int] = {}
    events = events.sort_values("ts")
    hours = events["ts"].dt.floor("h")
    onsets, alerting_checks, checks = 0, 0, 0
    was = False
    for _, chunk in events.groupby(hours):
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
        alerting = state.update(signals)
        checks += 1
        alerting_checks += bool(alerting)
        if alerting and not was:
            onsets += 1
            for a in alerting:
                alarms_by[a.name] = alarms_by.get(a.name, 0) + 1
        was = bool(alerting)
    return {"checks": checks, "alerting_checks": alerting_checks, "alarms": onsets,
            "alarms_by_signal": alarms_by}


def false_alarms(base: Settings, cfg: Any, days: int = 7) -> dict[str, Any]:
    """Simulate ``days`` days without a scenario into a scratch home and replay them."""
    with tempfile.TemporaryDirectory(prefix="recstack-replay-") as tmp:
        s = base.model_copy(update={"home": Path(tmp), "sim": base.sim.model_copy(update={
            "n_users": cfg.n_users, "n_items": cfg.n_items, "n_categories": cfg.n_categories,
            "seed": cfg.seed + 1, "days": days,
            # as many requests a day as the live run serves (a session is one request)
            "sessions_per_user_per_day": cfg.requests_per_hour * 24 / cfg.n_users})})
        simulate(s, days=days)
        events = read_events(s.lake_dir).to_pandas()
        segments = (user_segments(s, s.monitor.ctr_segment_by)
                    if s.monitor.ctr_segment_by else None)
    out = replay_alarms(events, s, segments)
    return {"false_alarms_7d_no_scenario": out["alarms"],
            "false_alarm_checks_7d": out["checks"],
            "false_alarms_by_signal": out["alarms_by_signal"],
            "false_alarm_method": "offline replay of the event-stream detectors (CTR, CTR "
                                  f"per {s.monitor.ctr_segment_by or 'nothing'}, integrity) over "
                                  f"{days} simulated days of logging-policy "
                                  f"traffic without a scenario, checked hourly",
            "false_alarm_run_started": dt.date.isoformat(s.sim.start_date)}
