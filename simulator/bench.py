"""Simulator benchmark: events per second and peak memory for 1M and 10M events.

Each size runs ``simulate`` in its own subprocess (``python -m simulator.bench --events N
--home DIR``) so its peak RSS is its own, on a world sized to produce about N events (10
simulated days, 10 items per list, one session per user per day). The child writes a real lake
(streamed by day and block) into a scratch home under ``settings.bench_dir``, which is deleted
afterwards. Registered in ``recstack bench`` as ``simulator.bench:run``.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from recstack.settings import Settings
from simulator.generate import simulate

logger = logging.getLogger(__name__)

SIZES = (1_000_000, 10_000_000)
DAYS = 10
LIST_SIZE = 10
TIMEOUT_S = 900  # per size; 10M took about 2 minutes on 2 cores


def world_size(n_events: int) -> dict[str, int]:
    """Simulation settings that produce about ``n_events`` events (impressions + ~5% clicks)."""
    users = max(100, round(n_events / (DAYS * LIST_SIZE * 1.05)))
    return {
        "n_users": users,
        "n_items": max(1000, min(50_000, users // 5)),
        "n_categories": 20,
        "days": DAYS,
        "list_size": LIST_SIZE,
    }


def run(settings: Settings, console: Console | None = None) -> dict[str, Any]:
    """Measure each size of SIZES in a subprocess; figures keyed ``events_<size>.<figure>``."""
    console = console or Console(stderr=True)
    figures: dict[str, Any] = {"days": DAYS, "list_size": LIST_SIZE}
    scratch_root = settings.bench_dir / "simulator"
    for n in SIZES:
        label = f"{n // 1_000_000}M"
        scratch = scratch_root / f"home-{label}"
        shutil.rmtree(scratch, ignore_errors=True)
        with console.status(f"simulator bench: ~{label} events in a subprocess"):
            result = _run_child(n, scratch)
        shutil.rmtree(scratch, ignore_errors=True)
        console.print(
            f"simulator bench {label}: {result['events']:,} events in {result['seconds']:.1f} s "
            f"({result['events_per_s']:,.0f}/s), peak RSS {result['peak_rss_mib']:.0f} MiB"
        )
        figures[f"events_{label}"] = result
    if scratch_root.exists() and not any(scratch_root.iterdir()):
        scratch_root.rmdir()
    return figures


def _run_child(n_events: int, home: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "simulator.bench", "--events", str(n_events), "--home", str(home)]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
        stdin=subprocess.DEVNULL,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"simulator bench child failed ({proc.returncode}): {proc.stderr[-800:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(n_events: int, home: Path) -> dict[str, Any]:
    """Simulate about ``n_events`` events into ``home``; the figures, this process's peak RSS."""
    sim = world_size(n_events)
    settings = Settings(home=home, sim=sim)
    # Peak RSS of the interpreter with numpy/pyarrow loaded: what the run adds is the rest.
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    summary = simulate(settings)
    seconds = time.perf_counter() - started
    events = summary.n_impressions + summary.n_clicks
    lake_bytes = sum(p.stat().st_size for p in summary.files)
    return {
        "events": events,
        "n_users": sim["n_users"],
        "n_items": sim["n_items"],
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_before_run_mib": round(baseline_kib / 1024, 1),
        "lake_mib": round(lake_bytes / 2**20, 1),
        "lake_bytes_per_event": round(lake_bytes / events, 2),
    }


def main(argv: list[str] | None = None) -> None:
    """Child entry point: print one JSON line of :func:`measure` figures."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, required=True)
    parser.add_argument("--home", type=Path, required=True)
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.events, args.home)))


if __name__ == "__main__":
    main()
