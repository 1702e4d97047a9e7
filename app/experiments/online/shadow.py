"""``recstack experiment shadow``: what does scoring a challenger in the shadow cost?

The same simulated sessions go twice through an in-process API on the stack's Redis and MLflow:
once without an experiment, once in shadow mode (the challenger scores every request on a
background thread, never served). Compared: the served latency (client side) of both passes,
the shadow's own latency, its drops and how much of the served list it would have shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.experiments.online.driver import drive_api
from app.experiments.online.run import wait_ready
from app.experiments.report import ReportFolder
from recstack.settings import Settings
from serving.app import create_app
from simulator.world import World


def _quantiles(seconds: np.ndarray) -> dict[str, float | None]:
    if seconds.size == 0:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None}
    return {"p50_ms": float(np.quantile(seconds, 0.5) * 1000),
            "p99_ms": float(np.quantile(seconds, 0.99) * 1000),
            "mean_ms": float(seconds.mean() * 1000)}


def shadow_cost(settings: Settings, challenger: str, world: World, days: int = 1,
                max_users: int | None = None, seed: int = 0,
                progress: Any = None) -> dict[str, Any]:
    """Served latency without and with the shadow, and the shadow's own figures."""
    users = None if max_users is None else np.arange(min(max_users, world.n_users))
    out: dict[str, Any] = {"challenger": challenger, "days": days}
    for mode in ("off", "shadow"):
        ab = settings.ab.model_copy(update={"mode": mode, "treatment": challenger})
        app = create_app(settings.model_copy(update={"ab": ab}))
        with TestClient(app) as client:
            wait_ready(client)
            log = drive_api(client, world, days, ab.salt, {"control": 1.0},
                            settings.sim.list_size, seed, users=users, post_events=False,
                            on_request=progress)
            served = np.concatenate([v for v in log.latency_s.values()] or [np.empty(0)])
            out[mode] = {"requests": int(served.size), **_quantiles(served)}
            exp = app.state.experiment
            if mode == "shadow" and exp is not None and exp.shadow is not None:
                exp.shadow.drain(60)
                runner = exp.shadow
                out["shadow_arm"] = {
                    **runner.counts, "versions": exp.shadow_arm.versions,
                    **_quantiles(np.fromiter(runner.seconds, float)),
                    "mean_overlap": (float(np.mean(runner.overlaps))
                                     if runner.overlaps else None),
                }
    if out["off"]["p99_ms"] and out["shadow"]["p99_ms"]:
        out["served_p99_cost_ms"] = out["shadow"]["p99_ms"] - out["off"]["p99_ms"]
        out["served_p50_cost_ms"] = out["shadow"]["p50_ms"] - out["off"]["p50_ms"]
    return out


def write_shadow_report(settings: Settings, out: dict[str, Any]) -> Any:
    """``$RECSTACK_HOME/reports/shadow-<stamp>/`` with the comparison table and summary.json."""
    folder = ReportFolder.create(settings, "shadow", f"Shadow cost of {out['challenger']}")
    folder.text(
        "The same simulated sessions through an in-process API twice: without an experiment, "
        "then with the challenger scoring every request in the shadow (background thread, "
        "bounded queue, never served). Served latency is measured at the client; both passes "
        "share the machine's cores with the load generator."
    )
    folder.table([{"pass": mode, **out[mode]} for mode in ("off", "shadow")])
    if "shadow_arm" in out:
        folder.text("Shadow arm:")
        folder.table([out["shadow_arm"]])
    return folder.finish(out, settings.ab.model_dump())
