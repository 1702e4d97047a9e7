"""A private stack for one experiment: Redis, MLflow, API replicas (one per alias) and the
event sink as child processes on free loopback ports, state under the experiment's own home.

Stages run as the stack runs them (``uvicorn serving.app:create_app``, ``python -m
serving.sink``, ``python -m app.cli <verb>``), so the experiment exercises the real code
paths; the stack never touches the default ports or the machine's services.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from recstack.settings import REPO_ROOT, Settings

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StackStartError(RuntimeError):
    """A process of the private stack did not come up; the message has its log tail."""


@dataclass
class MiniStack:
    home: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    api_ports: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, extra_env: dict[str, str] | None = None) -> MiniStack:
        home = settings.root
        home.mkdir(parents=True, exist_ok=True)
        sim = settings.sim
        env = {
            **os.environ, "RECSTACK_HOME": str(home),
            "RECSTACK_REDIS__PORT": str(settings.redis.port),
            "RECSTACK_MLFLOW__PORT": str(settings.mlflow.port),
            "RECSTACK_SIM__SEED": str(sim.seed), "RECSTACK_SIM__N_USERS": str(sim.n_users),
            "RECSTACK_SIM__N_ITEMS": str(sim.n_items),
            "RECSTACK_SIM__N_CATEGORIES": str(sim.n_categories),
            "RECSTACK_SIM__DAYS": str(sim.days),
            "RECSTACK_SIM__START_DATE": sim.start_date.isoformat(),
            "RECSTACK_PIPELINE__MAX_ROW_SWING": "1000",  # live days differ in volume from the lake
            **(extra_env or {}),
        }
        env.pop("RECSTACK_MLFLOW__TRACKING_URI", None)
        return cls(home, env)

    def _log(self, name: str) -> Path:
        (self.home / "logs").mkdir(parents=True, exist_ok=True)
        return self.home / "logs" / f"{name}.log"

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.procs[name] = subprocess.Popen(
            argv, cwd=REPO_ROOT, env={**self.env, **(env or {})},
            stdout=open(self._log(name), "ab"), stderr=subprocess.STDOUT, start_new_session=True)

    def wait_http(self, name: str, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                break
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        tail = self._log(name).read_text(errors="replace").splitlines()[-8:]
        raise StackStartError(f"{name} not ready at {url}: " + " | ".join(tail))

    def start_infra(self, redis_port: int, mlflow_port: int) -> None:
        (self.home / "redis").mkdir(parents=True, exist_ok=True)
        self.spawn("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", str(self.home / "redis")])
        mlflow_dir = self.home / "mlflow"
        mlflow_dir.mkdir(parents=True, exist_ok=True)
        self.spawn("mlflow", [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1",
                              "--port", str(mlflow_port), "--workers", "1",
                              "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}",
                              "--artifacts-destination", str(mlflow_dir / "artifacts")],
                   env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        self.wait_http("mlflow", f"http://127.0.0.1:{mlflow_port}/health", 120)

    def run_cli(self, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess:
        """``python -m app.cli <args>`` with the stack's environment; raises on failure."""
        proc = subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=REPO_ROOT,
                              env=self.env, capture_output=True, text=True, timeout=timeout_s)
        with open(self._log("cli"), "a") as f:
            f.write(f"$ recstack {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n")
        return proc

    def start_api(self, name: str, alias: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        self.api_ports[name] = port
        uvicorn = str(Path(sys.executable).parent / "uvicorn")
        self.spawn(name, [uvicorn, "serving.app:create_app", "--factory", "--host", "127.0.0.1",
                          "--port", str(port), "--no-access-log"],
                   env={"RECSTACK_MLFLOW__SERVING_ALIAS": alias, "RECSTACK_REPLICA": name,
                        **(env or {})})
        url = f"http://127.0.0.1:{port}"
        self.wait_http(name, f"{url}/readyz", 180)
        return url

    def start_sink(self) -> None:
        self.spawn("sink", [sys.executable, "-m", "serving.sink"],
                   env={"RECSTACK_SINK__CONSUMER": "experiment"})

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def __enter__(self) -> MiniStack:
        # SIGTERM (a supervisor, `kill`) unwinds like Ctrl-C, so the servers this stack started
        # are stopped, not left running on their ports (they are in sessions of their own).
        self._previous_sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
