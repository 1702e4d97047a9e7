"""The native stack for real: supervisord, redis-server, Prometheus and nginx on free ports.

The api replicas and MLflow are covered end to end by test_end_to_end.py; here the stack's own
mechanics: up (idempotent), status, scale (nginx upstreams + Prometheus file_sd follow without a
restart), stop/start one program, clear errors, and `down` leaving no process behind.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from recstack.settings import Settings
from app.stack.runner import down, scale, start_service, status, stop_service, up
from app.stack.supervisor import StackError
from app.stack.health import http_status, port_open, redis_ping
from app.stack.loadtest import run_locust
from app.stack.paths import StackPaths
from tests.conftest import free_port, need_binary

pytestmark = [pytest.mark.integration, pytest.mark.redis]

CORE = ["redis", "prometheus", "nginx"]


def _alive(pid: int) -> bool:
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture
def stack_settings(tmp_path: Path) -> Iterator[Settings]:
    for binary in ("redis-server", "nginx", "prometheus"):
        need_binary(binary)
    s = Settings(
        home=tmp_path / "home",
        redis={"port": free_port()},
        mlflow={"port": free_port()},
        stack={
            "lb_port": free_port(), "prometheus_port": free_port(),
            "supervisor_port": free_port(), "api_base_port": free_port(),
            "api_replicas": 2, "start_timeout_s": 30,
        },
    )
    yield s
    down(s)  # whatever a failing test left behind


def _rows(s: Settings) -> dict[str, object]:
    return {row.name: row for row in status(s)}


def _api_targets(s: Settings) -> list[dict]:
    code, _ = http_status(s.stack.prometheus_port, "/-/ready")
    assert code == 200
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    url = f"http://127.0.0.1:{s.stack.prometheus_port}/api/v1/targets"
    data = json.load(opener.open(url, timeout=5))["data"]["activeTargets"]
    return [t for t in data if t["labels"]["job"] == "api"]


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.3)


def test_up_status_scale_stop_start_down(stack_settings: Settings) -> None:
    s = stack_settings
    up(s, services=CORE)
    rows = _rows(s)
    for name in ("supervisord", *CORE):
        assert rows[name].state == "RUNNING", rows[name]
        assert rows[name].pid and _alive(rows[name].pid)
    assert rows["redis"].port == s.redis.port and rows["nginx"].port == s.stack.lb_port
    assert rows["api-0"].state == "STOPPED" and rows["mlflow"].state == "STOPPED"
    assert redis_ping(s.redis.port, s.redis.secret())[0]
    assert http_status(s.stack.lb_port, "/lb/healthz")[0] == 200
    assert http_status(s.stack.lb_port, "/healthz")[0] == 502  # no api replica is up yet

    # Idempotent: a second `up` starts nothing new and restarts nothing.
    pids = {name: row.pid for name, row in rows.items()}
    up(s, services=["redis", "nginx"])
    assert {n: r.pid for n, r in _rows(s).items()} == pids

    # Scale out: supervisord gains api-2 (api not running, so it stays stopped), nginx reloads
    # in place (same master pid) with 3 upstreams, Prometheus follows the file_sd targets
    # without a restart (it batches discovery updates every 5 s, hence the wait).
    scale(s, "api", 3)
    rows = _rows(s)
    assert [n for n in rows if n.startswith("api-")] == ["api-0", "api-1", "api-2"]
    assert rows["nginx"].pid == pids["nginx"] and rows["nginx"].state == "RUNNING"
    assert StackPaths.of(s).nginx_conf.read_text().count("max_fails=2") == 3
    _wait_for(lambda: len(_api_targets(s)) == 3, 20, "3 api targets")
    assert {t["labels"]["replica"] for t in _api_targets(s)} == {"api-0", "api-1", "api-2"}

    scale(s, "api", 1)
    assert [n for n in _rows(s) if n.startswith("api-")] == ["api-0"]
    assert StackPaths.of(s).nginx_conf.read_text().count("max_fails=2") == 1
    assert len(json.loads(StackPaths.of(s).prometheus_targets.read_text())) == 1
    up(s, services=["redis"])  # the scaled count sticks across `up`
    assert [n for n in _rows(s) if n.startswith("api-")] == ["api-0"]

    # One program down and up again, the others untouched.
    stop_service(s, "redis")
    assert _rows(s)["redis"].state == "STOPPED" and not port_open(s.redis.port)
    assert _rows(s)["prometheus"].pid == pids["prometheus"]
    start_service(s, "redis")
    assert _rows(s)["redis"].state == "RUNNING" and redis_ping(s.redis.port, s.redis.secret())[0]

    all_pids = [row.pid for row in status(s) if row.pid]
    assert len(all_pids) == 4  # supervisord, redis, prometheus, nginx
    down(s)
    time.sleep(0.2)
    assert not [p for p in all_pids if _alive(p)], "processes left behind after down"
    for port in (s.redis.port, s.stack.lb_port, s.stack.prometheus_port, s.stack.supervisor_port):
        assert not port_open(port), f"port {port} still open"
    assert status(s) == []
    down(s)  # idempotent


def test_a_port_taken_by_someone_else_is_named(stack_settings: Settings) -> None:
    s = stack_settings
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", s.redis.port))
        squatter.listen()
        with pytest.raises(StackError, match=f"port {s.redis.port} for redis"):
            up(s, services=["redis"])


def test_a_crashing_service_fails_with_its_log(stack_settings: Settings) -> None:
    s = stack_settings
    # Bound but not listening: the pre-start port check cannot see it, redis-server's bind()
    # fails at every start and supervisor gives up (FATAL); `up` must say so with the log tail.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", s.redis.port))
        with pytest.raises(StackError) as err:
            up(s, services=["redis"])
    message = str(err.value)
    assert message.startswith("redis failed to start") and "FATAL" in message
    assert "Address already in use" in message  # the log tail says why


def test_down_reaps_children_of_a_supervisord_killed_hard(stack_settings: Settings) -> None:
    s = stack_settings
    up(s, services=["redis"])
    rows = _rows(s)
    os.kill(rows["supervisord"].pid, signal.SIGKILL)
    _wait_for(lambda: not _alive(rows["supervisord"].pid), 5, "supervisord to die")
    assert _alive(rows["redis"].pid)  # orphaned, still serving
    assert status(s) == []
    down(s)
    _wait_for(lambda: not _alive(rows["redis"].pid), 5, "the orphan to be reaped")
    assert not port_open(s.redis.port)


class _StubApi(http.server.BaseHTTPRequestHandler):
    """Answers /recommendations/{user}?k=N with N items, or with too few when told to."""

    short = False

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urllib.parse.urlparse(self.path)
        k = int(urllib.parse.parse_qs(url.query)["k"][0])
        n = k - 1 if self.short else k
        body = json.dumps({
            "request_id": "stub", "model": {"candidates": "1", "ranker": "1"}, "degraded": [],
            "items": [{"item_id": i, "score": 1.0 / (i + 1), "source": "ann"} for i in range(n)],
        })
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("short", [False, True])
def test_locust_runs_headless_and_checks_bodies(tmp_path: Path, short: bool) -> None:
    handler = type("Stub", (_StubApi,), {"short": short})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        s = Settings(home=tmp_path, sim={"n_users": 50})
        result = run_locust(
            s, host=f"http://127.0.0.1:{server.server_port}", users=2, spawn_rate=10,
            duration_s=4, out_dir=tmp_path / "load",
        )
    finally:
        server.shutdown()
    assert result.requests >= 3  # a loaded machine may start Locust slowly
    assert result.csv_path.exists() and result.p50_ms >= 0
    if short:
        assert result.failures == result.requests
        assert any("expected 20 items, got 19" in f for f in result.top_failures), result.top_failures
    else:
        assert result.failures == 0, result.top_failures


@pytest.mark.mlflow
@pytest.mark.slow
def test_mlflow_runs_under_the_stack_with_its_state_in_home(stack_settings: Settings) -> None:
    s = stack_settings
    up(s, services=["mlflow"])
    row = _rows(s)["mlflow"]
    assert row.state == "RUNNING" and row.port == s.mlflow.port
    assert http_status(s.mlflow.port, "/health")[0] == 200
    assert (s.mlflow_dir / "mlflow.db").exists()
    # The server's children (uvicorn) go too: down leaves nothing.
    family = [row.pid, *(c.pid for c in psutil.Process(row.pid).children(recursive=True))]
    down(s)
    assert not [p for p in family if _alive(p)]


def test_the_sink_drains_the_event_stream_into_the_lake(stack_settings: Settings) -> None:
    import redis

    from recstack import lake
    from serving.events import EVENTS_STREAM

    s = stack_settings
    up(s, services=["redis", "sink"])
    assert _rows(s)["sink"].state == "RUNNING"
    client = redis.Redis.from_url(s.redis.url)
    for i in range(5):
        client.xadd(EVENTS_STREAM, {
            "event_id": f"e{i}", "ts": "2026-01-02T03:04:05+00:00", "user_id": "1",
            "item_id": str(10 + i), "event_type": "impression",
        })
    client.xadd(EVENTS_STREAM, {"event_id": "bad", "user_id": "minus one"})
    _wait_for(lambda: lake.read_events(s.lake_dir).num_rows == 5, 20, "5 events in the lake")
    _wait_for(lambda: (s.root / "sink" / "dead_letter.jsonl").exists(), 10, "the dead letter")
    # The container health check: the native program's consumer is "sink-0".
    from serving.sink import is_alive

    assert is_alive(s, consumer="sink-0")
    assert not is_alive(s, consumer="nobody")
    stop_service(s, "sink")
    assert _rows(s)["sink"].state == "STOPPED"
    time.sleep(1.5)
    assert not is_alive(s, consumer="sink-0", max_idle_ms=1000)
