"""The online CTR per user segment: a drop in one country that the overall CTR test misses
alerts, names the segment, starts the retraining and is what the episode then follows; no
alarm without a drop; the false-alarm replay runs the same test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from monitoring.events import EventBatch, SegmentCtr
from monitoring.monitor import DriftMonitor, user_segments
from monitoring.references import ChampionReference
from recstack import lake
from recstack.schemas import USER_SCHEMA
from recstack.settings import Settings

N_USERS = 100
COUNTRY = {u: ("us" if u < 30 else "de") for u in range(N_USERS)}  # 30% of users in "us"


def events(ctr: dict[str, float], version: str, seed: int) -> list[dict]:
    """One check's events: every user sees 10 items; clicks at the user's country's CTR."""
    rng = np.random.default_rng(seed)
    out = []
    for u in range(N_USERS):
        for p in range(10):
            base = {"user_id": str(u), "item_id": str(p), "request_id": f"{seed}-{u}",
                    "position": str(p), "model_version": version}
            out.append({**base, "event_type": "impression"})
            if rng.random() < ctr[COUNTRY[u]]:
                out.append({**base, "event_type": "click"})
    return out


class Stream:
    def __init__(self) -> None:
        self.pending: list = []
        self.n = 0

    def push(self, rows: list[dict]) -> None:
        for r in rows:
            self.n += 1
            self.pending.append((f"{self.n}-0".encode(),
                                 {k.encode(): v.encode() for k, v in r.items()}))

    def xrange(self, *a, count: int, **k):
        out, self.pending = self.pending[:count], self.pending[count:]
        return out


def test_segment_batches_split_impressions_and_clicks_by_segment() -> None:
    batch = EventBatch.from_events(events({"us": 1.0, "de": 0.0}, "v1", 0), COUNTRY.get)
    assert batch.segments["us"].impressions["v1"] == 300 == batch.segments["us"].clicks["v1"]
    assert batch.segments["de"].impressions["v1"] == 700 and not batch.segments["de"].clicks
    assert batch.impressions["v1"] == 1000  # the overall figures are unchanged
    seg = SegmentCtr(window_impressions=300, baseline_impressions=300)
    seg.add(EventBatch.from_events(events({"us": 0.1, "de": 0.1}, "v1", 1), COUNTRY.get))
    assert seg.signals() == {} and seg.worst()[0] is None  # windows full, baselines empty
    seg.add(EventBatch.from_events(events({"us": 0.1, "de": 0.1}, "v1", 2), COUNTRY.get))
    assert set(seg.signals()) == {"us", "de"}
    seg.add(EventBatch.from_events(events({"us": 0.0, "de": 0.1}, "v1", 3), COUNTRY.get))
    assert seg.worst()[0] == "us" and seg.worst()[1] == 0.0  # its window: no click


def _monitor(settings: Settings, stream: Stream, calls: list[str]) -> tuple[DriftMonitor, dict]:
    lake.write_users(pa.table({"user_id": list(COUNTRY), "country": list(COUNTRY.values()),
                               "device": ["mobile"] * N_USERS}, schema=USER_SCHEMA),
                     settings.lake_dir)
    s = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={
        "ctr_baseline_impressions": 3000, "ctr_window_impressions": 3000, "ctr_z": 3.0,
        "ctr_segment_window_impressions": 600, "ctr_segment_baseline_impressions": 1800,
        "ctr_segment_z": 3.5, "consecutive": 2,
        "cooldown_s": 10.0, "episode_new_day_hours": 0.0})})
    now = {"t": 0.0}
    ref = ChampionReference({"ranker": "1"}, {"ranker": 0.0})
    m = DriftMonitor(s, redis=stream, retrainer=lambda c: calls.append(c) or 0,
                     clock=lambda: now["t"], background_retrain=False,
                     reference_loader=lambda: ref)
    return m, now


def test_a_drop_in_one_country_alerts_retrains_and_is_followed(settings: Settings) -> None:
    stream, calls = Stream(), []
    m, now = _monitor(settings, stream, calls)
    assert user_segments(m.settings, "country") == COUNTRY

    def step(ctr: dict[str, float], version: str, seed: int):
        stream.push(events(ctr, version, seed))
        result = m.check()
        now["t"] += 86_400  # a check a day: every follow-up is on a new day
        return result

    for i in range(6):
        step({"us": 0.10, "de": 0.10}, "v1", i)
    assert not calls
    results = [step({"us": 0.03, "de": 0.10}, "v1", 10 + i) for i in range(3)]
    # Overall the CTR fell by 21% but "us" by 70%: the segment test fires first.
    assert len(calls) == 1 and "online_ctr_ratio_country" in calls[0] and "country=us" in calls[0]
    assert all(r.values["ctr_segment_ratio"] < 0.5 for r in results[1:])
    assert m.episode is not None and m.episode["segment"] == "us"
    for i in range(2):  # v2 is no better for "us": the episode retrains again
        step({"us": 0.03, "de": 0.10}, "v2", 20 + i)
    assert len(calls) == 2 and "online CTR of us not recovered" in calls[1]
    for i in range(2):  # v3 is back: the episode ends
        step({"us": 0.10, "de": 0.10}, "v3", 30 + i)
    assert m.episode is None and len(calls) == 2


def test_no_alarm_without_a_drop_and_the_replay_counts_the_segment_test(
        settings: Settings) -> None:
    from app.experiments.drift.replay import replay_alarms

    stream, calls = Stream(), []
    m, now = _monitor(settings, stream, calls)
    for i in range(20):
        stream.push(events({"us": 0.10, "de": 0.10}, "v1", 100 + i))
        assert not m.check().alerting
    assert not calls

    def frame(drop_from: int) -> pd.DataFrame:
        rows = []
        for hour in range(12):
            ctr = {"us": 0.03 if hour >= drop_from else 0.10, "de": 0.10}
            for r in events(ctr, "v1", 200 + hour):
                rows.append({**r, "user_id": int(r["user_id"]), "item_id": int(r["item_id"]),
                             "position": int(r["position"]),
                             "ts": pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(hours=hour)})
        return pd.DataFrame(rows)

    flat = replay_alarms(frame(99), m.settings, COUNTRY)
    assert flat["alarms"] == 0 and flat["checks"] == 12
    dropped = replay_alarms(frame(6), m.settings, COUNTRY)
    assert dropped["alarms_by_signal"] == {"online_ctr_ratio_segment": 1}
    assert replay_alarms(frame(6), m.settings)["alarms"] == 0  # the overall test alone misses it
