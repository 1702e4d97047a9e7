"""The false-alarm replay's feature-drift detectors: quiet on stationary features, alerting
on a planted shift, and reading each check's values as of its own midnight."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from app.experiments.drift.replay import FeatureReplay, replay_alarms
from monitoring.features import newest_as_of
from recstack.clock import day_start
from recstack.schemas import ITEM_FEATURES, USER_FEATURES
from recstack.settings import Settings
from training.train import feature_reference

START = dt.date(2026, 1, 1)
N_USERS, N_ITEMS, DAYS = 2000, 400, 4


def _tables(shift_from_day: int | None, rng: np.random.Generator
            ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily snapshots (stamped at the next midnight, as the pipeline writes them); from
    ``shift_from_day`` on, the users' CTR moves far from its earlier distribution."""
    users, items = [], []
    for d in range(DAYS):
        stamp = pd.Timestamp(day_start(START + dt.timedelta(days=d + 1)))
        u = {n: rng.gamma(20.0, 1.0, N_USERS) for n in USER_FEATURES}
        u["user_ctr_7d"] = rng.beta(2, 20, N_USERS)
        if shift_from_day is not None and d + 1 >= shift_from_day:
            u["user_ctr_7d"] = rng.beta(20, 2, N_USERS)
        users.append(pd.DataFrame({"user_id": np.arange(N_USERS), "event_timestamp": stamp, **u}))
        i = {n: rng.gamma(50.0, 1.0, N_ITEMS) for n in ITEM_FEATURES}
        items.append(pd.DataFrame({"item_id": np.arange(N_ITEMS), "event_timestamp": stamp, **i}))
    return pd.concat(users, ignore_index=True), pd.concat(items, ignore_index=True)


def _events(rng: np.random.Generator) -> pd.DataFrame:
    """One impression per request, 100 requests an hour, every hour of every day."""
    rows = []
    for h in range(DAYS * 24):
        t = pd.Timestamp(day_start(START)) + pd.Timedelta(hours=h)
        for r in range(100):
            rows.append({"ts": t + pd.Timedelta(seconds=r), "event_type": "impression",
                         "user_id": int(rng.integers(N_USERS)),
                         "item_id": int(rng.integers(N_ITEMS)), "request_id": f"{h}-{r}",
                         "position": 0, "model_version": "1"})
    ev = pd.DataFrame(rows)
    ev["day"] = ev["ts"].dt.date
    return ev


def _replay(shift_from_day: int | None) -> dict:
    rng = np.random.default_rng(5)
    users, items = _tables(shift_from_day, rng)
    events = _events(rng)
    settings = Settings()
    holdout = START + dt.timedelta(days=1)
    day = events[events["day"] == holdout]
    rows = (day[["user_id", "item_id"]]
            .join(newest_as_of(users, "user_id", day_start(holdout)), on="user_id")
            .join(newest_as_of(items, "item_id", day_start(holdout)), on="item_id"))
    feats = FeatureReplay(settings, feature_reference(rows, [*USER_FEATURES, *ITEM_FEATURES]),
                          users, items)
    return replay_alarms(events[events["day"] > holdout], settings, None, feats)


def test_stationary_features_raise_no_feature_alarm() -> None:
    out = _replay(None)
    assert out["checks"] == 48
    assert set(out["max_psi"]) == {f"psi_{n}" for n in [*USER_FEATURES, *ITEM_FEATURES]}
    assert max(out["max_psi"].values()) < Settings().monitor.psi_threshold
    assert not any(k.startswith("psi_") for k in out["alarms_by_signal"])


def test_a_planted_feature_shift_alarms_on_that_feature_only() -> None:
    out = _replay(shift_from_day=3)  # the last replayed day's midnight
    assert out["alarms_by_signal"].get("psi_user_ctr_7d") == 1
    assert out["max_psi"]["psi_user_ctr_7d"] > 1.0
    assert [k for k in out["alarms_by_signal"] if k.startswith("psi_")] == ["psi_user_ctr_7d"]


def test_as_of_takes_the_newest_row_at_or_before_the_moment() -> None:
    table = pd.DataFrame({"user_id": [1, 1, 2], "v": [1.0, 2.0, 3.0],
                          "event_timestamp": pd.to_datetime(
                              ["2026-01-02", "2026-01-03", "2026-01-04"]).tz_localize("UTC")})
    got = newest_as_of(table, "user_id", day_start(dt.date(2026, 1, 3)))
    assert got.to_dict("index") == {1: {"v": 2.0}}
    with pytest.raises(KeyError):
        got.loc[2]
