"""``recstack experiment ab``: drive simulated traffic, analyse, report, log, maybe promote.

Backends, chosen from the arms:
- both arms ``policy:...``: vectorised simulation on the world (no stack needed);
- otherwise through the API, either a running one (``url``: it must already run the same
  experiment, ``RECSTACK_AB__*``; checked against ``GET /experiment``) or an in-process app
  built here with the experiment configured (real models from MLflow, real features from
  Redis; the stack's Redis and MLflow must be up), driven through the ASGI interface.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient
from mlflow import MlflowClient

from app.experiments.online.analysis import analyse, daily_series
from app.experiments.online.driver import drive_api
from app.experiments.online.report import write_report
from app.experiments.online.simulate import ExperimentLog, is_policy, simulate_policies
from app.experiments.online.tracking import log_experiment
from recstack.mlflowenv import apply_http_defaults
from recstack.settings import Settings
from serving.app import create_app
from serving.variants import resolve_versions
from simulator.generate import world_dir
from simulator.world import World
from training import registry

logger = logging.getLogger(__name__)

CONTROL, TREATMENT = "control", "treatment"


@dataclass
class AbOutcome:
    result: dict[str, Any]
    folder: Path
    mlflow_run_id: str | None
    promoted: dict[str, str] | None


def load_world(settings: Settings) -> World:
    """The world the lake was simulated from (models were trained on it), else a new one from
    ``settings.sim``."""
    path = world_dir(settings)
    if path.exists():
        return World.load(path)
    logger.warning("no saved world under %s: generating one from settings.sim", path)
    return World.generate(settings.sim)


def run_ab(
    settings: Settings,
    challenger: str,
    control: str = "champion",
    sim_days: int = 3,
    weight: float | None = None,
    salt: str | None = None,
    seed: int = 0,
    max_users: int | None = None,
    url: str | None = None,
    promote: bool = True,
    log_mlflow: bool = True,
    post_events: bool = True,
    progress: Callable[[int, int], None] | None = None,
    world: World | None = None,
    client: Any = None,
) -> AbOutcome:
    """One A/B experiment end to end; see the module docstring for the backends."""
    ab = settings.ab
    weight = ab.treatment_weight if weight is None else weight
    salt = salt or ab.salt
    weights = {CONTROL: 1 - weight, TREATMENT: weight}
    world = world or load_world(settings)
    users = None if max_users is None else np.arange(min(max_users, world.n_users))
    list_size = settings.sim.list_size
    if is_policy(challenger) and is_policy(control):
        log = simulate_policies(
            world, [(CONTROL, control, weights[CONTROL]), (TREATMENT, challenger, weight)],
            salt, sim_days, list_size, seed, users=users,
            on_day=(lambda d: progress(d + 1, sim_days)) if progress else None)
        log.versions = {CONTROL: [control], TREATMENT: [challenger]}
    elif is_policy(challenger) or is_policy(control):
        raise ValueError("both arms are policies (policy:...) or both are registry models")
    else:
        log = _through_api(settings, control, challenger, weights, salt, sim_days, seed, users,
                           url, post_events, progress, world, client)
    result = analyse(log, list(weights.items()), ab)
    series = daily_series(log, CONTROL, TREATMENT, ab.alpha)
    result["daily"] = series.to_dict("records")
    params = {
        "control": control, "treatment": challenger, "sim_days": sim_days, "salt": salt,
        "seed": seed, "weights": weights, "alpha": ab.alpha, "power_target": ab.power,
        "mde": ab.mde, "list_size": list_size, "users_simulated": int(
            world.n_users if users is None else len(users)),
        "arm_models": {CONTROL: control, TREATMENT: challenger},
        "arm_versions": {arm: ";".join(v) for arm, v in log.versions.items()},
        "backend": log.backend,
    }
    promoted = None
    if promote and result["decision"] == "promote" and not is_policy(challenger):
        promoted = _promote(settings, log)
        result["promotion"] = promoted

    folder = write_report(settings, result, series, params)
    run_id = None
    if log_mlflow:
        try:
            run_id = log_experiment(settings, result, params, folder)
        except Exception as exc:  # the report stays; say why MLflow has no run
            logger.error("could not log the experiment to MLflow at %s: %s",
                         settings.mlflow.uri, exc)
    return AbOutcome(result, folder, run_id, promoted)


def _promote(settings: Settings, log: ExperimentLog) -> dict[str, str]:
    """Moves ``champion`` to the treatment's ranker (and its paired candidates) through the
    registry; the previous champion stays tagged for ``recstack models rollback``."""
    served = log.versions.get(TREATMENT, [])
    rankers = {part.split("=", 1)[1] for v in served for part in v.split(",")
               if part.startswith("ranker=")}
    if len(rankers) != 1:
        raise RuntimeError(f"the treatment served ranker versions {sorted(rankers)}; "
                           "promote by hand with `recstack models promote V`")
    version = rankers.pop()
    pair = registry.promote_version(registry.client_for(settings), settings, version)
    logger.info("promoted to champion: %s", pair)
    return pair


def _through_api(settings: Settings, control: str, challenger: str, weights: dict[str, float],
                 salt: str, days: int, seed: int, users: Any, url: str | None,
                 post_events: bool, progress: Any, world: World, client: Any) -> ExperimentLog:
    kwargs = dict(world=world, days=days, salt=salt, weights=weights,
                  list_size=settings.sim.list_size, seed=seed, users=users,
                  post_events=post_events, on_request=progress,
                  start=world.end)
    if client is not None:
        _check_experiment(client, control, challenger, weights, salt)
        return drive_api(client, **kwargs)
    if url is not None:
        with httpx.Client(base_url=url, timeout=10.0) as http:
            _check_experiment(http, control, challenger, weights, salt)
            return drive_api(http, **kwargs)

    _check_registry(settings, (control, challenger))
    ab = settings.ab.model_copy(update={
        "mode": "ab", "control": control, "treatment": challenger, "salt": salt,
        "treatment_weight": weights[TREATMENT]})
    app_settings = settings.model_copy(update={"ab": ab})
    with TestClient(create_app(app_settings)) as app_client:
        wait_ready(app_client)
        return drive_api(app_client, **kwargs)


def _check_registry(settings: Settings, specs: tuple[str, ...]) -> None:
    """Fail fast (not after the readiness timeout) when MLflow is down or an arm names a
    version or alias that does not exist."""
    apply_http_defaults(settings.mlflow)

    uri = settings.mlflow.uri
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for spec in specs:
        try:
            resolve_versions(client, settings, spec)
        except Exception as exc:
            raise RuntimeError(f"arm {spec!r} cannot be resolved in the registry at {uri}: "
                               f"{str(exc).splitlines()[0][:300]}") from exc


def _check_experiment(client: Any, control: str, challenger: str, weights: dict[str, float],
                      salt: str) -> None:
    """The API must run the experiment being analysed (else the arms mean something else)."""
    got = client.get("/experiment").json()
    arms = {a["name"]: a for a in got.get("arms", [])}
    problems = []
    if got.get("mode") not in ("ab", "canary"):
        problems.append(f"mode is {got.get('mode')!r}")
    if got.get("salt") != salt:
        problems.append(f"salt is {got.get('salt')!r}, not {salt!r}")
    for name, models in ((CONTROL, control), (TREATMENT, challenger)):
        if name not in arms or arms[name]["models"] != models:
            problems.append(f"arm {name} is not {models!r}")
        elif abs(arms[name]["weight"] - weights[name]) > 1e-9:
            problems.append(f"arm {name} has weight {arms[name]['weight']}")
    if problems:
        raise RuntimeError("the API does not run this experiment: " + "; ".join(problems)
                           + " (start it with RECSTACK_AB__MODE=ab, RECSTACK_AB__TREATMENT=...)")


def wait_ready(client: Any, timeout_s: float = 180.0) -> None:
    """Until the app is ready and every arm is loaded (models come from MLflow)."""
    end = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < end:
        ready = client.get("/readyz")
        exp = client.get("/experiment").json()
        arms = exp.get("arms", []) + ([exp["shadow"]] if exp.get("shadow") else [])
        loaded = all(a["loaded"] for a in arms)
        if ready.status_code == 200 and loaded:
            return
        last = (ready.text[:300], exp)
        time.sleep(1.0)
    raise TimeoutError(f"the in-process API was not ready after {timeout_s:.0f}s: {last} "
                       f"(are the stack's Redis and MLflow up? `recstack status`)")
