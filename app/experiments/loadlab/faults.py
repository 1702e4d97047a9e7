"""The faults a chaos experiment injects into the native stack, each with a way to end it.

A fault's ``inject()`` breaks something and returns; ``clear()`` ends the fault (or waits for the
stack to heal itself, e.g. supervisord restarting a killed replica) and returns once the broken
part is back. The experiment records the wall-clock times around both.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, field

import redis

from app.experiments.loadlab.probes import program_pids
from app.stack import health, runner
from app.stack.services import api_ports, stage_ports
from recstack.settings import Settings

logger = logging.getLogger(__name__)

FAULTS = ("kill-replica", "stop-redis", "slow-redis", "kill-ranking", "stop-mlflow", "overload")

DESCRIPTIONS = {
    "kill-replica": "SIGKILL the last api replica under load; supervisord restarts it; the fault "
                    "ends when its /readyz answers 200 again",
    "stop-redis": "stop Redis (a snapshot is saved first so it comes back with the features); "
                  "start it again after the window",
    "slow-redis": "real Redis latency: CLIENT PAUSE in a loop (paused most of every cycle) "
                  "for the window",
    "kill-ranking": "SIGKILL the ranking service (split mode); supervisord restarts it; the "
                    "fault ends when its /readyz answers 200 again",
    "stop-mlflow": "stop the MLflow tracking server for the window, then start it again",
    "overload": "offered load goes from 50% of the measured peak to 2x the peak for the window, "
                "then back",
}


class FaultError(RuntimeError):
    """The fault cannot be injected on this stack (the message says what to change)."""


def _wait_ready_port(port: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code, _ = health.http_status(port, "/readyz")
        if code == 200:
            return True
        time.sleep(0.1)
    return False


@dataclass
class Fault:
    """Base: nothing to break (``overload`` is made by the load itself)."""

    settings: Settings
    name: str = "overload"
    notes: list[str] = field(default_factory=list)

    def prepare(self) -> None:
        """Checks and set-up before the load starts; raises ``FaultError`` when impossible."""

    def inject(self) -> None:
        """Break it."""

    def clear(self) -> None:
        """End the fault; returns when the broken part is back."""


@dataclass
class KillProgram(Fault):
    """SIGKILL one supervised program; supervisord (autorestart) brings it back."""

    program: str = "api-1"
    port: int = 0
    timeout_s: float = 85.0

    def prepare(self) -> None:
        if self.program not in program_pids(self.settings):
            raise FaultError(f"{self.program} is not running; start it first")

    def inject(self) -> None:
        pid = program_pids(self.settings).get(self.program)
        if pid is None:
            raise FaultError(f"{self.program} is not running")
        os.kill(pid, signal.SIGKILL)
        self.notes.append(f"SIGKILL {self.program} (pid {pid})")
        logger.info("killed %s (pid %d)", self.program, pid)

    def clear(self) -> None:
        # Wait for supervisord to notice and restart, then for the new process to be ready.
        time.sleep(0.5)
        if not _wait_ready_port(self.port, self.timeout_s):
            raise FaultError(f"{self.program} was not ready again within {self.timeout_s:.0f}s")


@dataclass
class StopService(Fault):
    """Stop a supervised service through supervisord, start it again when the window ends."""

    service: str = "redis"

    def prepare(self) -> None:
        if self.service == "redis":
            # The native stack's Redis keeps no snapshot (the lake and Feast can rebuild it); a
            # production Redis would have persistence or a replica. Save one now, so the restarted
            # server loads the online features instead of coming back empty.
            client = _redis(self.settings)
            client.save()
            self.notes.append("Redis SAVE before the fault: the restarted server reloads the snapshot")

    def inject(self) -> None:
        runner.stop_service(self.settings, self.service)
        self.notes.append(f"stopped {self.service}")

    def clear(self) -> None:
        runner.start_service(self.settings, self.service)
        self.notes.append(f"started {self.service}")


@dataclass
class SlowRedis(Fault):
    """Pauses every Redis client for ``pause_ms`` of every ``cycle_ms`` (``CLIENT PAUSE``)."""

    pause_ms: int = 40
    cycle_ms: int = 50
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def prepare(self) -> None:
        _redis(self.settings).ping()

    def inject(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="slow-redis", daemon=True)
        self._thread.start()
        self.notes.append(f"CLIENT PAUSE {self.pause_ms} ms every {self.cycle_ms} ms")

    def _loop(self) -> None:
        client = _redis(self.settings)
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                client.execute_command("CLIENT", "PAUSE", self.pause_ms, "ALL")
            except Exception as exc:  # keep slowing; say why once
                logger.warning("CLIENT PAUSE failed: %s", exc)
                self._stop.wait(0.5)
            self._stop.wait(max(0.0, self.cycle_ms / 1000 - (time.monotonic() - t)))

    def clear(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _redis(self.settings).execute_command("CLIENT", "UNPAUSE")


def _redis(settings: Settings):  # noqa: ANN202 - redis.Redis, imported lazily

    password = settings.redis.secret()
    return redis.Redis(host=settings.redis.host, port=settings.redis.port, password=password,
                       socket_timeout=5)


def make_fault(settings: Settings, name: str, replicas: int) -> Fault:
    """The ``Fault`` for ``name`` on this stack; raises ``FaultError`` if it cannot apply."""
    if name == "kill-replica":
        if replicas < 2:
            raise FaultError("kill-replica needs at least 2 api replicas (`recstack scale api=2`)")
        return KillProgram(settings, name, program=f"api-{replicas - 1}",
                           port=api_ports(settings, replicas)[-1])
    if name == "kill-ranking":
        if settings.serving.mode != "split":
            raise FaultError(
                "kill-ranking needs split mode: RECSTACK_SERVING__MODE=split, then `recstack up`"
            )
        return KillProgram(settings, name, program="ranking-0",
                           port=stage_ports(settings, "ranking", 1)[0])
    if name == "stop-redis":
        return StopService(settings, name, service="redis")
    if name == "stop-mlflow":
        return StopService(settings, name, service="mlflow")
    if name == "slow-redis":
        return SlowRedis(settings, name)
    if name == "overload":
        return Fault(settings, name)
    raise FaultError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
