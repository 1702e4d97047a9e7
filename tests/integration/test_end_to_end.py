"""The walking skeleton, end to end: the demo's every stage on tiny data, real servers on free ports.

simulate -> Beam -> Feast/Redis -> train -> MLflow -> supervisord (Redis, MLflow, Prometheus,
2 API replicas, nginx) -> Locust -> recommendations through nginx -> Prometheus scraped them ->
``down`` leaves no process behind.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

import httpx
import psutil
import pytest

from recstack.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.mlflow, pytest.mark.slow]


class _LightLoad:
    """GET /recommendations through the balancer from a thread, one request at a time, until
    stopped or ``max_requests``; keeps every status (or error) it saw."""

    def __init__(self, base_url: str, max_requests: int = 3000) -> None:
        self.base_url = base_url
        self.max_requests = max_requests
        self.outcomes: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
            for i in range(self.max_requests):
                if self._stop.is_set():
                    return
                try:
                    r = client.get(f"/recommendations/{i % 300}", params={"k": 5})
                    self.outcomes.append(str(r.status_code))
                except httpx.HTTPError as exc:
                    self.outcomes.append(type(exc).__name__)
                time.sleep(0.02)

    def __enter__(self) -> "_LightLoad":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


@pytest.fixture
def stack_settings(native_stack_settings: Callable[..., Settings]) -> Settings:
    # Ports for up to 3 replicas: the test scales the API to 3.
    return native_stack_settings(api_ports=3, RECSTACK_LOAD__USERS="4",
                                 RECSTACK_LOAD__SPAWN_RATE="4", RECSTACK_LOAD__DURATION_S="5")


def test_demo_end_to_end_then_down_leaves_nothing(stack_settings: Settings) -> None:
    from app.stack import runner as stack
    from app.demo import run_demo

    s = stack_settings
    try:
        result = run_demo(s, run_load=True)

        # Every stage did its real job.
        assert result.simulation.n_clicks > 0
        assert result.training.candidates_version and result.training.ranker_version
        assert result.load is not None and result.load.requests > 0
        assert result.load.failures == 0, f"Locust saw failures: {result.load}"

        lb = stack.urls(s)["api"]
        with httpx.Client(base_url=lb, timeout=10) as client:
            rec = client.get("/recommendations/1", params={"k": 7})
            assert rec.status_code == 200, rec.text
            body = rec.json()
            assert len(body["items"]) == 7
            assert len({i["item_id"] for i in body["items"]}) == 7
            assert body["model"]["candidates"] == str(result.training.candidates_version)
            assert body["model"]["ranker"] == str(result.training.ranker_version)
            scores = [i["score"] for i in body["items"]]
            assert scores == sorted(scores, reverse=True)

            cold = client.get("/recommendations/99999999", params={"k": 5})
            assert cold.status_code == 200 and len(cold.json()["items"]) == 5

            bad = client.get("/recommendations/1", params={"k": 0})
            assert bad.status_code == 422 and "k" in bad.text

            # Both replicas answer behind the balancer (each counts its own requests).
            for i in range(s.stack.api_replicas):
                port = s.stack.api_base_port + i
                assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200

        # Prometheus scrapes every replica and has the serving metrics.
        prom = stack.urls(s)["prometheus"]
        deadline = time.monotonic() + 30
        while True:
            targets = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            api_targets = [t for t in targets if t["labels"].get("job") == "api"]
            if len(api_targets) == s.stack.api_replicas and all(
                t["health"] == "up" for t in api_targets
            ):
                break
            assert time.monotonic() < deadline, f"api targets not all up: {api_targets}"
            time.sleep(1)
        query = httpx.get(
            f"{prom}/api/v1/query",
            params={"query": "sum(recstack_stage_duration_seconds_count) by (stage)"},
            timeout=5,
        ).json()
        stages = {r["metric"]["stage"] for r in query["data"]["result"]}
        assert {"candidates", "ranking"} <= stages, stages

        # Scale out and back in under a light, bounded load: nginx and Prometheus follow, a new
        # replica gets traffic only once ready, a removed one only after nginx let it go.
        with _LightLoad(lb) as load:
            time.sleep(1)
            stack.scale(s, "api", 3)
            assert httpx.get(f"http://127.0.0.1:{s.stack.api_base_port + 2}/readyz",
                             timeout=5).status_code == 200
            time.sleep(2)
            stack.scale(s, "api", 1)
            time.sleep(2)
        assert len(load.outcomes) >= 20, load.outcomes
        failed = [o for o in load.outcomes if o != "200"]
        assert not failed, f"{len(failed)} of {len(load.outcomes)} failed while scaling: {failed[:5]}"
        assert [r.name for r in stack.status(s) if r.service == "api"] == ["api-0"]
        deadline = time.monotonic() + 30
        while True:
            targets = httpx.get(f"{prom}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            if [t["labels"]["replica"] for t in targets if t["labels"].get("job") == "api"] == [
                "api-0"
            ]:
                break
            assert time.monotonic() < deadline, "Prometheus still scrapes removed replicas"
            time.sleep(1)

        pids = [row.pid for row in stack.status(s) if row.pid]
        assert len(pids) >= 5  # redis, mlflow, prometheus, 1 api, nginx, sink
    finally:
        stack.down(s)

    time.sleep(0.5)
    alive = [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not alive, f"processes left behind after down: {alive}"
    for port in (s.redis.port, s.mlflow.port, s.stack.lb_port, s.stack.prometheus_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
