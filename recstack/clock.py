"""Simulated time: maps simulated days onto wall-clock time at a chosen speed-up."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from recstack.settings import Settings

UTC = dt.timezone.utc


def day_start(day: dt.date) -> dt.datetime:
    """Midnight UTC at the start of ``day``."""
    return dt.datetime.combine(day, dt.time(0), tzinfo=UTC)


@dataclass
class SimClock:
    """Simulated now = ``sim_start + (wall_now - wall_start) * speedup``.

    ``speedup=86400`` makes one wall second one simulated day. ``wall`` is injectable so tests
    can drive time by hand.
    """

    sim_start: dt.datetime
    speedup: float = 1.0
    wall: object = field(default=time.monotonic, repr=False)
    _wall_start: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.sim_start.tzinfo is None:
            raise ValueError("sim_start must be timezone-aware (UTC)")
        if self.speedup <= 0:
            raise ValueError(f"speedup must be positive, got {self.speedup}")
        self._wall_start = self.wall()

    def now(self) -> dt.datetime:
        elapsed = self.wall() - self._wall_start
        return self.sim_start + dt.timedelta(seconds=elapsed * self.speedup)

    def sim_days_elapsed(self) -> float:
        return (self.now() - self.sim_start).total_seconds() / 86400.0

    def wall_seconds_for(self, sim: dt.timedelta) -> float:
        """Wall seconds that pass while ``sim`` of simulated time passes."""
        return sim.total_seconds() / self.speedup


def wall_now() -> dt.datetime:
    return dt.datetime.now(UTC)


def stack_clock(settings: Settings) -> Callable[[], dt.datetime]:
    """The stack's "now" for judging event times (``settings.events.clock``): the machine's UTC
    clock, or - in a simulated stack - a ``SimClock`` that starts, when this is called, at the
    end of the simulated calendar (``sim.start_date + sim.days``: where the load test and the
    experiments start posting) and runs at ``events.sim_speedup``."""
    if settings.events.clock == "wall":
        return wall_now
    end = day_start(settings.sim.start_date + dt.timedelta(days=settings.sim.days))
    return SimClock(end, speedup=settings.events.sim_speedup).now
