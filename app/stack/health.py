"""Health probes of the stack's services: Redis PING, HTTP status, TCP connect (loopback only)."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

from recstack.settings import Settings
from app.stack.services import HealthCheck

# Loopback probes must never go through an HTTP proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(port: int, path: str, timeout_s: float = 2.0) -> tuple[int | None, str]:
    """(status, first bytes of the body) of GET http://127.0.0.1:port/path; (None, why) if none."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}{path}", timeout=timeout_s) as resp:
            return resp.status, resp.read(300).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(300).decode("utf-8", "replace")
    except (OSError, ValueError) as exc:
        return None, str(exc)


def prometheus_reload_state(port: int) -> tuple[float, bool] | None:
    """(time of Prometheus's last config reload, whether it succeeded) from its own /metrics."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=2.0) as resp:
            text = resp.read().decode("utf-8", "replace")
    except (OSError, ValueError):
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("prometheus_config_last_reload_success_timestamp_seconds",
                    "prometheus_config_last_reload_successful"):
            values[name] = float(value)
    if len(values) != 2:
        return None
    return (values["prometheus_config_last_reload_success_timestamp_seconds"],
            values["prometheus_config_last_reload_successful"] == 1.0)


def port_open(port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s):
            return True
    except OSError:
        return False


def redis_ping(port: int, password: str | None, timeout_s: float = 1.0) -> tuple[bool, str]:
    """Send AUTH (if any) and PING in RESP; True when Redis answers +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            if password:
                pw = password.encode()
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw))
                reply = sock.recv(256)
                if not reply.startswith(b"+OK"):
                    return False, reply.decode("utf-8", "replace").strip()
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = sock.recv(256)
            return reply.startswith(b"+PONG"), reply.decode("utf-8", "replace").strip()
    except OSError as exc:
        return False, str(exc)


def probe(check: HealthCheck, settings: Settings) -> tuple[bool, str]:
    """Run one health check; (healthy, what was seen)."""
    if check.kind == "redis":
        password = settings.redis.secret()
        return redis_ping(check.port, password)
    if check.kind == "process":
        return True, "running (no port to probe)"
    if check.kind == "http":
        status, body = http_status(check.port, check.path)
        return status == 200, f"GET {check.path} -> {status}: {body[:120]}"
    return port_open(check.port), f"tcp {check.port}"
