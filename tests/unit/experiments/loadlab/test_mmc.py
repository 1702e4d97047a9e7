"""M/M/c math against hand-checked numbers."""

from __future__ import annotations

import math

import pytest

from app.experiments.loadlab import mmc


@pytest.mark.parametrize(
    ("c", "a", "expected"),
    [
        (1, 0.5, 0.5),  # M/M/1: P(wait) = rho
        (2, 1.0, 1 / 3),  # (1/2 / 0.5) / (1 + 1 + 1) = 1/3
        (2, 1.5, 9 / 14),  # (1.125 / 0.25) / (1 + 1.5 + 4.5) = 4.5 / 7
        (3, 0.0, 0.0),
        (2, 2.0, 1.0),  # unstable: everyone waits
    ],
)
def test_erlang_c_hand_checked(c: int, a: float, expected: float) -> None:
    assert mmc.erlang_c(c, a) == pytest.approx(expected, rel=1e-12)


def test_mm1_response_time_is_exponential_with_rate_mu_minus_lambda() -> None:
    lam, mu = 30.0, 100.0
    for t in (0.001, 0.02, 0.1):
        assert mmc.response_time_tail(t, lam, mu, 1) == pytest.approx(math.exp(-(mu - lam) * t))
    # p99 = ln(100) / (mu - lam): 100/s service, 50/s arrivals -> 92.1 ms
    assert mmc.response_time_quantile(0.99, 50, 100, 1) == pytest.approx(0.0921034, rel=1e-5)


def test_tail_is_continuous_where_wait_rate_equals_service_rate() -> None:
    # c = 2, lam = mu: theta = 2 mu - lam = mu (the special case of the hypoexponential)
    mu, t = 10.0, 0.15
    exact = mmc.response_time_tail(t, mu, mu, 2)
    near = mmc.response_time_tail(t, mu * (1 + 1e-7), mu, 2)
    assert exact == pytest.approx(near, rel=1e-5)
    assert 0 < exact < 1


def test_more_servers_never_hurt_the_tail() -> None:
    p99s = [mmc.response_time_quantile(0.99, 150, 100, c) for c in (2, 3, 4, 8)]
    assert p99s == sorted(p99s, reverse=True)
    # with many servers almost nobody waits: the p99 tends to the service time's, ln(100)/mu
    assert p99s[-1] == pytest.approx(math.log(100) / 100, rel=0.01)


def test_servers_needed_and_max_rate() -> None:
    # one server at mu=100/s keeps p99 <= 100 ms up to lam = 100 - ln(100)/0.1 = 53.95/s
    assert mmc.max_rate_at_slo(100, 1, 0.1) == pytest.approx(100 - math.log(100) / 0.1, rel=1e-6)
    assert mmc.servers_needed(53.0, 100, 0.1) == 1
    assert mmc.servers_needed(55.0, 100, 0.1) == 2
    c = mmc.servers_needed(50_000, 100, 0.1)
    assert mmc.response_time_quantile(0.99, 50_000, 100, c) <= 0.1
    assert mmc.response_time_quantile(0.99, 50_000, 100, c - 1) > 0.1
    assert c >= 500  # at least lam / mu


def test_servers_cannot_fix_a_slow_service() -> None:
    # mean service 50 ms: its own p99 is 230 ms > 100 ms whatever the number of servers
    with pytest.raises(ValueError, match="no server count helps"):
        mmc.servers_needed(10, 20, 0.1)
    assert mmc.max_rate_at_slo(20, 4, 0.1) == 0.0


def test_unstable_queue_has_infinite_quantile() -> None:
    assert mmc.response_time_quantile(0.99, 200, 100, 2) == math.inf
    with pytest.raises(ValueError):
        mmc.erlang_c(0, 1.0)
