"""Multi-window burn-rate math of the SLO alerts (the same as monitoring/rules.yml).

Burn rate = observed error ratio / error budget (1 - SLO). An alert needs both its long and its
short window above the factor: the long window says the burn matters, the short one that it
is still going on (the alert resets minutes after the errors stop).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BurnWindow:
    """One multi-window alert: ``factor`` over ``long_s`` and ``short_s`` seconds."""

    name: str
    factor: float
    long_s: float
    short_s: float
    severity: str

    def scaled(self, divide_by: float) -> BurnWindow:
        """The same alert on a faster clock (simulated time): windows divided, factor kept."""
        return BurnWindow(f"{self.name}_sim", self.factor, self.long_s / divide_by,
                          self.short_s / divide_by, self.severity)


FAST = BurnWindow("fast", 14.4, 3600.0, 300.0, "page")
SLOW = BurnWindow("slow", 6.0, 6 * 3600.0, 1800.0, "ticket")
SIM_SCALE = 12.0  # rules.yml's *Sim alerts: 5m & 30s, 30m & 2m30s


def burn_rate(error_ratio: float, slo: float = 0.99) -> float:
    """How many times faster than allowed the error budget is spent."""
    if not 0 < slo < 1:
        raise ValueError(f"slo must be in (0, 1), got {slo}")
    return error_ratio / (1.0 - slo)


def budget_spent(factor: float, window_s: float, period_s: float = 30 * 86400.0) -> float:
    """Share of the period's error budget a burn of ``factor`` spends in ``window_s``
    (14.4x over 1h of 30 days = 2%)."""
    return factor * window_s / period_s


def firing(window: BurnWindow, long_ratio: float, short_ratio: float, slo: float = 0.99) -> bool:
    """Whether the multi-window alert fires for these error ratios of its two windows."""
    return (burn_rate(long_ratio, slo) > window.factor
            and burn_rate(short_ratio, slo) > window.factor)
