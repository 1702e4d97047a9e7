"""The ranker's training set: labelled impressions joined with point-in-time-correct features.

In:  ``features_dir/labels.parquet`` (user_id, item_id, event_timestamp, label, request_id,
     position), the lake's item catalogue (the item's ``category``, the key of the
     user x category view) and the Feast feature service ``settings.feast.feature_service``.
Out: one row per kept impression with the service's feature columns (in the service's order,
     ``df.attrs["stored_features"]``), a ``day`` column and the label; the candidate score and
     source are added later (they need a model, see ``train.py``).

Only :func:`fetch_features` talks to Feast, so everything else is tested on plain DataFrames.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from recstack.featurestore import open_store
from recstack.lake import read_items
from recstack.schemas import (
    DEAD_LETTER_DIR,
    ITEM_FEATURE_VIEW,
    ITEM_FEATURE_VIEW_V2,
    LABELS_FILE,
    NO_CATEGORY,
    USER_CATEGORY_FEATURE_VIEW,
    USER_FEATURE_VIEW,
    USER_FEATURE_VIEW_V2,
)
from recstack.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ["user_id", "item_id", "event_timestamp", "label", "request_id", "position"]
# The join keys of each view (feature_repo/definitions.py).
VIEW_KEYS: dict[str, tuple[str, ...]] = {
    USER_FEATURE_VIEW: ("user_id",), USER_FEATURE_VIEW_V2: ("user_id",),
    ITEM_FEATURE_VIEW: ("item_id",), ITEM_FEATURE_VIEW_V2: ("item_id",),
    USER_CATEGORY_FEATURE_VIEW: ("user_id", "category"),
}
DEAD_LETTER_FILE = "training_labels.parquet"


class TrainingDataError(ValueError):
    """The training inputs are missing or unusable; the message says which and why."""


def read_labels(settings: Settings) -> pd.DataFrame:
    """Read and validate ``features_dir/labels.parquet``.

    Returns the valid rows (event_timestamp as UTC datetimes, label 0/1, a ``day`` column).
    Invalid rows (null ids or timestamps, labels other than 0/1) are written to
    ``features_dir/dead_letter/training_labels.parquet`` and counted in ``df.attrs["n_dead"]``.
    """
    path = settings.features_dir / LABELS_FILE
    if not path.exists():
        raise TrainingDataError(
            f"no labels table at {path}: run the feature pipelines first (`recstack pipeline`)"
        )
    labels = pd.read_parquet(path)
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise TrainingDataError(f"{path} lacks columns {missing}; has {list(labels.columns)}")
    labels, dead = validate_labels(labels)
    if len(dead):
        out = settings.features_dir / DEAD_LETTER_DIR
        out.mkdir(parents=True, exist_ok=True)
        dead.to_parquet(out / DEAD_LETTER_FILE, index=False)
        logger.warning("%d invalid label rows written to %s", len(dead), out / DEAD_LETTER_FILE)
    if labels.empty:
        raise TrainingDataError(f"{path} has no valid rows")
    labels.attrs["n_dead"] = len(dead)
    return labels


def validate_labels(labels: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``labels`` into (valid rows with a ``day`` column, invalid rows)."""
    df = labels[LABEL_COLUMNS].copy()
    df["event_timestamp"] = pd.to_datetime(df["event_timestamp"], utc=True, errors="coerce")
    label = pd.to_numeric(df["label"], errors="coerce")
    bad = (
        df["user_id"].isna()
        | df["item_id"].isna()
        | df["event_timestamp"].isna()
        | ~label.isin([0, 1])
    )
    good = df[~bad].copy()
    good["user_id"] = good["user_id"].astype("int64")
    good["item_id"] = good["item_id"].astype("int64")
    good["label"] = label[~bad].astype("int8")
    good["day"] = good["event_timestamp"].dt.date
    return good.reset_index(drop=True), labels[bad.to_numpy()].reset_index(drop=True)


def time_split(
    df: pd.DataFrame, holdout_day: dt.date | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split by day: (rows of days before ``holdout_day``, rows of ``holdout_day``).

    ``holdout_day`` defaults to the last day in ``df``; both parts must be non-empty, because a
    model validated on the days it was trained on says nothing about tomorrow.
    """
    days = sorted(df["day"].unique())
    holdout_day = holdout_day or (days[-1] if days else None)
    train = df[df["day"] < holdout_day]
    valid = df[df["day"] == holdout_day]
    if train.empty or valid.empty:
        raise TrainingDataError(
            f"need labelled days before and on the holdout day {holdout_day}; have {days}"
        )
    return train.reset_index(drop=True), valid.reset_index(drop=True)


def downsample_negatives(
    df: pd.DataFrame, negatives_per_positive: int, seed: int = 0
) -> tuple[pd.DataFrame, float]:
    """Keep every positive and a uniform sample of negatives (~``negatives_per_positive`` each).

    Returns (sampled rows in their original order, the negatives' keep rate). Why: with a CTR of
    a few percent, almost all rows are negatives that teach the ranker little; keeping a few per
    positive cuts the Feast join and training time many-fold and keeps the gradient from being
    dominated by easy negatives. One global rate (not per request) keeps the correction exact:
    the model's odds are inflated by 1/rate, which :func:`training.evaluate.calibrate` undoes
    for log loss; ranking metrics are unchanged by that monotone shift.
    """
    if negatives_per_positive <= 0:
        return df, 1.0
    positive = df["label"] == 1
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_neg == 0 or n_pos == 0:
        return df, 1.0
    rate = min(1.0, negatives_per_positive * n_pos / n_neg)
    keep = positive.to_numpy() | (np.random.default_rng(seed).random(len(df)) < rate)
    return df[keep].reset_index(drop=True), rate


def service_features(store: FeatureStore | Any, feature_service: str
                     ) -> list[tuple[str, tuple[str, ...], list[str]]]:
    """``[(view, join keys, feature names)]`` of the service, in the service's order."""
    service = store.get_feature_service(feature_service)
    out = []
    for projection in service.feature_view_projections:
        if projection.name not in VIEW_KEYS:
            raise TrainingDataError(f"feature service {feature_service} uses view "
                                    f"{projection.name}, whose join keys training does not know")
        out.append((projection.name, VIEW_KEYS[projection.name],
                    [f.name for f in projection.features]))
    return out


def fetch_features(
    store: FeatureStore | Any, entity_df: pd.DataFrame, feature_service: str
) -> pd.DataFrame:
    """The Feast calls: point-in-time join of the feature service's views onto ``entity_df``.

    ``entity_df`` holds user_id, item_id, event_timestamp (and ``category`` when the service
    has the user x category view) and any pass-through columns; each row gets the feature
    values as of its own timestamp (never later), which is what keeps tomorrow's clicks out of
    today's features. Out: ``entity_df`` plus the feature columns (their names in order in
    ``attrs["stored_features"]``).

    Feast 0.67's file offline store silently drops entity rows that share the first view's join
    key and timestamp (feast-dev/feast#6787), and every item of one request shares
    (user_id, ts). So each view is fetched on its de-duplicated (keys, event_timestamp) rows
    and merged back on them: no row is lost, and each (keys, time) is looked up once.
    """
    out = entity_df.copy()
    out["event_timestamp"] = _utc(out["event_timestamp"])
    views = service_features(store, feature_service)
    for view, keys, names in views:
        pairs = out[[*keys, "event_timestamp"]].drop_duplicates().reset_index(drop=True)
        got = store.get_historical_features(
            entity_df=pairs, features=[f"{view}:{n}" for n in names]
        ).to_df()
        got["event_timestamp"] = _utc(got["event_timestamp"])
        for key in keys:
            got[key] = got[key].astype("int64")
        got = got[[*keys, "event_timestamp", *names]].drop_duplicates([*keys, "event_timestamp"])
        out = out.merge(got, on=[*keys, "event_timestamp"], how="left")
    out.attrs["stored_features"] = [n for _, _, names in views for n in names]
    return out


def item_categories(settings: Settings) -> pd.Series:
    """The catalogue's category per item_id (int64), from the lake's items table."""
    items = read_items(settings.lake_dir).to_pandas()
    if items.empty:
        return pd.Series(dtype="int64", name="category")
    return (items.drop_duplicates("item_id", keep="last").set_index("item_id")["category"]
            .astype("int64"))


def with_categories(df: pd.DataFrame, categories: pd.Series) -> pd.DataFrame:
    """``df`` plus the ``category`` of its ``item_id`` (NO_CATEGORY for unknown items)."""
    cat = categories.reindex(df["item_id"].to_numpy()).fillna(NO_CATEGORY).astype("int64")
    return df.assign(category=cat.to_numpy())


def _utc(column: pd.Series) -> pd.Series:
    """One timestamp dtype on both sides of a merge (Feast may return another unit)."""
    return pd.to_datetime(column, utc=True).astype("datetime64[ns, UTC]")


def join_features(labels: pd.DataFrame, joined: pd.DataFrame,
                  names: list[str]) -> pd.DataFrame:
    """Put the fetched feature columns ``names`` back onto ``labels`` by its ``_row`` key.

    Features a row has no value for (a user or item without a snapshot yet, or one older than
    the view's TTL, a category the user never clicked) stay NaN: LightGBM learns where missing
    values go, and serving passes NaN for the same cases, so training and serving see the same
    inputs.
    """
    missing = [f for f in names if f not in joined.columns]
    if missing:
        raise TrainingDataError(
            f"the feature service returned no {missing}; got {list(joined.columns)}"
        )
    features = joined[["_row", *names]].drop_duplicates("_row").set_index("_row")
    out = labels.join(features, on="_row")
    out[names] = out[names].astype("float64")
    return out


def build_ranker_dataset(
    settings: Settings, store: FeatureStore | Any | None = None
) -> pd.DataFrame:
    """Labels -> (negatives down-sampled on training days) -> point-in-time features.

    In: the labels table and the Feast feature service (``store`` defaults to
    ``open_store(settings)``; tests pass any object with ``get_feature_service`` and
    ``get_historical_features``). Out: LABEL_COLUMNS + ``day`` + ``category`` + the service's
    features, sorted by time. The last day (the holdout) keeps all its rows, so evaluation sees
    the true CTR and whole requests; ``df.attrs`` carries ``negative_rate``, ``holdout_day``,
    ``n_dead`` and ``stored_features`` (the service's feature names in order).
    """
    labels = with_categories(read_labels(settings), item_categories(settings))
    holdout_day = max(labels["day"])
    train, valid = time_split(labels, holdout_day)
    train, rate = downsample_negatives(
        train, settings.train.negatives_per_positive, seed=settings.sim.seed
    )
    sampled = pd.concat([train, valid], ignore_index=True)
    sampled["_row"] = np.arange(len(sampled), dtype=np.int64)
    if store is None:
        store = open_store(settings)
    entity_df = sampled[["user_id", "item_id", "category", "event_timestamp", "_row"]]
    joined = fetch_features(store, entity_df, settings.feast.feature_service)
    names = joined.attrs["stored_features"]
    out = join_features(sampled, joined, names).drop(columns="_row")
    out = out.sort_values(["event_timestamp", "request_id", "position"], kind="stable")
    out = out.reset_index(drop=True)
    out.attrs.update(
        negative_rate=rate, holdout_day=holdout_day, n_dead=labels.attrs.get("n_dead", 0),
        stored_features=names,
    )
    logger.info(
        "ranker dataset: %d rows (%d train after sampling negatives at %.3f, %d holdout on %s)",
        len(out), len(train), rate, len(valid), holdout_day,
    )
    return out


@dataclass
class Snapshot:
    """Stored features as serving would read them at one time, per entity."""

    users: pd.DataFrame  # user features (every user view's names) by user_id
    items: pd.DataFrame  # item features by item_id
    user_category: pd.DataFrame  # user x category features, MultiIndex (user_id, category)

    def for_pairs(self, names: list[str], user_ids: np.ndarray, item_ids: np.ndarray,
                  categories: np.ndarray) -> np.ndarray:
        """``[n, len(names)]`` float32: the stored features ``names`` of (user, item) pairs, the
        user x category ones for the item's category; NaN where there is no value."""
        n = len(user_ids)
        x = np.full((n, len(names)), np.nan, dtype=np.float32)
        u = self.users.reindex(user_ids)
        i = self.items.reindex(item_ids)
        uc = self.user_category.reindex(pd.MultiIndex.from_arrays(
            [np.asarray(user_ids, np.int64), np.asarray(categories, np.int64)]))
        for col, name in enumerate(names):
            for table in (u, i, uc):
                if name in table.columns:
                    x[:, col] = table[name].to_numpy(np.float32)
                    break
        return x


def features_as_of(
    store: FeatureStore | Any,
    feature_service: str,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    as_of: dt.datetime,
    categories: np.ndarray | None = None,
) -> Snapshot:
    """Every user's and item's stored features as of ``as_of`` (what serving would read then).

    Out: a :class:`Snapshot` (users by user_id, items by item_id, user x category rows for every
    user x ``categories``); entities without a snapshot get NaN, as at serving. One
    point-in-time fetch per view, on distinct keys.
    """
    ts = _utc(pd.Series([pd.Timestamp(as_of)]))[0]
    users = np.unique(np.asarray(user_ids, dtype=np.int64))
    items = np.unique(np.asarray(item_ids, dtype=np.int64))
    cats = np.unique(np.asarray(categories if categories is not None else [], dtype=np.int64))
    wanted = {
        ("user_id",): pd.DataFrame({"user_id": users}),
        ("item_id",): pd.DataFrame({"item_id": items}),
        ("user_id", "category"): pd.DataFrame(
            {"user_id": np.repeat(users, len(cats)), "category": np.tile(cats, len(users))}),
    }
    tables: dict[tuple[str, ...], list[pd.DataFrame]] = {k: [] for k in wanted}
    for view, keys, names in service_features(store, feature_service):
        entity_df = wanted[keys].assign(event_timestamp=ts)
        if entity_df.empty:
            continue
        got = store.get_historical_features(
            entity_df=entity_df, features=[f"{view}:{n}" for n in names]).to_df()
        for key in keys:
            got[key] = got[key].astype("int64")
        tables[keys].append(got[[*keys, *names]].drop_duplicates(list(keys))
                            .set_index(list(keys)).astype("float64"))

    def combined(keys: tuple[str, ...]) -> pd.DataFrame:
        index = (pd.Index(wanted[keys][keys[0]], name=keys[0]) if len(keys) == 1
                 else pd.MultiIndex.from_frame(wanted[keys]))
        parts = [t.reindex(index) for t in tables[keys]]
        return pd.concat(parts, axis=1) if parts else pd.DataFrame(index=index)

    return Snapshot(combined(("user_id",)), combined(("item_id",)),
                    combined(("user_id", "category")))
