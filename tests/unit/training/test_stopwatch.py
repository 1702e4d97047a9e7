"""The training run's phase timer: nested phases each get their own wall time."""

from __future__ import annotations

import time

from training.train import _Stopwatch


def test_nested_phases_are_timed_each_on_their_own() -> None:
    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    with clock("outer_s"):
        time.sleep(0.02)
        with clock("inner_s"):
            time.sleep(0.01)
    assert set(timings) == {"outer_s", "inner_s"}
    assert timings["outer_s"] >= timings["inner_s"] + 0.015  # the outer block includes the inner
    assert 0.005 < timings["inner_s"] < timings["outer_s"]


def test_a_phase_entered_twice_adds_up() -> None:
    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    for _ in range(2):
        with clock("fit_s"):
            time.sleep(0.01)
    assert timings["fit_s"] >= 0.018
