"""Serving measurements that need no running stack: the user-feature read (fast reader vs Feast)
and the histogram arithmetic the stack benchmark uses on ``/metrics``.

The load benchmark itself (Locust at fixed offered loads, in-process vs split mode) drives the
native stack, so it lives in the composition root: ``app.stack.servingbench.run``.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from recstack.featurestore import open_store
from recstack.schemas import USER_FEATURE_VIEW, USER_FEATURES
from recstack.settings import Settings
from serving.features import USER_KEY, FeastUserFeatures
from serving.onlinestore import RedisFeatureReader, sync_redis_client

Buckets = dict[tuple[str, ...], dict[float, float]]


def feature_read_bench(settings: Settings, n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Median/p99 of one user's feature read, fast reader vs ``get_online_features``, same users.

    Needs the settings' Redis with materialized features. Also checks both return the same
    values (``user_features_mismatches`` counts users where they differ).
    """
    store = open_store(settings)
    client = sync_redis_client(settings.redis.url, 0.5)
    fast = RedisFeatureReader(client, settings.feast.project, USER_FEATURE_VIEW, USER_FEATURES,
                              USER_KEY)
    feast = FeastUserFeatures(store)
    users = np.random.default_rng(seed).integers(0, settings.sim.n_users, n).tolist()
    for u in users[:100]:  # warm both paths (registry cache, connections)
        fast.read(u), feast.read(u)
    out: dict[str, float] = {}
    mismatches = 0
    readers = {"fast": fast, "feast": feast}
    times: dict[str, list[float]] = {name: [] for name in readers}
    for u in users:  # side by side: both paths read each user in turn, so they share the noise
        for name, reader in readers.items():
            t = time.perf_counter()
            reader.read(u)
            times[name].append(time.perf_counter() - t)
    for name, values in times.items():
        out[f"user_features_{name}_p50_ms"] = float(np.median(values) * 1e3)
        out[f"user_features_{name}_p99_ms"] = float(np.quantile(values, 0.99) * 1e3)
    for u in users[:200]:
        if not np.array_equal(fast.read(u), feast.read(u), equal_nan=True):
            mismatches += 1
    client.close()
    out["user_features_speedup_p50_ratio"] = (
        out["user_features_feast_p50_ms"] / out["user_features_fast_p50_ms"]
    )
    out["user_features_mismatches"] = float(mismatches)
    return out


def histogram_buckets(text: str, name: str, label: str) -> Buckets:
    """Cumulative bucket counts of histogram ``name`` from a /metrics text, keyed by ``label``."""
    out: Buckets = {}
    for family in text_string_to_metric_families(text):
        if family.name != name:
            continue
        for sample in family.samples:
            if sample.name != f"{name}_bucket":
                continue
            key = (sample.labels.get(label, ""),)
            le = float(sample.labels["le"])
            out.setdefault(key, {})[le] = out.get(key, {}).get(le, 0.0) + sample.value
    return out


def merge(parts: Iterable[Buckets]) -> Buckets:
    """Sum bucket counts of several replicas."""
    out: Buckets = {}
    for part in parts:
        for key, buckets in part.items():
            for le, v in buckets.items():
                out.setdefault(key, {})[le] = out.get(key, {}).get(le, 0.0) + v
    return out


def delta(after: Buckets, before: Buckets) -> Buckets:
    return {
        key: {le: v - before.get(key, {}).get(le, 0.0) for le, v in buckets.items()}
        for key, buckets in after.items()
    }


def quantile_upper_bound(buckets: dict[float, float], q: float) -> float | None:
    """The smallest bucket edge below which at least ``q`` of the observations fall (seconds);
    None when nothing was observed. Bucket edges are the SLO thresholds, so this says which
    threshold the quantile meets."""
    total = buckets.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return float("inf")


def counter_values(text: str, name: str, label: str) -> dict[str, float]:
    """A labelled counter's values (``name`` without ``_total``) from a /metrics text."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name == name:
            for sample in family.samples:
                if sample.name == f"{name}_total":
                    key = sample.labels.get(label, "")
                    out[key] = out.get(key, 0.0) + sample.value
    return out
