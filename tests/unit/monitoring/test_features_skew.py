"""Feature drift through a fake online store, and the training-serving skew check against
offline point-in-time rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from monitoring.features import offline_point_in_time, skew
from monitoring.monitor import DriftMonitor
from monitoring.references import ChampionReference
from recstack.schemas import ITEM_FEATURES, ITEM_FEATURES_FILE, USER_FEATURES, USER_FEATURES_FILE
from recstack.settings import Settings

UTC = dt.UTC


class FakeStore:
    """``get_online_features(...).to_dict()`` over in-memory rows keyed by entity id."""

    def __init__(self, users: dict[int, dict], items: dict[int, dict]) -> None:
        self.users, self.items = users, items

    def get_online_features(self, features: list[str], entity_rows: list[dict]):
        key = next(iter(entity_rows[0]))
        table = self.users if key == "user_id" else self.items
        names = [f.split(":", 1)[1] for f in features]
        out = {n: [table.get(r[key], {}).get(n) for r in entity_rows] for n in names}

        class R:
            def to_dict(self_inner):
                return out
        return R()


def _offline(settings: Settings) -> pd.DataFrame:
    rows = []
    for day in (1, 2):
        for u in range(5):
            rows.append({"user_id": u, "event_timestamp": dt.datetime(2026, 1, day + 1, tzinfo=UTC),
                         **{n: float(u * 10 + day) for n in USER_FEATURES}})
    frame = pd.DataFrame(rows)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(settings.features_dir / USER_FEATURES_FILE)
    frame.rename(columns={"user_id": "item_id"}).to_parquet(settings.features_dir / ITEM_FEATURES_FILE)
    return frame


def test_offline_point_in_time_takes_the_newest_row_not_after(settings: Settings) -> None:
    _offline(settings)
    got = offline_point_in_time(settings, [1, 2], dt.datetime(2026, 1, 2, 12, tzinfo=UTC))
    assert got.loc[1, USER_FEATURES[0]] == 11.0  # day-1 snapshot, not the later one
    got = offline_point_in_time(settings, [1], dt.datetime(2026, 1, 5, tzinfo=UTC))
    assert got.loc[1, USER_FEATURES[0]] == 12.0


def test_skew_zero_when_online_matches_and_counts_mismatches(settings: Settings) -> None:
    _offline(settings)
    at = dt.datetime(2026, 1, 5, tzinfo=UTC)
    online = {u: {n: float(u * 10 + 2) for n in USER_FEATURES} for u in range(5)}
    assert skew(settings, FakeStore(online, {}), list(range(5)), at) == (0.0, 20)
    online[3][USER_FEATURES[1]] = 999.0  # one stale/wrong value of 20
    ratio, n = skew(settings, FakeStore(online, {}), list(range(5)), at)
    assert (ratio, n) == (1 / 20, 20)


def test_feature_psi_signals_from_sampled_users(settings: Settings, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    ref = {}
    train = rng.normal(size=20_000)
    for n in USER_FEATURES + ITEM_FEATURES:
        ref[n] = {"nan_share": 0.0, **{f"q{int(q * 100):02d}": float(np.quantile(train, q))
                                       for q in (0.01, 0.1, 0.5, 0.9, 0.99)}}
    users = {u: {n: float(rng.normal()) for n in USER_FEATURES} for u in range(300)}
    for u in users:  # one feature shifted by 1.5 standard deviations
        users[u]["user_ctr_7d"] += 1.5
    items = {i: {n: float(rng.normal()) for n in ITEM_FEATURES} for i in range(300)}
    champion = ChampionReference({"ranker": "1"}, {"ranker": 0.0}, features=ref)

    class Stream:
        def __init__(self) -> None:
            self.sent = False

        def xrange(self, *a, **k):
            if self.sent:
                return []
            self.sent = True
            return [(f"{i}-0".encode(), {b"event_type": b"impression", b"user_id": str(i).encode(),
                                         b"item_id": str(i).encode(), b"request_id": str(i).encode(),
                                         b"position": b"0", b"model_version": b"v1"})
                    for i in range(300)]

    monitor = DriftMonitor(settings, redis=Stream(), store=FakeStore(users, items),
                           reference_loader=lambda: champion, retrainer=lambda c: 0,
                           background_retrain=False)
    result = monitor.check()
    assert result.values["psi_user_ctr_7d"] > 0.25
    assert max(v for k, v in result.values.items()
               if k.startswith("psi_") and k != "psi_user_ctr_7d") < 0.1
    assert [s.name for s in result.signals if s.breached] == ["psi_user_ctr_7d"]


def test_only_retrain_signals_start_a_retraining(settings: Settings) -> None:
    from monitoring.trigger import Signal

    calls: list[str] = []
    s = settings.model_copy(update={"monitor": settings.monitor.model_copy(
        update={"consecutive": 1, "cooldown_s": 0.0})})
    monitor = DriftMonitor(s.model_copy(update={"monitor": s.monitor.model_copy(
        update={"cooldown_s": 3600.0})}), redis=None, retrainer=lambda c: calls.append(c) or 0,
        background_retrain=False, reference_loader=lambda: None, clock=lambda: 5000.0)
    from monitoring.monitor import CheckResult

    count_drift = [Signal("psi_user_impressions_7d", 0.9, 0.25)]
    monitor._maybe_retrain(count_drift, CheckResult(at=0.0, alerting=["psi_user_impressions_7d"]))
    assert calls == [] and monitor.cooldown.last is None  # an alert-only signal: no cool-down
    ctr_drift = [Signal("psi_user_impressions_7d", 0.9, 0.25),
                 Signal("online_ctr_ratio", 0.6, 0.85, above=False)]
    result = CheckResult(at=1.0, alerting=[x.name for x in ctr_drift])
    monitor._maybe_retrain(ctr_drift, result)
    assert calls == ["online_ctr_ratio=0.6 < 0.85"] and result.retrain_cause == calls[0]
