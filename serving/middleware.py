"""Pure ASGI middlewares (cheaper than ``BaseHTTPMiddleware``, which wraps each request in extra
tasks and streams): request timing by route template, and the per-replica concurrency limit."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
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


class BusyMeter:
    """The fraction of recent wall time a replica spent working on limited requests.

    An exponentially decaying integral of request durations (time constant ``window_s``):
    ``fraction()`` is about 1 while requests run back to back, about 0 on an idle replica.
    O(1) per request, no history kept.
    """

    def __init__(self, window_s: float = 1.0, clock: Callable[[], float] = time.perf_counter):
        self.window_s = window_s
        self.clock = clock
        self._busy_s = 0.0
        self._at = clock()

    def _decayed(self, now: float) -> float:
        return self._busy_s * math.exp(-(now - self._at) / self.window_s)

    def add(self, duration_s: float) -> None:
        now = self.clock()
        self._busy_s = self._decayed(now) + duration_s
        self._at = now

    def fraction(self) -> float:
        return min(1.0, self._decayed(self.clock()) / self.window_s)


class ConcurrencyLimitMiddleware:
    """At most ``limit`` limited requests in flight, and none that already waited longer than
    ``max_queue_s``; the others get 503 + Retry-After at once.

    No queue of our own: a request either starts now or is refused, so accepted requests keep
    their latency under overload and the balancer can retry an idempotent GET on another
    replica. A plain counter is enough: the event loop is single-threaded and the
    check-and-increment has no ``await`` between them. The in-process path runs inline on the
    event loop, so under overload requests wait in the kernel's accept queue instead, where no
    counter sees them: the balancer stamps each request (``X-Request-Start: t=<unix seconds>``,
    nginx's ``$msec``) and a request that waited past ``max_queue_s`` is refused when it
    finally starts, in microseconds, instead of being served too late to be useful.

    Only while this replica is busy (``busy.fraction() >= min_busy``): a late request at a
    replica with room did not wait in *its* queue. That is the balancer's retry after a dead
    replica's connect timeout - nginx sends the retry with the first attempt's stamp - and
    refusing it would turn a successful failover into an error.
    """

    def __init__(self, app: Any, metrics: ServingMetrics, limit: int, retry_after_s: int = 1,
                 max_queue_s: float | None = None, min_busy: float = 0.0):
        self.app = app
        self.metrics = metrics
        self.limit = limit
        self.max_queue_s = max_queue_s
        self.min_busy = min_busy
        self.busy = BusyMeter()
        self.in_flight = 0
        self._body = orjson.dumps({
            "error": "overloaded",
            "detail": f"this replica is at its limit of {limit} requests in flight; retry later",
        })
        self._queued_body = orjson.dumps({
            "error": "overloaded",
            "detail": f"the request waited more than {(max_queue_s or 0) * 1000:g} ms before this "
                      "replica could start it; retry later",
        })
        self._headers = [
            (b"content-type", b"application/json"),
            (b"retry-after", str(retry_after_s).encode()),
        ]

    def _waited_too_long(self, scope: dict) -> bool:
        if self.max_queue_s is None:
            return False
        for name, value in scope.get("headers", ()):
            if name == b"x-request-start":
                try:
                    started = float(value.split(b"=", 1)[-1])
                except ValueError:
                    return False  # not ours to judge: serve it
                return (time.time() - started > self.max_queue_s
                        and self.busy.fraction() >= self.min_busy)
        return False

    async def _refuse(self, scope: dict, send: Any, body: bytes) -> None:
        self.metrics.shed.labels(route=_shed_label(scope) or "other").inc()
        headers = [*self._headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(LIMITED_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await self._refuse(scope, send, self._body)
            return
        if self._waited_too_long(scope):
            await self._refuse(scope, send, self._queued_body)
            return
        self.in_flight += 1
        self.metrics.in_flight.inc()
        start = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.busy.add(time.perf_counter() - start)
            self.in_flight -= 1
            self.metrics.in_flight.dec()


BODY_METHODS = (b"POST", b"PUT", b"PATCH")


class BodySizeLimitMiddleware:
    """Bodies larger than ``max_bytes`` get 413 before the app parses anything.

    A declared ``Content-Length`` over the limit is refused without reading; otherwise the body
    is read here (at most ``max_bytes`` + one chunk, then refused: chunked uploads declare no
    length) and replayed to the app, which reads it whole anyway to parse the JSON.
    """

    def __init__(self, app: Any, metrics: ServingMetrics, max_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_bytes = max_bytes
        self._body = orjson.dumps({
            "error": "body_too_large",
            "detail": f"the request body is larger than {max_bytes} bytes "
                      "(events.max_body_bytes); send smaller batches",
        })

    def _declared_too_large(self, scope: dict) -> bool:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return int(value) > self.max_bytes
                except ValueError:
                    return False  # the server rejects a malformed length itself
        return False

    async def _refuse(self, scope: dict, send: Any) -> None:
        if scope.get("path", "").startswith("/events"):
            self.metrics.events_rejected.labels(reason="body_too_large").inc()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close"),
                   (b"content-length", str(len(self._body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": self._body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("method", "").encode() not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        if self._declared_too_large(scope):
            await self._refuse(scope, send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)


def _replay(messages: list[dict], receive: Any) -> Any:
    """A ``receive`` that returns ``messages`` first, then defers to the server's."""
    pending = list(messages)

    async def replayed() -> dict:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed
