"""The M/M/c queue: Erlang C, the response-time tail, and the servers needed for a p99 target.

Model: Poisson arrivals at rate ``lam`` (requests/s), ``c`` identical servers, each serving one
request at a time with exponential service times of mean ``1/mu`` seconds, first come first
served, unbounded queue. A request's response time is its wait in the queue plus its service.

- offered load ``a = lam / mu`` (Erlangs), utilization ``rho = a / c`` (< 1 for a steady state);
- Erlang C, the probability that an arrival waits: ``C(c, a) = (a^c / c!) / (1 - rho) /
  (sum_{k<c} a^k / k! + (a^c / c!) / (1 - rho))``;
- the wait is 0 with probability ``1 - C`` and otherwise exponential with rate ``theta = c mu -
  lam``; the service is exponential with rate ``mu``. So
  ``P(T > t) = (1 - C) e^{-mu t} + C P(Exp(theta) + Exp(mu) > t)``, where the sum of two
  exponentials (hypoexponential) has ``P(> t) = (theta e^{-mu t} - mu e^{-theta t}) / (theta -
  mu)`` (and ``(1 + mu t) e^{-mu t}`` when ``theta = mu``).
"""

from __future__ import annotations

import math


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in an M/M/c queue with offered load ``a`` Erlangs."""
    if c < 1:
        raise ValueError(f"need at least one server, got {c}")
    if a < 0:
        raise ValueError(f"offered load must be >= 0, got {a}")
    if a >= c:
        return 1.0
    # Iterative Erlang B (numerically stable), then C from B.
    b = 1.0
    for k in range(1, c + 1):
        b = a * b / (k + a * b)
    rho = a / c
    return b / (1 - rho + rho * b)


def response_time_tail(t: float, lam: float, mu: float, c: int) -> float:
    """``P(T > t)`` for the response time (wait + service) of an M/M/c queue, t in seconds."""
    if lam >= c * mu:
        return 1.0
    if t <= 0:
        return 1.0
    wait_p = erlang_c(c, lam / mu)
    theta = c * mu - lam
    if abs(theta - mu) < 1e-12 * mu:
        hypo = (1 + mu * t) * math.exp(-mu * t)
    else:
        hypo = (theta * math.exp(-mu * t) - mu * math.exp(-theta * t)) / (theta - mu)
    return (1 - wait_p) * math.exp(-mu * t) + wait_p * hypo


def response_time_quantile(q: float, lam: float, mu: float, c: int) -> float:
    """The ``q`` quantile (e.g. 0.99) of the response time in seconds; inf when unstable."""
    if not 0 < q < 1:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if lam >= c * mu:
        return math.inf
    lo, hi = 0.0, 1.0 / mu
    while response_time_tail(hi, lam, mu, c) > 1 - q:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        if response_time_tail(mid, lam, mu, c) > 1 - q:
            lo = mid
        else:
            hi = mid
    return hi


def servers_needed(lam: float, mu: float, p99_s: float, q: float = 0.99, max_c: int = 100_000) -> int:
    """The fewest servers whose ``q`` response-time quantile is at most ``p99_s`` at rate ``lam``.

    Raises ValueError when even an idle server is too slow (the service time alone breaks it).
    """
    if -math.log(1 - q) / mu > p99_s:
        raise ValueError(
            f"the service time alone (mean {1000 / mu:.1f} ms) has a p{q * 100:g} of "
            f"{-1000 * math.log(1 - q) / mu:.1f} ms > {p99_s * 1000:.0f} ms: no server count helps"
        )
    lo = math.floor(lam / mu) + 1  # the fewest servers with a steady state
    hi = lo
    while response_time_quantile(q, lam, mu, hi) > p99_s:  # the quantile falls as c grows
        if hi > max_c:
            raise ValueError(f"more than {max_c} servers needed")
        lo, hi = hi, hi * 2
    while lo < hi:
        mid = (lo + hi) // 2
        if response_time_quantile(q, lam, mu, mid) <= p99_s:
            hi = mid
        else:
            lo = mid + 1
    return hi


def max_rate_at_slo(mu: float, c: int, p99_s: float, q: float = 0.99) -> float:
    """The highest arrival rate at which ``c`` servers keep the ``q`` quantile within ``p99_s``."""
    if response_time_quantile(q, 0.0, mu, c) > p99_s:
        return 0.0
    lo, hi = 0.0, c * mu
    for _ in range(80):
        mid = (lo + hi) / 2
        if response_time_quantile(q, mid, mu, c) <= p99_s:
            lo = mid
        else:
            hi = mid
    return lo
