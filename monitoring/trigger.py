"""When a drift signal becomes an alert, and when an alert may start a retraining.

A check over its threshold ``consecutive`` times in a row alerts (one noisy check does not);
a retraining starts at most once per cool-down, whatever the number of alerts, and every
decision is logged with its cause.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class Signal:
    """One check's value against its threshold (``above``: alert when value > threshold)."""

    name: str
    value: float
    threshold: float
    above: bool = True
    detail: str = ""  # e.g. which segment; in the cause, not in the name (streaks go by name)

    @property
    def breached(self) -> bool:
        if self.value != self.value:  # NaN: no verdict
            return False
        return self.value > self.threshold if self.above else self.value < self.threshold

    def describe(self) -> str:
        op = ">" if self.above else "<"
        where = f" ({self.detail})" if self.detail else ""
        return f"{self.name}={self.value:.4g} {op} {self.threshold:.4g}{where}"


@dataclass
class AlertState:
    """Counts consecutive breaches per signal; ``alerting`` holds the names now alerting."""

    consecutive: int = 2
    streak: dict[str, int] = field(default_factory=dict)

    def update(self, signals: list[Signal]) -> list[Signal]:
        """Feed one check's signals; returns those alerting now."""
        out = []
        for s in signals:
            n = self.streak.get(s.name, 0) + 1 if s.breached else 0
            self.streak[s.name] = n
            if n >= self.consecutive:
                out.append(s)
        return out

    def reset(self) -> None:
        self.streak.clear()


@dataclass
class Cooldown:
    """At most one action per ``cooldown_s`` (of whatever clock the caller passes in)."""

    cooldown_s: float
    last: float | None = None

    def ready(self, now: float) -> bool:
        return self.last is None or now - self.last >= self.cooldown_s

    def remaining(self, now: float) -> float:
        return 0.0 if self.ready(now) else self.cooldown_s - (now - self.last)  # type: ignore[operator]

    def fire(self, now: float) -> bool:
        """True (and the cool-down restarts) if ready; False otherwise."""
        if not self.ready(now):
            return False
        self.last = now
        return True


def cause_of(alerting: list[Signal]) -> str:
    """One line naming every alerting signal, for logs and the retrain metric's label."""
    return "; ".join(s.describe() for s in alerting)
