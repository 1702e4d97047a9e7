"""Hot swap under load: a real serving replica (uvicorn) keeps answering while a new champion
is trained, gated and promoted; no request fails and the response's ``model`` switches.

Real Redis, MLflow and Feast (a tiny simulated world through the Beam pipeline); the load is a
thread pool of HTTP clients in this process (never Locust here: gevent).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from recstack.settings import REPO_ROOT, Settings
from tests.conftest import free_port, stop_process, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.mlflow, pytest.mark.slow]

N_CLIENTS = 4


def _env(s: Settings, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "RECSTACK_HOME": str(s.home),
        "RECSTACK_REDIS__PORT": str(s.redis.port),
        "RECSTACK_MLFLOW__TRACKING_URI": s.mlflow.uri,
        "RECSTACK_MLFLOW__CANDIDATES_MODEL": s.mlflow.candidates_model,
        "RECSTACK_MLFLOW__RANKER_MODEL": s.mlflow.ranker_model,
        "RECSTACK_FEAST__PROJECT": s.feast.project,
        "RECSTACK_SIM__N_USERS": str(s.sim.n_users),
        # Poll the alias every second so the test does not wait a minute for the swap.
        "RECSTACK_SERVING__ITEM_REFRESH_S": "1",
        "RECSTACK_SERVING__MATERIALIZATION_POLL_S": "1",
        "RECSTACK_LOG_LEVEL": "INFO",
    }


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout_s
    body: dict = {}
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the serving process exited"
        try:
            r = httpx.get(f"{url}/readyz", timeout=5)
            body = r.json()
            if r.status_code == 200:
                return body
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"replica not ready after {timeout_s}s: {body}")


def test_promotion_under_load_drops_no_request(
    settings: Settings, redis_server: int, mlflow_server: str, tmp_path
) -> None:
    from pipelines.run import run_all
    from recstack.settings import GateSettings
    from simulator.generate import simulate
    from training.train import train_and_register

    tag = uuid.uuid4().hex[:8]
    s = settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"port": redis_server}),
        "feast": settings.feast.model_copy(update={"project": f"hotswap_{tag}"}),
        "mlflow": settings.mlflow.model_copy(update={
            "tracking_uri": mlflow_server, "candidates_model": f"candidates_{tag}",
            "ranker_model": f"ranker_{tag}"}),
        "train": settings.train.model_copy(update={"embedding_dim": 8, "ranker_rounds": 40}),
        # Five days of 400 users: enough signal that the first model beats the popularity
        # baseline, which the gate requires before anything is promoted.
        "sim": settings.sim.model_copy(update={"n_users": 400, "days": 5}),
    })
    simulate(s)
    run_all(s)
    first = train_and_register(s, gate=GateSettings(latency_p99_ms=100.0))
    assert first.promoted

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serving.log", "wb")  # noqa: SIM115 - outlives this block, closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "serving.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=REPO_ROOT, env=_env(s, port), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stop = threading.Event()
    failures: list[str] = []
    seen: list[tuple[float, str]] = []  # (completion time, ranker version)
    lock = threading.Lock()

    def client_loop(i: int) -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            n = 0
            while not stop.is_set():
                n += 1
                user = (i * 7919 + n * 31) % s.sim.n_users
                try:
                    r = client.get(f"/recommendations/{user}", params={"k": 10})
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    if r.status_code != 200 or len(r.json()["items"]) != 10:
                        failures.append(f"{r.status_code}: {r.text[:200]}")
                    else:
                        seen.append((time.monotonic(), r.json()["model"]["ranker"]))

    try:
        wait_for_port(port, 60, proc)
        ready = _wait_ready(url, proc)
        assert ready["model"]["ranker"] == first.ranker_version
        with ThreadPoolExecutor(N_CLIENTS) as pool:
            futures = [pool.submit(client_loop, i) for i in range(N_CLIENTS)]
            time.sleep(2)
            # The same data retrains the same model: a zero margin lets the tie win, so the
            # gate promotes it (and exercises the whole gate under load).
            second = train_and_register(s, gate=GateSettings(margin=0.0, latency_p99_ms=100.0))
            assert second.promoted, second.gate_reason
            promoted_at = time.monotonic()
            deadline = promoted_at + 60
            while time.monotonic() < deadline:
                with lock:
                    if seen and seen[-1][1] == second.ranker_version:
                        break
                time.sleep(0.2)
            time.sleep(2)  # keep the load on after the swap
            stop.set()
            for f in futures:
                f.result(timeout=30)
        readyz = httpx.get(f"{url}/readyz", timeout=5).json()
    finally:
        stop.set()
        stop_process(proc)
        log.close()

    versions = Counter(v for _, v in seen)
    assert not failures, f"{len(failures)} failed of {len(seen) + len(failures)}: {failures[:5]}"
    assert versions[first.ranker_version] > 0 and versions[second.ranker_version] > 0, versions
    # After the swap the replica serves only the new pair (a request in flight may finish late).
    first_new = min(t for t, v in seen if v == second.ranker_version)
    assert first_new - promoted_at < 30, "the replica took too long to pick up the champion"
    late = [v for t, v in seen if t > first_new + 1.0]
    assert late and set(late) == {second.ranker_version}, Counter(late)
    assert readyz["model"] == {"candidates": second.candidates_version,
                               "ranker": second.ranker_version}
