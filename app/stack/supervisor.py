"""A thin client of our supervisord: start the daemon, then talk XML-RPC on its loopback port."""

from __future__ import annotations

import http.client
import logging
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Any

from recstack.settings import Settings
from app.stack.paths import StackPaths
from app.stack.render import SUPERVISOR_USER
from app.stack.services import base_env

logger = logging.getLogger(__name__)


class StackError(RuntimeError):
    """The native stack could not do what was asked; the message says what and where to look."""


class _TimeoutTransport(xmlrpc.client.Transport):
    def __init__(self, timeout_s: float) -> None:
        super().__init__()
        self._timeout_s = timeout_s

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        conn = super().make_connection(host)
        conn.timeout = self._timeout_s
        return conn


@dataclass
class ProcessInfo:
    """One program as supervisord sees it."""

    name: str
    state: str
    pid: int | None
    start: float
    now: float
    description: str

    @property
    def uptime_s(self) -> float | None:
        return (self.now - self.start) if self.state == "RUNNING" and self.start else None


class Supervisor:
    """Our supervisord, addressed by the settings' supervisor port and the rendered secret."""

    def __init__(self, settings: Settings, timeout_s: float = 30.0) -> None:
        self.settings = settings
        self.paths = StackPaths.of(settings)
        self.identifier = f"recstack:{settings.root}"
        self._timeout_s = timeout_s

    def _proxy(self, timeout_s: float | None = None) -> Any:
        # Never create the secret here: a stack that was never rendered has no supervisord.
        password = self.paths.secret.read_text().strip() if self.paths.secret.exists() else "-"
        url = (
            f"http://{SUPERVISOR_USER}:{password}@{self.settings.stack.host}:"
            f"{self.settings.stack.supervisor_port}/RPC2"
        )
        transport = _TimeoutTransport(timeout_s or self._timeout_s)
        return xmlrpc.client.ServerProxy(url, transport=transport).supervisor

    def is_running(self) -> bool:
        """True if *our* supervisord answers; raises if the port belongs to something else."""
        try:
            ident = self._proxy(2.0).getIdentification()
        except (ConnectionError, OSError):
            return False
        except (xmlrpc.client.ProtocolError, http.client.HTTPException) as exc:
            raise StackError(
                f"{self.settings.stack.host}:{self.settings.stack.supervisor_port} answers but is not this stack's "
                f"supervisord ({exc}); another RECSTACK_HOME may be running "
                "there: set RECSTACK_STACK__SUPERVISOR_PORT"
            ) from exc
        if ident != self.identifier:
            raise StackError(
                f"the supervisord on port {self.settings.stack.supervisor_port} belongs to "
                f"{ident!r}, not {self.identifier!r}; stop it or choose another port"
            )
        return True

    def start_daemon(self, timeout_s: float = 15.0) -> None:
        """Start supervisord (it daemonizes) and wait until its XML-RPC port answers."""
        cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.paths.supervisord_conf)]
        proc = subprocess.run(
            cmd, env=base_env(), stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=timeout_s, check=False,
        )
        if proc.returncode != 0:
            raise StackError(
                f"supervisord did not start (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()[-800:]}"
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.is_running():
                logger.info("supervisord started (pid %s)", self.pid())
                return
            time.sleep(0.1)
        raise StackError(f"supervisord did not answer within {timeout_s}s; see {self.paths.supervisord_log}")

    def pid(self) -> int:
        return int(self._proxy().getPID())

    def processes(self) -> list[ProcessInfo]:
        return [
            ProcessInfo(
                name=i["name"], state=i["statename"], pid=i["pid"] or None,
                start=float(i["start"]), now=float(i["now"]), description=i["description"],
            )
            for i in self._proxy().getAllProcessInfo()
        ]

    def info(self, name: str) -> ProcessInfo:
        i = self._proxy().getProcessInfo(name)
        return ProcessInfo(
            name=i["name"], state=i["statename"], pid=i["pid"] or None,
            start=float(i["start"]), now=float(i["now"]), description=i["description"],
        )

    def start(self, name: str) -> None:
        """Ask supervisord to start ``name`` without waiting (health checks do the waiting)."""
        try:
            self._proxy().startProcess(name, False)
        except xmlrpc.client.Fault as fault:
            if "ALREADY_STARTED" not in fault.faultString:
                raise StackError(f"supervisord could not start {name}: {fault.faultString}") from fault

    def stop(self, name: str) -> None:
        """Stop ``name`` and wait until it has exited (stopwaitsecs, then SIGKILL to its group)."""
        try:
            self._proxy(60.0).stopProcess(name, True)
        except xmlrpc.client.Fault as fault:
            if "NOT_RUNNING" not in fault.faultString:
                raise StackError(f"supervisord could not stop {name}: {fault.faultString}") from fault

    def stop_many(self, names: list[str], timeout_s: float = 30.0) -> None:
        """Stop ``names`` concurrently (one signal each, then wait), e.g. every api replica."""
        for name in names:
            try:
                self._proxy().stopProcess(name, False)
            except xmlrpc.client.Fault as fault:
                if "NOT_RUNNING" not in fault.faultString:
                    raise StackError(f"supervisord could not stop {name}: {fault.faultString}") from fault
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(self.info(n).state not in {"RUNNING", "STARTING", "STOPPING", "BACKOFF"} for n in names):
                return
            time.sleep(0.1)

    def signal(self, name: str, signal: str) -> None:
        self._proxy().signalProcess(name, signal)

    def reload_config(self) -> tuple[list[str], list[str], list[str]]:
        """Re-read supervisord.conf; returns (added, changed, removed) program names."""
        try:
            [[added, changed, removed]] = self._proxy().reloadConfig()
        except xmlrpc.client.Fault as fault:
            raise StackError(f"supervisord rejected its config: {fault.faultString}") from fault
        return added, changed, removed

    def add(self, name: str) -> None:
        self._proxy().addProcessGroup(name)

    def remove(self, name: str) -> None:
        self.stop(name)
        self._proxy().removeProcessGroup(name)

    def shutdown(self) -> None:
        self._proxy().shutdown()
