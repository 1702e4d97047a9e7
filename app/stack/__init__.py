"""The native stack: the docker-compose services as local processes under supervisord.

``up`` / ``down`` / ``status`` / ``scale`` / ``stop_service`` / ``start_service`` / ``urls`` /
``wait_ready`` are what the ``recstack`` CLI calls; ``loadtest.run_locust`` runs Locust headless.
"""

from app.stack.runner import (
    ServiceStatus,
    down,
    log_tail,
    scale,
    start_service,
    status,
    stop_service,
    up,
    urls,
    wait_ready,
)
from app.stack.services import SERVICE_COMMANDS, Program, StackConfigError, native_programs
from app.stack.supervisor import StackError

__all__ = [
    "SERVICE_COMMANDS",
    "Program",
    "ServiceStatus",
    "StackConfigError",
    "StackError",
    "down",
    "log_tail",
    "native_programs",
    "scale",
    "start_service",
    "status",
    "stop_service",
    "up",
    "urls",
    "wait_ready",
]
