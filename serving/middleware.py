"""Pure ASGI middlewares (cheaper than ``BaseHTTPMiddleware``, which wraps each request in extra
tasks and streams): request timing by route template, and the per-replica concurrency limit."""

from __future__ import annotations

import time
from typing import Any

import orjson

from serving.metrics import ServingMetrics

# Paths that do work worth bounding; probes and /metrics are never shed, so a saturated replica
# still answers its balancer and Prometheus.
LIMITED_PREFIXES = ("/recommendations", "/events")


class RequestMetricsMiddleware:
    def __init__(self, app: Any, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            # The template (/recommendations/{user_id}), never the raw path: ids are not labels.
            label = getattr(route, "path", None) or _shed_label(scope) or "unmatched"
            self.metrics.request_duration.labels(route=label).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route=label, code=str(status[0])).inc()


def _shed_label(scope: dict) -> str | None:
    """A route label for requests answered before routing (shed), without the id in the path."""
    path = scope.get("path", "")
    return next((p for p in LIMITED_PREFIXES if path.startswith(p)), None)


class ConcurrencyLimitMiddleware:
    """At most ``limit`` limited requests in flight; the next one gets 503 + Retry-After at once.

    No queue: a request either starts now or is refused, so accepted requests keep their
    latency under overload and the balancer can retry an idempotent GET on another replica.
    A plain counter is enough: the event loop is single-threaded and the check-and-increment
    has no ``await`` between them.
    """

    def __init__(self, app: Any, metrics: ServingMetrics, limit: int, retry_after_s: int = 1):
        self.app = app
        self.metrics = metrics
        self.limit = limit
        self.in_flight = 0
        self._body = orjson.dumps({
            "error": "overloaded",
            "detail": f"this replica is at its limit of {limit} requests in flight; retry later",
        })
        self._headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", str(retry_after_s).encode()),
            (b"content-length", str(len(self._body)).encode()),
        ]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(LIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            self.metrics.shed.labels(route=_shed_label(scope) or "other").inc()
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.metrics.in_flight.dec()
