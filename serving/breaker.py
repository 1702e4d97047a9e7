"""A circuit breaker for calls to Redis: closed -> open after N consecutive failures -> half-open.

While open, ``allow()`` answers False at once, so no request waits on a dead dependency. After
``cooldown_s`` one caller is let through as a probe (half-open); its success closes the breaker,
its failure re-opens it for another cooldown. State changes are reported to ``on_change`` (the
metrics gauge and transition counter).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    """Numeric so a Prometheus gauge can carry it: 0 closed, 1 half-open, 2 open."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class CircuitBreaker:
    """Thread-safe; ``name`` labels its metrics (a dependency, never an id)."""

    def __init__(
        self,
        threshold: int = 3,
        cooldown_s: float = 1.0,
        name: str = "redis",
        on_change: Callable[[str, BreakerState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.cooldown_s = cooldown_s
        self.name = name
        self.on_change = on_change
        self._clock = clock
        self._failures = 0
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self._probing = False
        self._lock = threading.Lock()

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def open(self) -> bool:
        return self._state is not BreakerState.CLOSED

    def allow(self) -> bool:
        """May the caller try the dependency now? (False: use the fallback, do not wait.)"""
        with self._lock:
            if self._state is BreakerState.CLOSED:
                return True
            if self._probing:  # one probe at a time; the others fail fast
                return False
            if self._clock() - self._opened_at >= self.cooldown_s:
                self._probing = True
                self._set(BreakerState.HALF_OPEN)
                return True
            return False

    def record(self, ok: bool) -> None:
        """The outcome of an allowed call."""
        with self._lock:
            self._probing = False
            if ok:
                self._failures = 0
                self._set(BreakerState.CLOSED)
                return
            self._failures += 1
            if self._state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
                self._opened_at = self._clock()
                self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is not self._state:
            self._state = state
            if self.on_change is not None:
                self.on_change(self.name, state)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._state.name}, failures={self._failures})"
