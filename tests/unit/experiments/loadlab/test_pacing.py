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
