"""A/A calibration: the same policy in both arms; how often does the A/B test cry wolf?"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from scipy import stats as sps

from app.experiments.online.analysis import analyse
from app.experiments.online.driver import drive_api
from app.experiments.online.simulate import simulate_policies
from simulator.world import World


def aa_false_positive_rate(world: World, ab: Any, runs: int = 200, days: int = 3,
                           policy: str = "policy:logging", list_size: int = 10,
                           seed: int = 0) -> dict[str, Any]:
    """``runs`` seeded A/A experiments (salt and seed differ per run); the share significant at
    ``ab.alpha`` with its exact (Clopper-Pearson) 95% interval, and the p-values."""
    arms = [("control", policy, 0.5), ("treatment", policy, 0.5)]
    results = [analyse(simulate_policies(world, arms, f"aa-{seed}-{run}", days, list_size,
                                         seed + run), [("control", 0.5), ("treatment", 0.5)], ab)
               for run in range(runs)]
    return calibration(results, ab.alpha)


def calibration(results: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """The false-positive rate of A/A ``results`` (``analyse`` outputs) with its exact
    (Clopper-Pearson) 95% interval, the SRM alarms and the p-values."""
    runs = len(results)
    significant = sum(bool(r["test"]["significant"]) for r in results)
    ci = sps.binomtest(significant, runs).proportion_ci(0.95)
    return {"runs": runs, "false_positives": significant, "rate": significant / runs,
            "ci_low": ci.low, "ci_high": ci.high, "alpha": alpha,
            "srm_alarms": sum(not r["srm"]["ok"] for r in results),
            "p_values": [r["test"]["p_value"] for r in results]}


def aa_through_api(world: World, client_for: Callable[[str], Any], ab: Any, runs: int = 10,
                   days: int = 1, list_size: int = 10, seed: int = 0,
                   users: Any = None) -> dict[str, Any]:
    """A/A on the real serving path: ``client_for(salt)`` gives a client of an API whose two
    arms serve the same model under that salt (e.g. Starlette's ``TestClient`` on an
    in-process app); each run drives the simulated users through it (``drive_api``: a GET per
    session, the arm read from the answer) and analyses the log as an A/B. The same figures as
    :func:`aa_false_positive_rate`, on fewer runs: each costs a request per session."""
    weights = {"control": 0.5, "treatment": 0.5}
    results, requests = [], 0
    for run in range(runs):
        salt = f"aa-api-{seed}-{run}"
        log = drive_api(client_for(salt), world, days, salt, weights, list_size, seed + run,
                        users=users, post_events=False)
        requests += int(log.rows["requests"].sum())
        results.append(analyse(log, list(weights.items()), ab))
    return {**calibration(results, ab.alpha), "requests": requests}
