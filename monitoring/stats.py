"""Distribution-shift statistics: PSI (binned) and the two-sample KS statistic.

PSI = sum_i (live_i - ref_i) * ln(live_i / ref_i) over bins; rule of thumb: < 0.1 stable,
0.1-0.25 moderate, > 0.25 shifted. Proportions are floored at ``EPS`` so an empty bin costs a
large but finite amount.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

EPS = 1e-4
# The quantile levels training stores per feature (training.train.feature_reference).
REFERENCE_LEVELS = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def psi(reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray) -> float:
    """PSI of two vectors of bin proportions (each is normalised to sum to 1)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(live, dtype=np.float64)
    if ref.shape != cur.shape or ref.size == 0:
        raise ValueError(f"bins differ: {ref.shape} vs {cur.shape}")
    ref = np.maximum(ref / max(ref.sum(), EPS), EPS)
    cur = np.maximum(cur / max(cur.sum(), EPS), EPS)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def quantile_bins(ref: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(edges, reference proportions) from a stored reference (``q01``..``q99``, ``nan_share``).

    Bins are ``(-inf, e0], (e0, e1], ..., (e_last, inf)`` over the distinct quantile values,
    plus a last bin for missing values. A value shared by several quantiles (a feature that is
    often 0) keeps the highest level, so the bin at that value holds all of its mass.
    """
    nan_share = float(ref.get("nan_share", 0.0) or 0.0)
    points: dict[float, float] = {}
    for key, level in REFERENCE_LEVELS.items():
        value = ref.get(key)
        if value is None or not np.isfinite(value):
            continue
        points[float(value)] = max(points.get(float(value), 0.0), level)
    edges = np.array(sorted(points), dtype=np.float64)
    cdf = np.array([points[e] for e in edges], dtype=np.float64)
    cdf = np.maximum.accumulate(cdf) if cdf.size else cdf
    props = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    props = props * (1.0 - nan_share)
    return edges, np.concatenate([props, [nan_share]])


def binned(values: Sequence[float] | np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Proportions of ``values`` in the bins of :func:`quantile_bins` (NaN in the last bin)."""
    x = np.asarray(values, dtype=np.float64)
    missing = np.isnan(x)
    counts = np.bincount(np.searchsorted(edges, x[~missing], side="left"),
                         minlength=edges.size + 1).astype(np.float64)
    counts = np.concatenate([counts, [missing.sum()]])
    return counts / max(x.size, 1)


def psi_against_reference(ref: Mapping[str, float], values: Sequence[float] | np.ndarray) -> float:
    """PSI of live ``values`` against a feature's stored reference statistics."""
    edges, props = quantile_bins(ref)
    return psi(props, binned(values, edges))


def psi_samples(reference: Sequence[float] | np.ndarray, live: Sequence[float] | np.ndarray,
                n_bins: int = 10) -> float:
    """PSI of two raw samples, bins at the reference's deciles (ties merged)."""
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[~np.isnan(ref)]
    if ref.size == 0:
        raise ValueError("empty reference sample")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return psi(binned(ref, edges), binned(live, edges))


def ks_statistic(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the empirical CDFs."""
    x = np.sort(np.asarray(a, dtype=np.float64)[~np.isnan(np.asarray(a, dtype=np.float64))])
    y = np.sort(np.asarray(b, dtype=np.float64)[~np.isnan(np.asarray(b, dtype=np.float64))])
    if x.size == 0 or y.size == 0:
        raise ValueError("KS needs two non-empty samples")
    grid = np.concatenate([x, y])
    cdf_x = np.searchsorted(x, grid, side="right") / x.size
    cdf_y = np.searchsorted(y, grid, side="right") / y.size
    return float(np.max(np.abs(cdf_x - cdf_y)))


def share_psi(reference: Mapping[str, float], live: Mapping[str, float]) -> float:
    """PSI between two categorical mixes (``{category: share or count}``), union of keys."""
    keys = sorted(set(reference) | set(live))
    return psi([reference.get(k, 0.0) for k in keys], [live.get(k, 0.0) for k in keys])
