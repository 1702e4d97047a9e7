"""Smooth per-user pacing for Locust users: ``rate`` task runs per second, each user at its own
random phase.

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
