"""PSI and KS: known values, invariances, and the stored-reference binning."""

from __future__ import annotations

import numpy as np
import pytest

from monitoring.stats import (
    binned,
    ks_statistic,
    psi,
    psi_against_reference,
    psi_samples,
    quantile_bins,
    share_psi,
)


def test_psi_of_identical_bins_is_zero() -> None:
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == pytest.approx(0.0)


def test_psi_known_value() -> None:
    # (0.5-0.25) ln(0.5/0.25) + (0.5-0.75) ln(0.5/0.75)
    expected = 0.25 * np.log(2) - 0.25 * np.log(0.5 / 0.75)
    assert psi([0.25, 0.75], [0.5, 0.5]) == pytest.approx(expected)


def test_psi_is_symmetric_and_normalises_counts() -> None:
    assert psi([1, 3], [2, 2]) == pytest.approx(psi([2, 2], [1, 3]))
    assert psi([10, 30], [20, 20]) == pytest.approx(psi([0.25, 0.75], [0.5, 0.5]))


def test_psi_empty_bin_is_large_but_finite() -> None:
    value = psi([0.5, 0.5], [1.0, 0.0])
    assert np.isfinite(value) and value > 2


def test_psi_rejects_mismatched_bins() -> None:
    with pytest.raises(ValueError):
        psi([0.5, 0.5], [1.0])


def test_psi_samples_small_for_same_distribution_large_for_shift() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=20_000)
    assert psi_samples(ref, rng.normal(size=20_000)) < 0.01
    assert psi_samples(ref, rng.normal(1.0, 1.0, size=20_000)) > 0.25


def test_quantile_bins_from_reference() -> None:
    ref = {"q01": -2.3, "q10": -1.3, "q50": 0.0, "q90": 1.3, "q99": 2.3, "nan_share": 0.0}
    edges, props = quantile_bins(ref)
    assert edges.tolist() == [-2.3, -1.3, 0.0, 1.3, 2.3]
    assert props.tolist() == pytest.approx([0.01, 0.09, 0.4, 0.4, 0.09, 0.01, 0.0])


def test_quantile_bins_merge_ties_and_keep_nan_share() -> None:
    # A count feature that is 0 for more than half the rows; 20% of rows have no value.
    ref = {"q01": 0.0, "q10": 0.0, "q50": 0.0, "q90": 3.0, "q99": 7.0, "nan_share": 0.2}
    edges, props = quantile_bins(ref)
    assert edges.tolist() == [0.0, 3.0, 7.0]
    assert props.sum() == pytest.approx(1.0)
    assert props[0] == pytest.approx(0.5 * 0.8) and props[-1] == pytest.approx(0.2)


def test_binned_counts_nan_in_last_bin() -> None:
    out = binned([0.0, 1.0, 5.0, np.nan], np.array([0.0, 3.0]))
    # bins (-inf, 0], (0, 3], (3, inf), missing: one value each
    assert out.tolist() == [0.25, 0.25, 0.25, 0.25]
    assert binned([3.0, 3.5], np.array([0.0, 3.0])).tolist() == [0.0, 0.5, 0.5, 0.0]


def test_psi_against_reference_detects_shift() -> None:
    rng = np.random.default_rng(1)
    ref = {f"q{int(q * 100):02d}": float(np.quantile(rng.normal(size=50_000), q))
           for q in (0.01, 0.1, 0.5, 0.9, 0.99)}
    ref["nan_share"] = 0.0
    assert psi_against_reference(ref, rng.normal(size=5_000)) < 0.02
    assert psi_against_reference(ref, rng.normal(0.8, 1.0, size=5_000)) > 0.25
    # Missing values where the reference had none are drift too.
    with_nans = np.where(rng.random(5_000) < 0.3, np.nan, rng.normal(size=5_000))
    assert psi_against_reference(ref, with_nans) > 0.25


def test_ks_statistic() -> None:
    assert ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    assert ks_statistic([1, 2, 3], [10, 11, 12]) == 1.0
    assert ks_statistic([1, 2, 3, 4], [3, 4, 5, 6]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        ks_statistic([], [1.0])


def test_share_psi_over_union_of_categories() -> None:
    assert share_psi({"ann": 80, "popular": 20}, {"ann": 0.8, "popular": 0.2}) == pytest.approx(0)
    assert share_psi({"ann": 1.0}, {"ann": 0.5, "fresh": 0.5}) > 1
