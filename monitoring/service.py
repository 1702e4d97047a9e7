"""``recstack monitor``: the drift monitor as a long-running process with ``/metrics``."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import httpx
import redis
from prometheus_client import start_http_server

from monitoring.monitor import DriftMonitor
from monitoring.onlinestore import RedisOnlineStore
from recstack.settings import Settings

logger = logging.getLogger(__name__)


def api_sampler(base_url: str, k: int = 20, timeout_s: float = 2.0):
    """``users -> answers`` through the API (failed calls are skipped, not raised)."""
    client = httpx.Client(base_url=base_url, timeout=timeout_s)

    def sample(users: list[int]) -> list[dict[str, Any]]:
        out = []
        for u in users:
            try:
                r = client.get(f"/recommendations/{u}", params={"k": k})
                if r.status_code == 200:
                    out.append(r.json())
            except httpx.HTTPError:
                continue
        return out
    return sample


def build_monitor(settings: Settings, api_url: str | None = None) -> DriftMonitor:
    client = redis.Redis.from_url(settings.redis.url, socket_timeout=5.0)
    url = api_url or f"http://{settings.stack.host}:{settings.stack.lb_port}"
    return DriftMonitor(settings, redis=client,
                        store=RedisOnlineStore(client, settings.feast.project),
                        sample_api=api_sampler(url))


def serve(settings: Settings, port: int | None = None, once: bool = False,
          api_url: str | None = None) -> int:
    """Check every ``monitor.interval_s`` and serve /metrics on ``port`` until SIGTERM/SIGINT;
    returns the number of checks."""
    monitor = build_monitor(settings, api_url)
    stop = threading.Event()
    if once:
        monitor.check()
        return 1
    port = port or settings.stack.monitor_port
    server, thread = start_http_server(port, addr=settings.stack.host,
                                       registry=monitor.metrics.registry)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    logger.info("monitor: /metrics on %s:%d, a check every %.0fs", settings.stack.host, port,
                settings.monitor.interval_s)
    n = 0
    try:
        while not stop.is_set():
            result = monitor.check()
            n += 1
            if result.alerting:
                logger.warning("monitor: alerting %s", result.alerting)
            stop.wait(settings.monitor.interval_s)
    finally:
        server.shutdown()
        thread.join(timeout=5)
    logger.info("monitor: stopped after %d checks", n)
    return n
