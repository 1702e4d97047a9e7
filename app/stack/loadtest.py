"""Headless Locust runs of ``loadtests/locustfile.py`` in a subprocess, and parsing of their CSV.

Locust is never imported here: its gevent monkey-patching breaks ssl in a process that already
imported urllib3/httpx (FIELD-NOTES), so it always runs as ``python -m locust``.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import os
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from recstack.settings import REPO_ROOT, Settings

logger = logging.getLogger(__name__)

LOCUSTFILE = REPO_ROOT / "loadtests" / "locustfile.py"
AGGREGATED = "Aggregated"
# The locustfiles' name for GET /recommendations/{user_id}: the latency a client of the
# recommender sees (the Aggregated row also mixes in POST /events).
RECOMMENDATIONS_ROW = "/recommendations/[user]"


class LoadTestError(RuntimeError):
    """Locust did not run or left no usable statistics."""


@dataclass(frozen=True)
class LoadResult:
    """One row of a Locust run (``row``: a request name, or "Aggregated"): counts, throughput
    and latency percentiles (ms); ``total_*`` count every request of the run."""

    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    csv_path: Path
    top_failures: list[str] = field(default_factory=list)
    locust_cpu_s: float = math.nan  # CPU seconds Locust itself used (user + system)
    row: str = AGGREGATED
    total_requests: int = 0
    total_failures: int = 0
    # Of ``failures``: the requests a replica shed (503 + Retry-After, overload), not errors.
    shed: int = 0

    @property
    def errors(self) -> int:
        return self.failures - self.shed

    @property
    def failure_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 0.0


def _children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (Locust runs as one)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _number(value: str) -> float:
    """A Locust CSV cell as a float; "N/A" (no requests) becomes NaN."""
    try:
        return float(value)
    except ValueError:
        return math.nan


def parse_stats_csv(
    stats_csv: Path, failures_csv: Path | None = None, row: str = AGGREGATED
) -> LoadResult:
    """Read the row named ``row`` of a Locust ``<prefix>_stats.csv`` (and top failures if
    given); the "Aggregated" row gives ``total_requests``/``total_failures``."""
    if not stats_csv.exists():
        raise LoadTestError(f"Locust wrote no statistics at {stats_csv}")
    with stats_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    totals = [r for r in rows if r.get("Name") == AGGREGATED]
    if not totals:
        raise LoadTestError(f"no 'Aggregated' row in {stats_csv}")
    picked = [r for r in rows if r.get("Name") == row and (row == AGGREGATED or r.get("Type"))]
    if not picked:
        names = sorted({str(r.get("Name")) for r in rows} - {AGGREGATED})
        raise LoadTestError(f"no {row!r} row in {stats_csv} (rows: {names})")
    found, total = picked[-1], totals[-1]
    try:
        result = LoadResult(
            requests=int(found["Request Count"]),
            failures=int(found["Failure Count"]),
            rps=_number(found["Requests/s"]),
            p50_ms=_number(found["50%"]),
            p95_ms=_number(found["95%"]),
            p99_ms=_number(found["99%"]),
            csv_path=stats_csv,
            top_failures=_top_failures(failures_csv) if failures_csv else [],
            shed=_shed(failures_csv, row) if failures_csv else 0,
            row=row,
            total_requests=int(total["Request Count"]),
            total_failures=int(total["Failure Count"]),
        )
    except (KeyError, ValueError) as exc:
        raise LoadTestError(f"unexpected Locust stats format in {stats_csv}: {exc}") from exc
    return result


def _shed(failures_csv: Path, row: str) -> int:
    """Failures of ``row`` that were a replica shedding load: the locustfile's "status 503"."""
    if not failures_csv.exists():
        return 0
    with failures_csv.open(newline="") as f:
        return sum(
            int(r.get("Occurrences") or 0) for r in csv.DictReader(f)
            if (row == AGGREGATED or r.get("Name") == row)
            and str(r.get("Error", "")).startswith("status 503")
        )


def warm_up(ports: dict[str, int], n_users: int, requests_per_replica: int = 100) -> int:
    """GET ``requests_per_replica`` lists from each replica directly (not through the balancer),
    one at a time, so a measured run does not start on cold code paths, caches and connection
    pools. Returns the requests that answered 200."""
    ok = 0
    for port in ports.values():
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5.0, trust_env=False) as c:
            for i in range(requests_per_replica):
                try:
                    ok += c.get(f"/recommendations/{i % max(n_users, 1)}").status_code == 200
                except httpx.HTTPError:
                    pass
    return ok


def _top_failures(failures_csv: Path, n: int = 5) -> list[str]:
    if not failures_csv.exists():
        return []
    with failures_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows.sort(key=lambda r: -int(r.get("Occurrences") or 0))
    return [f"{r.get('Occurrences')}x {r.get('Method')} {r.get('Name')}: {r.get('Error')}" for r in rows[:n]]


def locust_command(
    host: str, users: int, spawn_rate: float, duration_s: int, prefix: Path,
    locustfile: Path = LOCUSTFILE,
) -> list[str]:
    """The headless Locust command line (its own process; see the module docstring)."""
    return [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        "-u", str(users), "-r", str(spawn_rate), "-t", f"{duration_s}s",
        "--host", host, "--csv", str(prefix), "--only-summary",
        # Failures are a result to report, not a reason to lose the CSV.
        "--exit-code-on-error", "0",
        "--stop-timeout", "5",
        "--loglevel", "WARNING",
    ]


def run_locust(
    settings: Settings,
    host: str,
    users: int,
    spawn_rate: float,
    duration_s: int,
    out_dir: Path,
    locustfile: Path = LOCUSTFILE,
    extra_env: dict[str, str] | None = None,
    row: str = AGGREGATED,
) -> LoadResult:
    """Run the locustfile headless against ``host`` for ``duration_s``; returns its ``row``
    (a request name such as ``RECOMMENDATIONS_ROW``, default the aggregate of all requests).

    Writes ``<out_dir>/locust_stats.csv`` (+ failures, history, and ``locust.log``). Raises
    ``LoadTestError`` if Locust fails, hangs past a hard timeout or writes no statistics.
    """
    if users < 1 or spawn_rate <= 0 or duration_s < 1:
        raise LoadTestError(
            f"need users >= 1, spawn_rate > 0, duration_s >= 1 (got {users}, {spawn_rate}, {duration_s})"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = out_dir / "locust"
    for stale in out_dir.glob("locust_*.csv"):
        stale.unlink()
    env = {
        **os.environ,
        # The locustfile reads the user-id range and the saved world (under RECSTACK_HOME) from
        # here; it imports only the light simulator.users after Locust has patched the process.
        "RECSTACK_HOME": str(settings.root),
        "RECSTACK_SIM__N_USERS": str(settings.sim.n_users),
        "RECSTACK_LOADTEST_K": str(settings.serving.k_default),
        **(extra_env or {}),
    }
    cmd = locust_command(host, users, spawn_rate, duration_s, prefix, locustfile)
    cpu_before = _children_cpu_s()
    timeout_s = duration_s + 60  # start-up, spawn, stop-timeout and CSV writing
    log_path = out_dir / "locust.log"
    logger.info("locust: %d users for %ds against %s", users, duration_s, host)
    with log_path.open("wb") as log:
        try:
            proc = subprocess.run(
                cmd, env=env, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, timeout=timeout_s, check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LoadTestError(f"locust did not finish within {timeout_s}s; see {log_path}") from exc
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace")[-1500:]
        raise LoadTestError(f"locust exited with {proc.returncode}:\n{tail}")
    result = parse_stats_csv(Path(f"{prefix}_stats.csv"), Path(f"{prefix}_failures.csv"), row)
    result = dataclasses.replace(result, locust_cpu_s=_children_cpu_s() - cpu_before)
    logger.info(
        "locust (%s): %d requests, %d failures, %.1f rps, p99 %.0f ms",
        row, result.requests, result.failures, result.rps, result.p99_ms,
    )
    return result
