"""One bounded Locust run for an experiment: constant offered load (or a staged one), one CSV row
per request, the stats history, and CPU of Locust and of the stack, sampled every second.

Locust always runs in a subprocess (``python -m locust``; FIELD-NOTES: never import it here).
``processes > 1`` runs it distributed: a master and ``processes`` forked workers
(``--processes``), for when one generator process saturates a core.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from app.experiments.loadlab.analysis import read_request_logs
from app.experiments.loadlab.probes import Sampler
from app.stack.loadtest import LOCUSTFILE, LoadTestError, locust_command
from recstack.settings import REPO_ROOT, Settings

logger = logging.getLogger(__name__)

# Each simulated user runs one task per 1/USER_RPS seconds: the offered load is users x rate.
DEFAULT_USER_RPS = 4.0


@dataclass
class LoadRun:
    """What one Locust run left: the request log, the per-second samples, the files."""

    requests: pd.DataFrame
    samples: pd.DataFrame
    out_dir: Path
    started: float
    wall_s: float
    locust_cpu_s: float
    top_failures: list[str] = field(default_factory=list)

    @property
    def locust_cpu_cores(self) -> float:
        """Mean cores Locust used over the run (1.0 = one core busy per generator process)."""
        return self.locust_cpu_s / self.wall_s if self.wall_s > 0 else math.nan


def users_for(rps: float, user_rps: float = DEFAULT_USER_RPS) -> int:
    """Simulated users needed to offer ``rps`` requests/s at ``user_rps`` each."""
    return max(1, math.ceil(rps / user_rps))


ARRIVALS = ("poisson", "paced")
# Open loop: at least this many simulated users (each its own connection), whatever the rate:
# real traffic is many clients, each sending now and then.
MIN_CONNECTIONS = 100


@dataclass(frozen=True)
class Clients:
    """How a load of ``rps`` is offered: ``users`` simulated users at ``user_rps`` each."""

    users: int
    user_rps: float
    arrivals: str

    @property
    def rps(self) -> float:
        return self.users * self.user_rps


def clients_for(rps: float, arrivals: str = "poisson", user_rps: float = DEFAULT_USER_RPS,
                connections: int = MIN_CONNECTIONS) -> Clients:
    """Open loop (``poisson``): at least ``connections`` users, each a Poisson stream of
    ``rps / users`` (more users when that would exceed ``user_rps``), so exactly ``rps`` is
    offered. Paced: ``ceil(rps / user_rps)`` users at ``user_rps`` (the closed loop of earlier
    runs, rounded up to whole users)."""
    if arrivals not in ARRIVALS:
        raise ValueError(f"arrivals must be one of {ARRIVALS}, got {arrivals!r}")
    if arrivals == "paced":
        return Clients(users_for(rps, user_rps), user_rps, arrivals)
    users = max(connections, users_for(rps, user_rps))
    return Clients(users, rps / users, arrivals)


def run_load(
    settings: Settings,
    out_dir: Path,
    *,
    users: int,
    duration_s: int,
    user_rps: float = DEFAULT_USER_RPS,
    stages: list[tuple[float, int]] | None = None,
    processes: int = 1,
    metric_ports: Callable[[], list[int]] = list,
    during: Callable[[float], None] | None = None,
    stop_when_done: bool = False,
    host: str | None = None,
    arrivals: str = "poisson",
) -> LoadRun:
    """Run the locustfile headless for ``duration_s`` with ``users`` at ``user_rps`` each (or the
    user count of ``stages`` over time), sampling CPU and /metrics each second.

    ``during(started_epoch)`` runs in a thread once the first requests flow (chaos injects its
    fault there); the run waits for it to return, and with ``stop_when_done`` then stops Locust
    (SIGTERM: it stops its users and writes its files), so ``duration_s`` is only an upper bound.
    Raises ``LoadTestError`` if Locust fails.
    """
    _clear_out_dir(out_dir)
    host = host or f"http://{settings.stack.host}:{settings.stack.lb_port}"
    cmd = _command(host, out_dir, users, duration_s, stages, processes)
    env = _environment(settings, out_dir, user_rps, stages, arrivals)
    total_s = max(e for e, _ in stages) if stages else duration_s
    timeout_s = total_s + 60
    log_path = out_dir / "locust.log"
    proc: subprocess.Popen | None = None
    sampler = Sampler(settings, metric_ports, lambda: proc.pid if proc else None)
    worker: threading.Thread | None = None
    errors: list[BaseException] = []
    started = time.time()
    with log_path.open("wb") as log, sampler:
        proc = subprocess.Popen(
            cmd, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            if during is not None:
                first = _wait_first_request(out_dir, proc, started)
                worker = _during_thread(during, first, errors)
                worker.start()
            _wait_for_exit(proc, cmd, timeout_s, worker if stop_when_done else None)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            proc.wait()
            raise LoadTestError(f"locust did not finish within {timeout_s}s; see {log_path}") from exc
        finally:
            if worker is not None:
                worker.join(timeout=120)
    wall = time.time() - started
    if proc.returncode not in (0, -15):
        tail = log_path.read_text(errors="replace")[-1500:]
        raise LoadTestError(f"locust exited with {proc.returncode}:\n{tail}")
    if errors:
        raise errors[0]
    return _collect(out_dir, log_path, sampler, started, wall)


def _clear_out_dir(out_dir: Path) -> None:
    """Create ``out_dir``; remove a previous run's request logs and Locust CSVs from it (the
    request logs are read by glob)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*out_dir.glob("requests-*.csv"), *out_dir.glob("locust_*.csv")]:
        stale.unlink()


def _command(host: str, out_dir: Path, users: int, duration_s: int,
             stages: list[tuple[float, int]] | None, processes: int) -> list[str]:
    """The headless Locust command line: a spawn rate of the largest user count (all users
    within a second), the full stats history (``_wait_first_request`` reads it), distributed
    with ``processes`` > 1."""
    spawn = max(users, max((u for _, u in stages), default=1) if stages else 1)
    cmd = locust_command(host, users, spawn, duration_s, out_dir / "locust", LOCUSTFILE)
    cmd += ["--csv-full-history"]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    return cmd


def _environment(settings: Settings, out_dir: Path, user_rps: float,
                 stages: list[tuple[float, int]] | None,
                 arrivals: str = "poisson") -> dict[str, str]:
    """Locust's environment: the stack's home and world size, and the locustfile's settings
    (rate per user, arrivals, stages, where the request log and the online CTR go)."""
    return {
        **os.environ,
        "RECSTACK_HOME": str(settings.root),
        "RECSTACK_SIM__N_USERS": str(settings.sim.n_users),
        "RECSTACK_LOADTEST_K": str(settings.serving.k_default),
        "RECSTACK_LOADTEST_USER_RPS": f"{user_rps:.6f}",
        "RECSTACK_LOADTEST_ARRIVALS": arrivals,
        "RECSTACK_LOADTEST_REQUEST_LOG": str(out_dir / "requests"),
        "RECSTACK_LOADTEST_CTR_FILE": str(out_dir / "online_ctr.json"),
        "RECSTACK_LOADTEST_STAGES": ",".join(f"{e:g}:{u}" for e, u in stages) if stages else "",
    }


def _during_thread(during: Callable[[float], None], first: float,
                   errors: list[BaseException]) -> threading.Thread:
    """A daemon thread (not started) running ``during(first)``; what it raises is appended to
    ``errors`` and reported after Locust stops."""

    def _guarded() -> None:
        try:
            during(first)
        except BaseException as exc:  # reported after Locust stops
            errors.append(exc)

    return threading.Thread(target=_guarded, name="loadlab-during", daemon=True)


def _wait_for_exit(proc: subprocess.Popen, cmd: list[str], timeout_s: float,
                   stop_after: threading.Thread | None) -> None:
    """Wait for Locust to exit; once ``stop_after`` (if given) has finished, stop Locust
    (SIGTERM) instead. Raises ``subprocess.TimeoutExpired`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(cmd, timeout_s)
        if stop_after is not None and not stop_after.is_alive():
            proc.terminate()
            proc.wait(timeout=60)
            break
        time.sleep(0.2)


def _collect(out_dir: Path, log_path: Path, sampler: Sampler, started: float, wall: float
             ) -> LoadRun:
    """What the run left: the request logs of every Locust process, the per-second samples
    (and from them Locust's CPU seconds), the most frequent failures."""
    requests = read_request_logs(sorted(out_dir.glob("requests-*.csv")))
    if len(requests) == 0:
        raise LoadTestError(f"locust logged no requests; see {log_path}")
    samples = pd.DataFrame(sampler.rows)
    cpu_s = float(samples["cpu_cores_locust"].fillna(0).sum() * sampler.interval_s) \
        if "cpu_cores_locust" in samples else math.nan
    return LoadRun(requests, samples, out_dir, started, wall, cpu_s,
                   top_failures(out_dir / "locust_failures.csv"))


def top_failures(failures_csv: Path, n: int = 5) -> list[str]:
    """The most frequent failures of a run, from Locust's ``<prefix>_failures.csv``."""
    if not failures_csv.exists():
        return []
    frame = pd.read_csv(failures_csv)
    if frame.empty:
        return []
    frame = frame.sort_values("Occurrences", ascending=False).head(n)
    return [f"{r.Occurrences}x {r.Method} {r.Name}: {r.Error}" for r in frame.itertuples()]


def _wait_first_request(out_dir: Path, proc: subprocess.Popen, started: float,
                        timeout_s: float = 30.0) -> float:
    """Epoch time the load began: when Locust's stats history shows requests (Locust start-up,
    world loading and spawning take a few seconds), else after ``timeout_s``."""
    history = out_dir / "locust_stats_history.csv"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            lines = history.read_text().splitlines()
        except OSError:
            lines = []
        for line in lines[1:]:
            cells = line.split(",")
            # Timestamp, User Count, Type, Name, Requests/s, Failures/s, ..., Total Request Count
            if len(cells) > 17 and cells[3] == "Aggregated" and cells[17].isdigit() \
                    and int(cells[17]) > 0:
                return time.time()
        time.sleep(0.2)
    return time.time() if proc.poll() is None else started
