"""``make bench``: run the main job once, measured, and write its figures.

Writes ``$RECSTACK_HOME/bench/skeleton.json`` (every figure, units in the key names) and
``skeleton.md`` (a table), both stating the machine and the versions that produced them. The
figures of a single run on a shared 2-core machine are noisy: compare ratios measured in one run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path

from rich.console import Console

from recstack.demo import DemoResult, run_demo
from recstack.settings import Settings

VERSIONED = ["apache-beam", "feast", "mlflow", "fastapi", "uvicorn", "lightgbm", "faiss-cpu",
             "locust", "redis"]


def machine_info() -> dict[str, object]:
    """The machine and software that produced a figure."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "hostname": platform.node(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


def summarize(result: DemoResult, settings: Settings) -> dict[str, object]:
    """Figures with units in their names."""
    sim = result.simulation
    n_events = sim.n_impressions + sim.n_clicks
    steps = result.step_seconds
    figures: dict[str, object] = {
        "n_users": sim.n_users,
        "n_items": sim.n_items,
        "n_days": sim.n_days,
        "n_events": n_events,
        "steps_s": {k: round(v, 3) for k, v in steps.items()},
    }
    for name, seconds in steps.items():
        if name.startswith("2/6"):
            figures["simulate_events_per_s"] = round(n_events / seconds, 1)
        if name.startswith("3/6"):
            figures["pipeline_and_materialize_events_per_s"] = round(n_events / seconds, 1)
        if name.startswith("4/6"):
            figures["train_s"] = round(seconds, 2)
    if result.training is not None:
        figures["offline_metrics"] = {k: round(v, 5) for k, v in result.training.metrics.items()}
    if result.load is not None:
        r = result.load
        figures["load"] = {
            "users": settings.load.users,
            "duration_s": settings.load.duration_s,
            "api_replicas": settings.stack.api_replicas,
            "requests": r.requests,
            "failures": r.failures,
            "rps": round(r.rps, 1),
            "p50_ms": r.p50_ms,
            "p95_ms": r.p95_ms,
            "p99_ms": r.p99_ms,
        }
    return figures


def run_bench(settings: Settings, console: Console | None = None) -> Path:
    """Run the demo measured; returns the JSON path (a Markdown summary is written beside it)."""
    result = run_demo(settings, console=console, run_load=True)
    report = {
        "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "figures": summarize(result, settings),
    }
    out = settings.bench_dir
    out.mkdir(parents=True, exist_ok=True)
    path = out / "skeleton.json"
    path.write_text(json.dumps(report, indent=2))
    (out / "skeleton.md").write_text(_markdown(report))
    return path


def _markdown(report: dict) -> str:
    m, f = report["machine"], report["figures"]
    lines = [
        "# recstack bench: the main job, measured",
        "",
        f"Run at {report['when']} on `{m['hostname']}`: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Python {m['python']}. One run; the machine is shared and noisy.",
        "",
        f"World: {f['n_users']:,} users, {f['n_items']:,} items, {f['n_days']} days, "
        f"{f['n_events']:,} events.",
        "",
        "| step | seconds |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.2f} |" for k, v in f["steps_s"].items()]
    if "load" in f:
        load = f["load"]
        lines += [
            "",
            f"Locust through nginx, {load['users']} users for {load['duration_s']} s, "
            f"{load['api_replicas']} API replicas:",
            "",
            "| requests | failures | RPS | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|",
            f"| {load['requests']:,} | {load['failures']} | {load['rps']} | {load['p50_ms']} | "
            f"{load['p95_ms']} | {load['p99_ms']} |",
        ]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
    return "\n".join(lines)
