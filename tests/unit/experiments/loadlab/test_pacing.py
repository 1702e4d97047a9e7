"""Per-user pacing for the Locust users: a fixed period from the user's own first task."""

from __future__ import annotations

import types

import pytest

from loadtests import pacing


def test_each_user_keeps_its_own_phase(monkeypatch) -> None:
    now = [100.0]
    monkeypatch.setattr(pacing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(pacing.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    monkeypatch.setattr(pacing.random, "random", lambda: 0.25)
    wait = pacing.paced(0.5)  # a task every 2 s
    user = types.SimpleNamespace()
    pacing.begin(user, 0.5)
    assert now[0] == pytest.approx(100.5)  # a quarter of the period
    starts = []
    for task_s in (0.1, 0.3, 0.05):
        starts.append(now[0])
        now[0] += task_s  # the task runs
        now[0] += wait(user)
    assert starts == pytest.approx([100.5, 102.5, 104.5])  # the phase is kept


def test_a_late_user_goes_at_once_without_a_burst() -> None:
    wait = pacing.paced(10.0)  # every 100 ms
    user = types.SimpleNamespace(_recstack_next_start=0.0)  # started long ago
    assert wait(user) == 0.0  # behind schedule: no wait ...
    assert 0.09 < wait(user) <= 0.1  # ... and then one period, not a catch-up burst


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive rate"):
        pacing.paced(0)


def test_poisson_arrivals_have_the_rate_and_never_skip_a_due_time(monkeypatch) -> None:
    now = [0.0]
    monkeypatch.setattr(pacing.time, "perf_counter", lambda: now[0])
    monkeypatch.setattr(pacing.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    pacing.random.seed(3)
    rate = 5.0
    wait = pacing.poisson(rate)
    user = types.SimpleNamespace()
    pacing.begin_poisson(user, rate)
    starts, lags = [], []
    for i in range(4000):
        starts.append(now[0])
        lags.append(pacing.lag_ms(user))
        # Every 100th task stalls for 2 s (10 arrivals' worth): the ones due meanwhile go late.
        now[0] += 2.0 if i % 100 == 0 else 0.001
        now[0] += wait(user)
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    # The due times are a Poisson process of the rate: the mean gap stays 1/rate although the
    # stalls delayed some sends (a paced or closed loop would have lost ~400 arrivals).
    assert user._recstack_due / 4000 == pytest.approx(1 / rate, rel=0.05)
    assert max(lags) > 1000  # the requests due during a stall are measured from their due time
    assert sum(1 for lag in lags if lag > 0) > 40 * 5  # each stall delays several arrivals
    assert min(gaps) >= 0


def test_lag_is_zero_on_time_and_without_a_schedule(monkeypatch) -> None:
    monkeypatch.setattr(pacing.time, "perf_counter", lambda: 10.0)
    assert pacing.lag_ms(types.SimpleNamespace()) == 0.0
    assert pacing.lag_ms(types.SimpleNamespace(_recstack_due=10.5)) == 0.0
    assert pacing.lag_ms(types.SimpleNamespace(_recstack_due=9.75)) == pytest.approx(250.0)
    with pytest.raises(ValueError, match="positive rate"):
        pacing.poisson(0)
