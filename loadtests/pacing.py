"""Arrival schedules for Locust users: open-loop Poisson arrivals (the default of the
experiments and the serving bench), or smooth per-user pacing at ``rate`` task runs per second.

**Open loop** (:func:`poisson`, :func:`begin_poisson`, :func:`lag_ms`): each user's tasks are
due at the arrivals of its own Poisson process, so many users together offer a Poisson stream
whatever the latency, as independent clients do. A task that is late (its user was still
waiting for an answer) goes at once and the schedule never skips a due time, and
:func:`lag_ms` says how late it started: latency measured from the due time (the locustfiles
add the lag to Locust's response time) counts a stall for every request that was due during
it, so stalls are not under-sampled (no coordinated omission).

**Paced** (:func:`begin`, :func:`paced`), kept for comparison: a closed loop per user.

Why not Locust's ``constant_throughput`` plus a random sleep in ``on_start``: it paces from the
moment the user object was created, so the sleep only delays the first task and every later
task falls back in phase with the users spawned in the same second - 1,000 users at 0.5/s
then arrived as one burst every 2 s (measured: alternate seconds of ~200 and ~90 requests).
Here the schedule starts at the user's first task. A user that falls behind (a slow answer)
goes at once but does not burst to catch up, as with ``constant_throughput``.

Imports nothing but the standard library (Locust loads it next to a locustfile).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any


def begin(user: Any, rate: float) -> None:
    """Call from ``on_start``: wait a uniform random part of the period, then start the schedule
    (Locust has patched ``time.sleep`` to yield to the other users)."""
    time.sleep(random.random() / rate)
    user._recstack_next_start = time.perf_counter()


def paced(rate: float) -> Callable[[Any], float]:
    """A Locust ``wait_time``: the next task starts one period after the previous one started."""
    if rate <= 0:
        raise ValueError(f"paced() needs a positive rate, got {rate}")
    period = 1.0 / rate

    def wait_time(user: Any) -> float:
        now = time.perf_counter()
        # Without begin(): the schedule starts at the end of the first task.
        due = getattr(user, "_recstack_next_start", now) + period
        user._recstack_next_start = max(due, now)
        return user._recstack_next_start - now

    return wait_time


def begin_poisson(user: Any, rate: float) -> None:
    """Call from ``on_start``: wait for the user's first arrival (an exponential time), then
    start its schedule there, so users spawned together do not fire together."""
    time.sleep(random.expovariate(rate))
    user._recstack_due = time.perf_counter()


def poisson(rate: float) -> Callable[[Any], float]:
    """A Locust ``wait_time``: the next task is due one exponential gap (mean ``1 / rate``)
    after the previous one was due, however late that one ran; 0 when it is already due."""
    if rate <= 0:
        raise ValueError(f"poisson() needs a positive rate, got {rate}")

    def wait_time(user: Any) -> float:
        now = time.perf_counter()
        due = getattr(user, "_recstack_due", now) + random.expovariate(rate)
        user._recstack_due = due
        return max(0.0, due - now)

    return wait_time


def lag_ms(user: Any) -> float:
    """How late the user's current task started after its due time, in ms (0 without an
    open-loop schedule): add it to a request's latency to measure from the intended send."""
    due = getattr(user, "_recstack_due", None)
    return max(0.0, (time.perf_counter() - due) * 1000.0) if due is not None else 0.0
