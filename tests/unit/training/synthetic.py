"""A tiny synthetic world for the training tests: lake events, labels, popular, and a fake Feast.

Users and items fall in 3 taste groups; a user clicks items of their own group far more often,
so a working candidate model and ranker must beat random on it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa

from recstack import lake
from recstack.clock import day_start
from recstack.schemas import (
    EVENT_SCHEMA,
    ITEM_FEATURE_VIEW,
    ITEM_FEATURES,
    ITEM_SCHEMA,
    LABELS_FILE,
    POPULAR_FILE,
    RANKER_V2_USER_CATEGORY_FEATURES,
    USER_CATEGORY_FEATURE_VIEW,
    USER_FEATURE_VIEW,
    USER_FEATURES,
)
from recstack.settings import Settings

GROUPS = 3


def make_events(n_users: int = 40, n_items: int = 30, days: int = 3, list_size: int = 6,
                seed: int = 0, start: dt.date = dt.date(2026, 1, 1)) -> pd.DataFrame:
    """Impressions and clicks (EVENT_SCHEMA columns) with a planted group structure."""
    rng = np.random.default_rng(seed)
    rows = []
    for d in range(days):
        t0 = day_start(start + dt.timedelta(days=d))
        for user in range(n_users):
            for session in range(2):
                request = f"r{d}-{user}-{session}"
                ts = t0 + dt.timedelta(minutes=int(rng.integers(0, 1400)))
                # Like a real logging policy, half of each list comes from the user's taste.
                own = np.arange(user % GROUPS, n_items, GROUPS)
                pick = rng.choice(own, size=list_size // 2, replace=False)
                rest = np.setdiff1d(np.arange(n_items), pick)
                items = np.concatenate([pick, rng.choice(rest, list_size - len(pick),
                                                         replace=False)])
                items = rng.permutation(items)
                for pos, item in enumerate(items):
                    base = dict(user_id=user, item_id=int(item), request_id=request,
                                position=pos, model_version="sim")
                    rows.append(dict(base, event_id=f"{request}-{pos}-i", ts=ts,
                                     event_type="impression"))
                    p = 0.6 if item % GROUPS == user % GROUPS else 0.03
                    if rng.random() < p:
                        rows.append(dict(base, event_id=f"{request}-{pos}-c",
                                         ts=ts + dt.timedelta(seconds=30), event_type="click"))
    return pd.DataFrame(rows)


def make_labels(events: pd.DataFrame) -> pd.DataFrame:
    """One row per impression, label 1 if the same request clicked the item."""
    imp = events[events.event_type == "impression"]
    clicks = events[events.event_type == "click"][["request_id", "item_id"]].assign(label=1)
    labels = imp.merge(clicks, on=["request_id", "item_id"], how="left")
    labels["label"] = labels["label"].fillna(0).astype("int8")
    return labels.rename(columns={"ts": "event_timestamp"})[
        ["user_id", "item_id", "event_timestamp", "label", "request_id", "position"]]


def daily_features(events: pd.DataFrame, key: str, names: list[str]) -> pd.DataFrame:
    """Per (entity, day) snapshot at the day's midnight from events of earlier days only."""
    events = events.assign(day=pd.to_datetime(events["ts"], utc=True).dt.floor("D"))
    out = []
    for day in sorted(events["day"].unique()):
        past = events[events["day"] < day]
        imp = past[past.event_type == "impression"].groupby(key).size()
        clk = past[past.event_type == "click"].groupby(key).size()
        last = past[(past.event_type == "click") & (past["day"] == day - pd.Timedelta(days=1))]
        f = pd.DataFrame({names[0]: imp, names[1]: clk}).fillna(0)
        f[names[2]] = f[names[1]] / f[names[0]].clip(lower=1)
        f[names[3]] = (past.groupby(key)["day"].nunique() if key == "user_id"
                       else last.groupby(key).size()).reindex(f.index).fillna(0)
        f = f.reset_index().rename(columns={"index": key})
        f["event_timestamp"] = day
        out.append(f)
    return pd.concat(out, ignore_index=True)


def daily_user_category(events: pd.DataFrame) -> pd.DataFrame:
    """Per (user, category, day) snapshot at midnight: the user's clicks on the category
    (items' category = item_id % GROUPS) before that day and their share of the user's clicks."""
    events = events.assign(day=pd.to_datetime(events["ts"], utc=True).dt.floor("D"),
                           category=events["item_id"] % GROUPS)
    clicks_name, share_name = RANKER_V2_USER_CATEGORY_FEATURES
    out = []
    for day in sorted(events["day"].unique()):
        past = events[(events["day"] < day) & (events.event_type == "click")]
        if past.empty:
            continue
        f = past.groupby(["user_id", "category"]).size().rename(clicks_name).reset_index()
        f[share_name] = f[clicks_name] / f.groupby("user_id")[clicks_name].transform("sum")
        f["event_timestamp"] = day
        out.append(f)
    return pd.concat(out, ignore_index=True)


class FakeJob:
    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df

    def to_df(self) -> pd.DataFrame:
        return self.df


@dataclass
class FakeStore:
    """The two FeatureStore methods training calls, as a backward as-of join on DataFrames.

    Like Feast 0.67's file offline store (feast-dev/feast#6787), it keeps only one entity row
    per (join key, event_timestamp) and returns rows in no particular order.
    """

    user_features: pd.DataFrame
    item_features: pd.DataFrame
    services_asked: list | None = None
    # With it, the service "ranker_v2" also has the user x category view (keyed user_id +
    # category), as in feature_repo/definitions.py.
    user_category: pd.DataFrame | None = None

    def get_feature_service(self, name: str) -> SimpleNamespace:
        if self.services_asked is not None:
            self.services_asked.append(name)
        views = [
            SimpleNamespace(name=USER_FEATURE_VIEW,
                            features=[SimpleNamespace(name=f) for f in USER_FEATURES]),
            SimpleNamespace(name=ITEM_FEATURE_VIEW,
                            features=[SimpleNamespace(name=f) for f in ITEM_FEATURES]),
        ]
        if name == "ranker_v2" and self.user_category is not None:
            views.append(SimpleNamespace(name=USER_CATEGORY_FEATURE_VIEW, features=[
                SimpleNamespace(name=f) for f in RANKER_V2_USER_CATEGORY_FEATURES]))
        return SimpleNamespace(name=name, feature_view_projections=views)

    def get_historical_features(self, entity_df: pd.DataFrame, features: list[str]) -> FakeJob:
        views = {ref.split(":", 1)[0] for ref in features}
        df = entity_df.sort_values("event_timestamp")
        for view, key, table in ((USER_FEATURE_VIEW, ["user_id"], self.user_features),
                                  (ITEM_FEATURE_VIEW, ["item_id"], self.item_features),
                                  (USER_CATEGORY_FEATURE_VIEW, ["user_id", "category"],
                                   self.user_category)):
            if view in views:
                df = df.drop_duplicates([*key, "event_timestamp"])  # the Feast bug, reproduced
                df = pd.merge_asof(df, table.sort_values("event_timestamp"), on="event_timestamp",
                                   by=key, direction="backward")
        return FakeJob(df.sample(frac=1.0, random_state=0))  # Feast does not keep row order


def write_world(settings: Settings, seed: int = 0, **kwargs: int) -> FakeStore:
    """Write lake events + items, labels and popular tables for ``settings``; return a FakeStore."""
    events = make_events(seed=seed, **kwargs)
    table = pa.Table.from_pandas(events[[c for c in EVENT_SCHEMA.names if c in events]],
                                 preserve_index=False)
    lake.write_events(table, settings.lake_dir, batch_key="synthetic")
    n_items = int(events["item_id"].max()) + 1 + 5  # 5 catalogue items nobody saw
    lake.write_items(pa.table({
        "item_id": pa.array(np.arange(n_items), pa.int64()),
        "category": pa.array(np.arange(n_items) % GROUPS, pa.int32()),
        "created_at": pa.array([day_start(dt.date(2025, 12, 1))] * n_items,
                               pa.timestamp("us", tz="UTC")),
    }, schema=ITEM_SCHEMA), settings.lake_dir)
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    make_labels(events).to_parquet(settings.features_dir / LABELS_FILE, index=False)
    last = pd.to_datetime(events["ts"], utc=True).dt.date.max()
    clicks = events[(events.event_type == "click")
                    & (pd.to_datetime(events["ts"], utc=True).dt.date == last)]
    popular = clicks.groupby("item_id").size().sort_values(ascending=False).rename("clicks")
    popular = popular.reset_index()
    popular["rank"] = np.arange(1, len(popular) + 1)
    popular.to_parquet(settings.features_dir / POPULAR_FILE, index=False)
    return FakeStore(daily_features(events, "user_id", USER_FEATURES),
                     daily_features(events, "item_id", ITEM_FEATURES),
                     user_category=daily_user_category(events))
