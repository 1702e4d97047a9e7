"""The experiment in MLflow: parameters, per-arm metrics, daily series, the report folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import mlflow

from recstack.mlflowenv import apply_http_defaults
from recstack.settings import Settings

logger = logging.getLogger(__name__)


def log_experiment(settings: Settings, result: dict[str, Any], params: dict[str, Any],
                   folder: Path) -> str:
    """One run in MLflow experiment ``<mlflow.experiment>-online``; returns its run id."""
    apply_http_defaults(settings.mlflow)

    mlflow.set_tracking_uri(settings.mlflow.uri)
    mlflow.set_experiment(f"{settings.mlflow.experiment}-online")
    flat = {k: v for k, v in params.items() if not isinstance(v, dict)}
    for key in ("weights", "arm_models", "arm_versions"):
        for arm, value in params.get(key, {}).items():
            flat[f"{key}.{arm}"] = value
    with mlflow.start_run(run_name=folder.name) as run:
        mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
        metrics: dict[str, float] = {}
        for arm, s in result["arms"].items():
            for key in ("users", "impressions", "clicks", "ctr", "ci_low", "ci_high",
                        "expected_ctr"):
                if s.get(key) is not None:
                    metrics[f"{arm}_{key}"] = float(s[key])
        for arm, g in result["guardrails"]["arms"].items():
            for key in ("error_rate", "p99_latency_ms", "coverage"):
                if g.get(key) is not None:
                    metrics[f"{arm}_{key}"] = float(g[key])
        t = result["test"]
        metrics |= {"lift": t["lift"], "lift_ci_low": t["lift_ci_low"],
                    "lift_ci_high": t["lift_ci_high"], "z": t["z"], "p_value": t["p_value"],
                    "srm_p_value": result["srm"]["p_value"],
                    "power": result["power"]["achieved"]}
        mlflow.log_metrics({k: v for k, v in metrics.items() if v == v})  # drop NaN
        for row in result.get("daily", []):
            step = int(row["day"])
            mlflow.log_metrics({k: float(v) for k, v in row.items()
                                if k != "day" and v == v and k.endswith(("ctr", "lift"))},
                               step=step)
        mlflow.set_tags({"decision": result["decision"], "reason": result["reason"][:500],
                         "kind": "online-ab"})
        mlflow.log_artifacts(str(folder), artifact_path="report")
        logger.info("experiment logged to MLflow run %s", run.info.run_id)
        return run.info.run_id
