"""Shared fixtures: free loopback ports, settings on a temporary home, real servers.

A test that needs a server binary that is missing skips, unless RECSTACK_REQUIRE_SERVICES=1
(set by `make test` and CI), in which case it fails: CI cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from recstack.settings import Settings, get_settings

REQUIRE_SERVICES = os.environ.get("RECSTACK_REQUIRE_SERVICES") == "1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(n: int) -> int:
    """A port p such that p .. p+n-1 are all free (a native stack's API replicas)."""
    for _ in range(50):
        p = free_port()
        socks = [socket.socket() for _ in range(n)]
        try:
            for i, sock in enumerate(socks):
                sock.bind(("127.0.0.1", p + i))
            return p
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports")


def need_binary(name: str) -> str:
    """Path of a server binary, or skip (fail when services are required)."""
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        message = f"{name} is not installed (make system-deps installs it)"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for_port(port: int, timeout_s: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Stop a server started with ``start_new_session=True`` and every process it forked."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings on a temporary RECSTACK_HOME with a tiny world; ports are the defaults."""
    monkeypatch.setenv("RECSTACK_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    s = Settings(
        home=tmp_path / "home",
        sim={"n_users": 200, "n_items": 150, "n_categories": 5, "days": 3, "seed": 7},
    )
    yield s
    get_settings.cache_clear()


def start_redis(port: int, workdir: Path) -> subprocess.Popen:
    """A private, non-persistent redis-server on loopback ``port``, answering when returned
    (stop it with ``stop_process``): a test's own, so flushing it touches nobody's data."""
    proc = subprocess.Popen(
        [need_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_for_port(port, 10, proc)
    return proc


@contextlib.contextmanager
def serve_app(app: Any, port: int, name: str = "test-api") -> Iterator[str]:
    """Serve the ASGI ``app`` with uvicorn in a thread on loopback ``port`` (lifespan on);
    yields its base URL once it accepts requests, and stops it afterwards."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name=name, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A private redis-server on a free port (never the machine's own instance); yields the port."""
    port = free_port()
    proc = start_redis(port, tmp_path_factory.mktemp("redis"))
    try:
        yield port
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, local artifacts); yields its URI."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("mlflow")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir}/mlflow.db",
         "--artifacts-destination", str(workdir / "artifacts")],
        stdout=open(workdir / "mlflow.log", "wb"), stderr=subprocess.STDOUT,
        # The background-job workers (7 processes, ~200 MB each) are not used by recstack.
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        start_new_session=True,
    )
    try:
        wait_for_port(port, 90, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture
def native_stack_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Settings]]:
    """A factory for the settings of a private native stack: a temporary home, a tiny world,
    every port free on loopback (``api_ports`` consecutive ones for the replicas, so a test can
    scale up to that many), 2 replicas; ``extra`` adds environment variables. The environment
    is set, so the stack's child processes see the same settings."""

    def make(api_ports: int = 2, **extra: str) -> Settings:
        for binary in ("redis-server", "nginx", "prometheus"):
            need_binary(binary)
        env = {
            "RECSTACK_HOME": str(tmp_path / "home"),
            "RECSTACK_REDIS__PORT": str(free_port()),
            "RECSTACK_MLFLOW__PORT": str(free_port()),
            "RECSTACK_STACK__LB_PORT": str(free_port()),
            "RECSTACK_STACK__PROMETHEUS_PORT": str(free_port()),
            "RECSTACK_STACK__SUPERVISOR_PORT": str(free_port()),
            "RECSTACK_STACK__MONITOR_PORT": str(free_port()),
            "RECSTACK_STACK__API_BASE_PORT": str(free_port_run(api_ports)),
            "RECSTACK_STACK__API_REPLICAS": "2",
            "RECSTACK_SIM__N_USERS": "300",
            "RECSTACK_SIM__N_ITEMS": "200",
            "RECSTACK_SIM__N_CATEGORIES": "6",
            "RECSTACK_SIM__DAYS": "3",
            **extra,
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        get_settings.cache_clear()
        return get_settings()

    yield make
    get_settings.cache_clear()
