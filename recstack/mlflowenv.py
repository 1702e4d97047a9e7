"""MLflow's HTTP client settings, which MLflow reads only from the process environment."""

from __future__ import annotations

import os

from recstack.settings import MlflowSettings


def apply_http_defaults(mlflow: MlflowSettings) -> None:
    """Set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_TIMEOUT`` from the settings unless the
    environment already sets them (call before MLflow makes its first request)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(mlflow.http_max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(mlflow.http_timeout_s))
