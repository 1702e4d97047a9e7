"""Training benchmarks: time and peak memory of training at 1M and 10M events, the
point-in-time training-set build included; ranker inference for a 500-row batch, native
LightGBM booster vs the MLflow pyfunc wrapper, side by side.

``run(settings, console)`` is the suite (registered in app/bench.py as
``training.bench:run``); its sizes are ``settings.train.bench_events`` (default 1M and 10M;
``RECSTACK_TRAIN__BENCH_EVENTS='[1000000]'`` for 1M only). Each size runs in its own child
process (``python -m training.bench --events N``) so its peak RSS is its own, not the suite's.
The ranker is trained on the current feature service's column count (ranker_v2: 24 columns).

The events are synthetic (Zipf-popular items, users of varying activity, CTR ~5%, spread over
BENCH_DAYS days), made here with numpy: the training stage may not import the simulator, and
what is measured is the cost of the algorithms at a size, not the world's realism. The dataset
build is the one ``recstack train`` runs (``build_ranker_dataset``: labels, negative sampling,
the as-of join of training/pitjoin.py over every ranker_v2 view) on tables of the pipeline's
shape: one row per entity and day it was active (user x category: per day with a click), with
placeholder values, since the join's cost does not depend on them. The Feast registry is
replaced by the views' descriptions (keys, TTL, file): the bench needs no Redis, and Feast's
own retrieval is compared with the as-of join in tests/integration/test_pit_join.py.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlflow.lightgbm
import mlflow.pyfunc
import numpy as np
import pandas as pd
import pyarrow as pa
from rich.console import Console

from recstack import lake
from recstack.clock import day_start
from recstack.schemas import (
    CANDIDATE_SCORE_FEATURE,
    FEATURE_VIEW_FEATURES,
    ITEM_SCHEMA,
    LABELS_FILE,
    RANKER_V2_ITEM_FEATURES,
    RANKER_V2_USER_CATEGORY_FEATURES,
    RANKER_V2_USER_FEATURES,
    USER_CATEGORY_FEATURE_VIEW,
)
from recstack.settings import REPO_ROOT, Settings
from training.candidates import build_index, fit_candidate_model
from training.datasets import VIEW_KEYS, build_ranker_dataset
from training.pitjoin import AsOfStore
from training.ranker import train_ranker

logger = logging.getLogger(__name__)

# The ranker_v2 columns (feature service order, then the candidate score).
BENCH_FEATURES = (RANKER_V2_USER_FEATURES + RANKER_V2_ITEM_FEATURES
                  + RANKER_V2_USER_CATEGORY_FEATURES + [CANDIDATE_SCORE_FEATURE])
CTR = 0.05
BATCH_ROWS = 500
BENCH_DAYS = 28
BENCH_START = dt.date(2026, 1, 1)
N_CATEGORIES = 20
LIST_SIZE = 10
VIEW_TTL = dt.timedelta(days=3)  # as in feature_repo/definitions.py
REPEATS = 300


def synthetic_events(n_events: int, seed: int = 0) -> pd.DataFrame:
    """``n_events`` impressions + clicks: users ~ n/40, items ~ n/100 (Zipf popularity)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = max(100, n_events // 40), max(50, n_events // 100)
    n_imp = int(n_events / (1 + CTR))
    users = rng.zipf(1.3, n_imp) % n_users
    items = rng.zipf(1.1, n_imp) % n_items
    clicked = rng.random(n_imp) < CTR
    user_ids = np.concatenate([users, users[clicked]]).astype(np.int64)
    item_ids = np.concatenate([items, items[clicked]]).astype(np.int64)
    kind = np.concatenate([np.zeros(n_imp, np.int8), np.ones(int(clicked.sum()), np.int8)])
    event_type = pd.Categorical.from_codes(kind, categories=["impression", "click"])
    day = rng.integers(0, BENCH_DAYS, n_imp)
    seconds = rng.integers(0, 86_400, n_imp)
    return pd.DataFrame({"user_id": user_ids, "item_id": item_ids, "event_type": event_type,
                         "day_index": np.concatenate([day, day[clicked]]),
                         "second": np.concatenate([seconds, seconds[clicked]]),
                         # On an impression: whether it was clicked (the label).
                         "clicked": np.concatenate([clicked, np.ones(int(clicked.sum()), bool)])})


def write_training_inputs(events: pd.DataFrame, home: Path) -> tuple[Settings, "BenchViews"]:
    """What ``recstack train`` reads, under ``home``: the lake's catalogue, the labels table and
    one feature table per ranker_v2 view; returns settings on ``home`` and the views."""
    settings = Settings(home=home, feast={"feature_service": "ranker_v2"})
    imp = events[events["event_type"] == "impression"]
    n_imp = len(imp)
    clicked = imp["clicked"].to_numpy().astype(np.int8)
    start = pd.Timestamp(day_start(BENCH_START))
    ts = start + pd.to_timedelta(imp["day_index"].to_numpy() * 86_400 + imp["second"].to_numpy(),
                                 unit="s")
    settings.features_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({
        "user_id": imp["user_id"].to_numpy(), "item_id": imp["item_id"].to_numpy(),
        "event_timestamp": ts, "label": clicked,
        "request_id": (np.arange(n_imp) // LIST_SIZE).astype(str),
        "position": (np.arange(n_imp) % LIST_SIZE).astype(np.int32),
    }).to_parquet(settings.features_dir / LABELS_FILE, index=False)
    n_items = int(events["item_id"].max()) + 1
    lake.write_items(pa.table({
        "item_id": pa.array(np.arange(n_items), pa.int64()),
        "category": pa.array(np.arange(n_items) % N_CATEGORIES, pa.int32()),
        "created_at": pa.array([day_start(BENCH_START)] * n_items, pa.timestamp("us", tz="UTC")),
    }, schema=ITEM_SCHEMA), settings.lake_dir)
    active = pd.DataFrame({"user_id": imp["user_id"].to_numpy(),
                           "item_id": imp["item_id"].to_numpy(),
                           "category": imp["item_id"].to_numpy() % N_CATEGORIES,
                           "day_index": imp["day_index"].to_numpy(), "clicked": clicked})
    views = BenchViews({})
    for view, names in FEATURE_VIEW_FEATURES.items():
        keys = list(VIEW_KEYS[view])
        rows = active[active["clicked"] == 1] if view == USER_CATEGORY_FEATURE_VIEW else active
        # A snapshot at midnight of day d + 1 for each entity active on day d.
        table = rows[[*keys, "day_index"]].drop_duplicates().reset_index(drop=True)
        snapshot = start + pd.to_timedelta(table.pop("day_index").to_numpy() + 1, unit="D")
        table["event_timestamp"] = snapshot
        table["created"] = snapshot
        rng = np.random.default_rng(len(table))
        for name in names:
            table[name] = rng.integers(0, 50, len(table)).astype(np.int64)
        path = settings.features_dir / f"{view}.bench.parquet"
        table.to_parquet(path, index=False)
        views.views[view] = SimpleNamespace(
            name=view, entity_columns=[SimpleNamespace(name=k) for k in keys],
            features=[SimpleNamespace(name=n) for n in names], ttl=VIEW_TTL,
            batch_source=SimpleNamespace(path=str(path), timestamp_field="event_timestamp",
                                         created_timestamp_column="created"))
    return settings, views


@dataclass
class BenchViews:
    """The ranker_v2 views as the Feast registry would describe them, over the bench's files."""

    views: dict[str, SimpleNamespace]

    def get_feature_view(self, name: str) -> SimpleNamespace:
        return self.views[name]

    def get_feature_service(self, name: str) -> SimpleNamespace:
        return SimpleNamespace(name=name, feature_view_projections=list(self.views.values()))


def ranker_rows(n_rows: int, seed: int = 0) -> pd.DataFrame:
    """BENCH_FEATURES + label, with some signal so trees have something to split on."""
    rng = np.random.default_rng(seed)
    x = rng.random((n_rows, len(BENCH_FEATURES))).astype(np.float32)
    logit = -1.5 + 2.0 * x[:, -1] + 0.5 * x[:, 2] + rng.normal(0, 1, n_rows)
    df = pd.DataFrame(x, columns=BENCH_FEATURES)
    df["label"] = (logit > 0.5).astype(np.int8)
    return df


def train_at_size(n_events: int, dim: int, rounds: int, negatives_per_positive: int) -> dict:
    """Fit the candidate model and the ranker as ``train.py`` does, at ``n_events``; returns
    seconds per step and this process's peak RSS (call it in a fresh process)."""
    t0 = time.perf_counter()
    events = synthetic_events(n_events)
    t_data = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(prefix="recstack-bench-train-") as tmp:
        t0 = time.perf_counter()
        settings, views = write_training_inputs(events, Path(tmp))
        t_inputs = time.perf_counter() - t0
        settings.train.negatives_per_positive = negatives_per_positive
        t0 = time.perf_counter()
        dataset = build_ranker_dataset(settings, AsOfStore(views))
        t_dataset = time.perf_counter() - t0
    catalogue = np.unique(events["item_id"].to_numpy())
    t0 = time.perf_counter()
    model = fit_candidate_model(events, catalogue, dim)
    t_cand = time.perf_counter() - t0
    t0 = time.perf_counter()
    build_index(model.item_embeddings)
    t_index = time.perf_counter() - t0
    # The ranker fits on as many rows as the dataset has (its values are the bench's own).
    rows = ranker_rows(len(dataset))
    t0 = time.perf_counter()
    train_ranker(rows, rounds=rounds, names=BENCH_FEATURES)
    t_rank = time.perf_counter() - t0
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "events": len(events), "users": int(events["user_id"].nunique()),
        "items": len(catalogue), "ranker_rows": len(rows),
        "data_s": round(t_data, 3), "inputs_write_s": round(t_inputs, 3),
        "dataset_build_s": round(t_dataset, 3), "candidates_fit_s": round(t_cand, 3),
        "index_build_s": round(t_index, 3), "ranker_fit_s": round(t_rank, 3),
        "train_total_s": round(t_dataset + t_cand + t_index + t_rank, 3),
        "peak_rss_mib": round(peak_mib, 1),
    }


def inference_side_by_side(rounds: int, repeats: int = REPEATS) -> dict[str, float]:
    """500-row batches through the native booster and through ``mlflow.pyfunc`` (loaded from a
    locally saved lightgbm model), interleaved so both see the same machine noise."""
    booster = train_ranker(ranker_rows(20_000), rounds=rounds, names=BENCH_FEATURES)
    x = ranker_rows(BATCH_ROWS, seed=1)[BENCH_FEATURES].to_numpy(np.float32)
    with tempfile.TemporaryDirectory(prefix="recstack-bench-") as tmp:
        mlflow.lightgbm.save_model(booster, str(Path(tmp) / "ranker"))
        pyfunc = mlflow.pyfunc.load_model(str(Path(tmp) / "ranker"))
    frame = pd.DataFrame(x, columns=BENCH_FEATURES)
    calls = {
        "native": lambda: booster.predict(x, num_threads=1),
        "pyfunc_dataframe": lambda: pyfunc.predict(frame),
        # What serving would pay: its features are a numpy matrix, pyfunc wants a DataFrame.
        "pyfunc_from_numpy": lambda: pyfunc.predict(pd.DataFrame(x, columns=BENCH_FEATURES)),
    }
    np.testing.assert_allclose(np.asarray(calls["pyfunc_dataframe"]()).ravel(),
                               calls["native"](), rtol=1e-6)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(10):
        for call in calls.values():
            call()
    for _ in range(repeats):
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()
            times[name].append((time.perf_counter() - t0) * 1000)
    out: dict[str, float] = {}
    for name, values in times.items():
        out[f"ranker_{name}_{BATCH_ROWS}rows_median_ms"] = round(float(np.median(values)), 4)
        out[f"ranker_{name}_{BATCH_ROWS}rows_p99_ms"] = round(float(np.percentile(values, 99)), 4)
    native = out[f"ranker_native_{BATCH_ROWS}rows_median_ms"]
    out["pyfunc_over_native_median_ratio"] = round(
        out[f"ranker_pyfunc_from_numpy_{BATCH_ROWS}rows_median_ms"] / native, 2)
    out["ranker_trees"] = booster.num_trees()
    out["ranker_columns"] = len(BENCH_FEATURES)
    return out


def run(settings: Settings, console: Any | None = None) -> dict[str, Any]:
    """The suite: {"train_at_<n>_events": {...}, inference figures}; sizes that do not finish
    within ``settings.train.bench_timeout_s`` are reported as such, not waited for."""
    console = console or Console(stderr=True)
    t = settings.train
    timeout_s = t.bench_timeout_s
    figures: dict[str, Any] = {"sizes_timeout_s": timeout_s}
    for n in t.bench_events:
        with console.status(f"training at {n:,} events (child process)"):
            cmd = [sys.executable, "-m", "training.bench", "--events", str(n), "--dim",
                   str(t.embedding_dim), "--rounds", str(t.ranker_rounds),
                   "--negatives", str(t.negatives_per_positive)]
            try:
                proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                                      timeout=timeout_s, check=True)
                result = json.loads(proc.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                result = {"error": f"did not finish in {timeout_s:.0f} s"}
            except subprocess.CalledProcessError as exc:
                result = {"error": (exc.stderr or "").strip().splitlines()[-1:]}
        figures[f"train_at_{n}_events"] = result
        console.print(f"training at {n:,} events: {result}")
    with console.status("ranker inference: native vs pyfunc, 500 rows"):
        figures.update(inference_side_by_side(t.ranker_rounds))
    return figures


def main(argv: list[str] | None = None) -> None:
    """Child-process entry: train at one size and print the figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=150)
    parser.add_argument("--negatives", type=int, default=4)
    args = parser.parse_args(argv)
    print(json.dumps(train_at_size(args.events, args.dim, args.rounds, args.negatives)))


if __name__ == "__main__":
    main()
