"""What the experiments watch besides the requests: CPU of processes (from /proc), the replicas'
/metrics (breaker state, degraded and shed counters), and which pid serves which program.

A ``Sampler`` thread records one row per second while a load runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil
from prometheus_client.parser import text_string_to_metric_families

from app.stack.supervisor import Supervisor
from recstack.settings import Settings

logger = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used, from ``/proc/<pid>/stat``; 0 if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return 0.0
    fields = raw[raw.rindex(")") + 2:].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


def machine_busy_s() -> float:
    """CPU seconds the whole machine has been busy (all cores; ``/proc/stat`` minus idle and
    iowait): with the stack's own CPU it shows what other tenants took."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / _CLK_TCK


def tree_pids(pid: int) -> list[int]:
    """``pid`` and its live descendants (nginx and uvicorn workers, Locust's forked workers)."""
    try:
        proc = psutil.Process(pid)
        return [pid, *(c.pid for c in proc.children(recursive=True))]
    except psutil.Error:
        return []


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants."""
    return sum(proc_cpu_s(p) for p in tree_pids(pid))


def program_pids(settings: Settings) -> dict[str, int]:
    """Running supervised programs and their pids, as supervisord reports them."""
    sup = Supervisor(settings)
    try:
        return {i.name: i.pid for i in sup.processes() if i.pid and i.state == "RUNNING"}
    except OSError:
        return {}


def scrape(port: int, timeout_s: float = 0.8) -> str:
    """A replica's /metrics text, or "" when it does not answer."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def metric_values(text: str, name: str, label: str | None = None) -> dict[str, float]:
    """Samples of metric ``name`` (counters may end in ``_total``) summed by ``label``'s value
    ("" when ``label`` is None)."""
    out: dict[str, float] = {}
    if not text:
        return out
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError:
        return out
    for family in families:
        if family.name not in (name, name.removesuffix("_total")):
            continue
        for sample in family.samples:
            if sample.name not in (name, f"{name}_total", family.name):
                continue
            key = sample.labels.get(label, "") if label else ""
            out[key] = out.get(key, 0.0) + sample.value
    return out


@dataclass
class Sampler:
    """Samples once a second, in a thread: CPU of the watched programs and of Locust, and each
    replica's breaker state and counters. ``rows`` holds one dict per sample."""

    settings: Settings
    metric_ports: Callable[[], list[int]]
    locust_pid: Callable[[], int | None]
    interval_s: float = 1.0
    rows: list[dict[str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="loadlab-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Sampler:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        pids: dict[str, int] = {}
        last_pids = 0.0
        prev: dict[str, float] = {}
        prev_t = time.time()
        while not self._stop.is_set():
            now = time.time()
            if now - last_pids > 2.0:
                pids = program_pids(self.settings) or pids
                last_pids = now
            cpu: dict[str, float] = {}
            for name, pid in pids.items():
                service = name.split("-", 1)[0]
                cpu[service] = cpu.get(service, 0.0) + tree_cpu_s(pid)
            lpid = self.locust_pid()
            if lpid:
                cpu["locust"] = tree_cpu_s(lpid)
            ours = list(cpu)
            cpu["machine"] = machine_busy_s()
            row: dict[str, float] = {"t": now}
            dt_ = max(now - prev_t, 1e-3)
            for key, value in cpu.items():
                if key in prev and value >= prev[key]:
                    row[f"cpu_cores_{key}"] = (value - prev[key]) / dt_
            if "cpu_cores_machine" in row:
                row["cpu_cores_other"] = max(0.0, row["cpu_cores_machine"] - sum(
                    row.get(f"cpu_cores_{k}", 0.0) for k in ours))
            prev, prev_t = cpu, now
            breaker = degraded = shed = 0.0
            up = 0
            for port in self.metric_ports():
                text = scrape(port)
                if not text:
                    continue
                up += 1
                states = metric_values(text, "recstack_breaker_state", "dependency")
                breaker = max([breaker, *states.values()])
                degraded += sum(metric_values(text, "recstack_degraded_total", "reason").values())
                shed += sum(metric_values(text, "recstack_shed_requests_total", "route").values())
            row |= {"breaker_state_max": breaker, "replicas_up": up,
                    "degraded_total": degraded, "shed_total": shed}
            self.rows.append(row)
            self._stop.wait(max(0.0, self.interval_s - (time.time() - now)))
