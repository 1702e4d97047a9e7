"""A pure ASGI middleware timing every HTTP request by route template (cheaper than
``BaseHTTPMiddleware``, which wraps each request in extra tasks and streams)."""

from __future__ import annotations

import time
from typing import Any

from serving.metrics import ServingMetrics


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
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.request_duration.labels(route=label).observe(time.perf_counter() - start)
            self.metrics.requests.labels(route=label, code=str(status[0])).inc()
