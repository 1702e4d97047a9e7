"""Logging set-up and third-party quieting, called by each entrypoint (never at import time)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for services whose logs are read by machines."""

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def configure_logging(level: str = "INFO", json_lines: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Third-party libraries that are chatty at INFO.
    for noisy in ("apache_beam", "feast", "mlflow", "urllib3", "alembic", "httpx", "faiss"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


# Third-party noise on stderr: (the module that raises it, its category, the start of its
# message). Each is one warning this project knows about and cannot fix at the source, filtered
# by module so the project's own warnings (and other libraries' new ones) still show.
_THIRD_PARTY_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # Feast's file offline store runs on dask; pandas deprecations inside dask's shuffle.
    (r"dask(\.|$)", FutureWarning, ""),
    # mlflow.types.utils on every signature inferred from integer features (ours are counts).
    (r"mlflow\.types\.utils$", UserWarning, "Hint: Inferred schema contains integer column"),
)

# Third-party log records demoted to DEBUG: (logger name, path fragment of the emitting file,
# the start of its message).
_THIRD_PARTY_RECORDS: tuple[tuple[str, str, str], ...] = (
    # Beam logs this on the root logger whenever apache_beam.io is imported without the GCP
    # extras, which this project does not use.
    ("root", "apache_beam", "apitools not found"),
    # MLflow on every pyfunc model logged from an object; ours are our own classes.
    ("mlflow.pyfunc", "mlflow", "Passing a Python object as `python_model`"),
)


class _DemoteToDebug(logging.Filter):
    """Lowers one known third-party record to DEBUG: shown only where its logger logs DEBUG.

    A logger's filters see only the records logged on that logger itself, which is where these
    are emitted."""

    def __init__(self, logger_name: str, path_part: str, prefix: str) -> None:
        super().__init__()
        self.key = (logger_name, path_part, prefix)

    def filter(self, record: logging.LogRecord) -> bool:
        _, path_part, prefix = self.key
        if path_part not in record.pathname or not str(record.msg).startswith(prefix):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)

    def __eq__(self, other: object) -> bool:  # so adding it twice adds it once
        return isinstance(other, _DemoteToDebug) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)


def quiet_third_party() -> None:
    """Silence the third-party chatter every recstack process prints (Beam's apitools line,
    MLflow's artifact progress bars and hints, dask's FutureWarnings), keeping the project's
    own warnings. Called by each entrypoint before it imports those libraries; idempotent."""
    # Read by MLflow at each download/upload (mlflow.utils.file_utils.ArtifactProgressBar);
    # setdefault so MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true still brings the bars back.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for module, category, message in _THIRD_PARTY_WARNINGS:
        # filterwarnings drops an identical filter before inserting it: calling twice is once.
        warnings.filterwarnings("ignore", message=re.escape(message), category=category,
                                module=module)
    for logger_name, path_part, prefix in _THIRD_PARTY_RECORDS:
        logging.getLogger(logger_name).addFilter(_DemoteToDebug(logger_name, path_part, prefix))
