"""``make bench``: run the benchmark suites and write their figures.

Each suite is a function ``(settings, console) -> dict`` of figures (units in the key names).
For each suite this writes ``$RECSTACK_HOME/bench/<suite>.json`` and ``<suite>.md``, both stating
the machine and the versions that produced them. Single runs on a shared 2-core machine are
noisy: suites report medians and p99s, and ratios measured side by side in one run.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
from pathlib import Path

from rich.console import Console

from app.demo import DemoResult, run_demo
from recstack.machine import machine_info
from recstack.settings import Settings


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
            "row": r.row,
            "all_requests": r.total_requests,
            "all_failures": r.total_failures,
        }
    return figures


# suite name -> "module:function"; stage suites live with their stage.
SUITES: dict[str, str] = {
    "demo": "app.bench:bench_demo",
    "simulator": "simulator.bench:run",
    "pipelines": "pipelines.bench:run",
    "training": "training.bench:run",
    "serving": "app.stack.servingbench:run",
}


def bench_demo(settings: Settings, console: Console | None = None) -> dict[str, object]:
    """The main job once, measured: per-step seconds, offline metrics, Locust through nginx."""
    return summarize(run_demo(settings, console=console, run_load=True), settings)


def run_bench(
    settings: Settings, suites: list[str] | None = None, console: Console | None = None
) -> list[Path]:
    """Run the named suites (default: all); returns the JSON paths written."""
    names = suites or list(SUITES)
    unknown = [n for n in names if n not in SUITES]
    if unknown:
        raise ValueError(f"unknown bench suite(s) {unknown}; known: {sorted(SUITES)}")
    out = settings.bench_dir
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    written = []
    for name in names:
        module, _, func = SUITES[name].partition(":")
        figures = getattr(importlib.import_module(module), func)(settings, console)
        report = {
            "suite": name,
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine,
            "figures": figures,
        }
        path = out / f"{name}.json"
        path.write_text(json.dumps(report, indent=2, default=str))
        path.with_suffix(".md").write_text(_markdown(report))
        written.append(path)
    return written


def _markdown(report: dict) -> str:
    """A Markdown page: the machine, the suite's own summary (its ``_summary`` figure, Markdown)
    if it has one, then every figure as a row (nested keys joined by '.')."""
    m = report["machine"]
    figures = dict(report["figures"])
    summary = figures.pop("_summary", None)
    lines = [
        f"# recstack bench: {report['suite']}",
        "",
        f"Run at {report['when']} on `{m['hostname']}`: {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gib']} GiB, Python {m['python']}. The machine is shared and noisy: compare "
        "figures measured side by side in one run.",
        "",
    ]
    if summary:
        lines += [str(summary), ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in _flatten(figures)]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()), ""]
    return "\n".join(lines)


def _flatten(figures: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows += _flatten(value, name + ".")
        else:
            rows.append((name, value))
    return rows
