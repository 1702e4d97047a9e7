"""What the native stack runs: one ``Program`` per supervised process, derived from ``Settings``.

``SERVICE_COMMANDS`` is the identity of each service's command, shared with docker-compose.yml (a
test checks both against it): a native program's argv starts with it, argv[0] compared by basename.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import SecretStr

from app.stack import paths as stack_paths
from recstack.settings import REPO_ROOT, Settings

if TYPE_CHECKING:  # paths imports this module
    from app.stack.paths import StackPaths

SERVICE_COMMANDS: dict[str, list[str]] = {
    "redis": ["redis-server"],
    "mlflow": ["mlflow", "server"],
    "api": ["uvicorn", "serving.app:create_app", "--factory"],
    "candidates": ["uvicorn", "serving.app:create_candidates_app", "--factory"],
    "ranking": ["uvicorn", "serving.app:create_ranking_app", "--factory"],
    "nginx": ["nginx"],
    "prometheus": ["prometheus"],
    "sink": ["python", "-m", "serving.sink"],
    "trainer": ["python", "-m", "app.cli", "trainer"],
    "monitor": ["python", "-m", "app.cli", "monitor"],
}

# Start order: dependencies first (api reads Redis and MLflow, and in split mode calls the
# candidate and ranking services; nginx fronts them all; the sink drains what the api appends;
# the trainer and the monitor read what the rest produce).
SERVICE_ORDER: tuple[str, ...] = (
    "redis", "mlflow", "prometheus", "candidates", "ranking", "api", "nginx", "sink",
    "trainer", "monitor",
)
# The split-mode stage services; `up` without a service list starts them only in split mode.
STAGE_SERVICES: tuple[str, ...] = ("candidates", "ranking")
# Services `up` starts only when named (`--services trainer`) or listed in the stack's
# `autostart` setting: a trainer retraining in a loop, or a monitor's queries, would disturb
# load tests and benchmarks.
ON_REQUEST_SERVICES: tuple[str, ...] = ("trainer", "monitor")
# Services `scale` changes: the api and the split-mode stage services.
SCALABLE_SERVICES: tuple[str, ...] = ("api", *STAGE_SERVICES)
MAX_REPLICAS = {"api": 16, "candidates": 8, "ranking": 8}
# Offsets from api_base_port of the stage services' replica ports.
_STAGE_PORT_OFFSET = {"candidates": 20, "ranking": 40}

# Every supervised process carries this variable (value: the stack's run_dir), so `down` can find
# orphans of a supervisord that died hard, and never touch anything else.
STACK_MARKER_ENV = "RECSTACK_STACK_RUN"

# Settings that must not reach the processes' environment: a change would make supervisord see
# every program as "changed" and restart all replicas (on `scale`, or on a demo run with other
# Locust settings), and no program has a use for them.
_ENV_EXCLUDE = {
    "RECSTACK_STACK__API_REPLICAS", "RECSTACK_STACK__START_TIMEOUT_S",
    "RECSTACK_STACK__AUTOSTART",
    "RECSTACK_SERVING__CANDIDATES_REPLICAS", "RECSTACK_SERVING__RANKING_REPLICAS",
}
_ENV_EXCLUDE_PREFIXES = ("RECSTACK_LOAD__",)

HealthKind = Literal["redis", "http", "tcp", "process"]


class StackConfigError(ValueError):
    """The settings describe a stack that cannot run (port clash, missing binary...)."""


@dataclass(frozen=True)
class HealthCheck:
    """How to tell a started process is serving: a Redis PING, an HTTP 200 on ``path``, a port,
    or (``process``, for workers without a port) supervisord's RUNNING state alone."""

    kind: HealthKind
    port: int
    path: str = ""


@dataclass(frozen=True)
class Program:
    """One supervised process: ``name`` (supervisor program), ``group`` (the service it belongs to)."""

    name: str
    group: str
    argv: list[str]
    env: dict[str, str]
    port: int | None  # None: a worker that listens on nothing
    health: HealthCheck
    startsecs: int = 1
    stopsignal: str = "TERM"
    stopwaitsecs: int = 10
    # Where it runs: the checkout for Python programs (they import the project from it); the
    # stack's run_dir for the servers, so a moved checkout restarts no Redis (and loses no data).
    directory: Path = REPO_ROOT


Replicas = Mapping[str, int]


def default_replicas(settings: Settings) -> dict[str, int]:
    """Replica counts of the scalable services as the settings give them."""
    return {
        "api": settings.stack.api_replicas,
        "candidates": settings.serving.candidates_replicas,
        "ranking": settings.serving.ranking_replicas,
    }


def replica_counts(settings: Settings, replicas: int | Replicas | None = None) -> dict[str, int]:
    """The settings' counts overridden by ``replicas`` (an int: the api's count alone)."""
    counts = default_replicas(settings)
    if isinstance(replicas, int):
        counts["api"] = replicas
    elif replicas is not None:
        counts.update({k: int(v) for k, v in replicas.items() if k in counts})
    return counts


def autostart(settings: Settings) -> list[str]:
    """On-request services the settings ask ``up`` to start with the rest.

    ``RECSTACK_STACK__AUTOSTART='["trainer"]'`` (``StackSettings.autostart``); read defensively
    so an older settings module without the field means "none".
    """
    names = list(getattr(settings.stack, "autostart", None) or [])
    unknown = [n for n in names if n not in ON_REQUEST_SERVICES]
    if unknown:
        raise StackConfigError(
            f"stack.autostart lists {unknown}; only {', '.join(ON_REQUEST_SERVICES)} start on request"
        )
    return names


def service_ports(settings: Settings, service: str, replicas: int) -> list[int]:
    """Loopback ports of a scalable service's replicas."""
    if service == "api":
        return api_ports(settings, replicas)
    return stage_ports(settings, service, replicas)


def api_ports(settings: Settings, replicas: int | None = None) -> list[int]:
    """Loopback ports of the api replicas: ``api_base_port + i``."""
    n = settings.stack.api_replicas if replicas is None else replicas
    return [settings.stack.api_base_port + i for i in range(n)]


def stage_ports(settings: Settings, service: str, replicas: int) -> list[int]:
    """Loopback ports of a stage service's replicas: ``api_base_port + 20|40 + i``."""
    base = settings.stack.api_base_port + _STAGE_PORT_OFFSET[service]
    return [base + i for i in range(replicas)]


def stage_front_port(settings: Settings, service: str) -> int:
    """Where nginx fronts a stage service in split mode: ``lb_port + 1`` / ``lb_port + 2``."""
    return settings.stack.lb_port + 1 + STAGE_SERVICES.index(service)


def tuning_env(settings: Settings, tuning: Any) -> dict[str, str]:
    """``RECSTACK_SERVING__*`` of the tuning, with the stage URLs of this stack in split mode."""
    env = {
        f"RECSTACK_SERVING__{key.upper()}": str(value)
        for key, value in tuning.model_dump().items() if value not in ("", None)
    }
    env = {k: v for k, v in env.items() if k not in _ENV_EXCLUDE}
    if tuning.mode == "split":
        for service in STAGE_SERVICES:
            env.setdefault(
                f"RECSTACK_SERVING__{service.upper()}_URL",
                f"http://127.0.0.1:{stage_front_port(settings, service)}",
            )
    return env


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` flattened into ``RECSTACK_*`` variables, so every process sees the same stack.

    ``home`` is made absolute (processes run in another directory); unset optionals are left out.
    """
    env: dict[str, str] = {"RECSTACK_HOME": str(settings.root)}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for key, sub in value.items():
                flatten(f"{prefix}__{key.upper()}", sub)
        elif value is None:
            return
        elif isinstance(value, SecretStr):
            env[prefix] = value.get_secret_value()
        elif isinstance(value, bool):
            env[prefix] = "true" if value else "false"
        elif isinstance(value, (dt.date, dt.datetime)):
            env[prefix] = value.isoformat()
        elif isinstance(value, (list, tuple, set)):  # pydantic-settings parses these as JSON
            env[prefix] = json.dumps(list(value), default=str)
        else:
            env[prefix] = str(value)

    # model_dump keeps SecretStr objects; flatten unwraps them (the file holding them is 0600).
    for key, value in settings.model_dump(exclude={"home"}).items():
        flatten(f"RECSTACK_{key.upper()}", value)
    return {
        k: v for k, v in env.items()
        if k not in _ENV_EXCLUDE and not k.startswith(_ENV_EXCLUDE_PREFIXES)
    }


def _binary(name: str, venv: bool = False) -> str:
    """Absolute path of ``name``: the venv's own script when ``venv``, else the system's."""
    if venv:
        candidate = Path(sys.executable).parent / name
        if candidate.exists():
            return str(candidate)
    found = shutil.which(name) or next(
        (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
    )
    if found is None:
        raise StackConfigError(
            f"{name} is not installed: `make system-deps` installs the Debian packages"
        )
    return found


def _uvicorn_program(
    name: str, group: str, factory: str, port: int, env: dict[str, str]
) -> Program:
    """One replica of a serving app (``factory``, e.g. ``serving.app:create_app``) on ``port``."""
    return Program(
        name=name,
        group=group,
        argv=[
            _binary("uvicorn", venv=True), factory, "--factory",
            "--host", "127.0.0.1", "--port", str(port),
            # Longer than nginx's upstream keepalive_timeout, so the balancer never
            # reuses a connection the replica is closing (a spurious 502).
            "--timeout-keep-alive", "75",
            "--timeout-graceful-shutdown", "5",
            "--no-access-log",
        ],
        env={**env, "RECSTACK_REPLICA": name},
        port=port,
        health=HealthCheck("http", port, "/healthz"),
        startsecs=2,
        stopwaitsecs=10,
    )


def _redis_program(settings: Settings, p: StackPaths, marker: dict[str, str]) -> Program:
    """Redis on its rendered config."""
    return Program(
        name="redis",
        group="redis",
        argv=[_binary("redis-server"), str(p.redis_conf)],
        env=marker,
        port=settings.redis.port,
        health=HealthCheck("redis", settings.redis.port),
        directory=settings.run_dir,
    )


def _mlflow_program(settings: Settings, marker: dict[str, str]) -> Program:
    """The MLflow tracking server and registry, on SQLite and a local artifact store."""
    host = "127.0.0.1"
    return Program(
        name="mlflow",
        group="mlflow",
        argv=[
            _binary("mlflow", venv=True), "server",
            "--host", host, "--port", str(settings.mlflow.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{settings.mlflow_dir / 'mlflow.db'}",
            "--artifacts-destination", str(settings.mlflow_dir / "artifacts"),
        ],
        # No job runner: it forks 7 huey consumers (~100 MB each) for features recstack
        # does not use, and made `down` wait for them.
        env={**marker, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        port=settings.mlflow.port,
        health=HealthCheck("http", settings.mlflow.port, "/health"),
        startsecs=3,
        stopwaitsecs=15,
        directory=settings.run_dir,
    )


def _prometheus_program(settings: Settings, p: StackPaths, marker: dict[str, str]) -> Program:
    """Prometheus on its rendered config and the stack's TSDB directory."""
    host = "127.0.0.1"
    return Program(
        name="prometheus",
        group="prometheus",
        argv=[
            _binary("prometheus"),
            f"--config.file={p.prometheus_conf}",
            f"--storage.tsdb.path={p.prometheus_data}",
            "--storage.tsdb.retention.time=7d",
            f"--web.listen-address={host}:{settings.stack.prometheus_port}",
            *(["--web.enable-lifecycle"] if settings.stack.prometheus_lifecycle else []),
        ],
        env=marker,
        port=settings.stack.prometheus_port,
        health=HealthCheck("http", settings.stack.prometheus_port, "/-/ready"),
        directory=settings.run_dir,
    )


def _serving_replica_programs(
    settings: Settings, counts: Mapping[str, int], env: dict[str, str]
) -> list[Program]:
    """The stage services' replicas, then the api's (nginx balances over both)."""
    programs: list[Program] = []
    for service in STAGE_SERVICES:
        for i, port in enumerate(stage_ports(settings, service, counts[service])):
            programs.append(_uvicorn_program(
                f"{service}-{i}", service, SERVICE_COMMANDS[service][1], port, env))
    for i, port in enumerate(api_ports(settings, counts["api"])):
        programs.append(_uvicorn_program(f"api-{i}", "api", SERVICE_COMMANDS["api"][1], port,
                                         env))
    return programs


def _nginx_program(settings: Settings, p: StackPaths, marker: dict[str, str]) -> Program:
    """nginx, the load balancer in front of the replicas, on its rendered config."""
    return Program(
        name="nginx",
        group="nginx",
        argv=[
            _binary("nginx"), "-p", str(p.nginx_dir), "-c", str(p.nginx_conf), "-e", "stderr",
        ],
        env=marker,
        port=settings.stack.lb_port,
        health=HealthCheck("tcp", settings.stack.lb_port),
        stopsignal="QUIT",  # graceful: finish in-flight requests
        directory=settings.run_dir,
    )


def _trainer_program(settings: Settings, python: str, marker: dict[str, str]) -> Program:
    """The retraining loop: a worker without a port, given minutes to finish a run on stop."""
    return Program(
        name="trainer",
        group="trainer",
        argv=[python, *SERVICE_COMMANDS["trainer"][1:]],
        env={**settings_env(settings), **marker},
        port=None,
        health=HealthCheck("process", 0),
        startsecs=2,
        # SIGTERM lets a run in progress finish (pipeline, training, gate), so MLflow never
        # sees half a run; a full retraining takes minutes on 2 cores.
        stopsignal="TERM",
        stopwaitsecs=300,
    )


def _monitor_program(settings: Settings, python: str, marker: dict[str, str]) -> Program:
    """The drift and online-CTR monitor, healthy once it serves ``/metrics``."""
    return Program(
        name="monitor",
        group="monitor",
        argv=[python, *SERVICE_COMMANDS["monitor"][1:]],
        env={**settings_env(settings), **marker},
        port=settings.stack.monitor_port,
        health=HealthCheck("http", settings.stack.monitor_port, "/metrics"),
        startsecs=2,
        stopwaitsecs=10,
    )


def native_programs(
    settings: Settings, replicas: int | Replicas | None = None
) -> list[Program]:
    """Every program of the native stack, in start order.

    ``replicas``: counts of the scalable services (``{"api": 3, "ranking": 2}``; an int is the
    api's count), defaults from the settings. Stage services are rendered in both modes (``up``
    starts them only in split mode). Raises ``StackConfigError`` if two services would share a
    port or a binary is missing.
    """
    counts = replica_counts(settings, replicas)
    p = stack_paths.StackPaths.of(settings)
    marker = {STACK_MARKER_ENV: str(settings.run_dir)}
    programs: list[Program] = [
        _redis_program(settings, p, marker),
        _mlflow_program(settings, marker),
        _prometheus_program(settings, p, marker),
    ]
    tuning = settings.serving
    api_env = {**settings_env(settings), **tuning_env(settings, tuning), **marker}
    programs += _serving_replica_programs(settings, counts, api_env)
    programs.append(_nginx_program(settings, p, marker))
    programs.append(
        Program(
            name="sink",
            group="sink",
            argv=[_binary("python", venv=True), *SERVICE_COMMANDS["sink"][1:]],
            # A stable consumer name: after a crash the restarted sink re-reads its own pending
            # entries first.
            env={**api_env, "RECSTACK_SINK__CONSUMER": "sink-0"},
            port=None,
            health=HealthCheck("process", 0),
            startsecs=2,
            stopwaitsecs=10,
        )
    )
    python = _binary("python", venv=True)
    programs.append(_trainer_program(settings, python, marker))
    programs.append(_monitor_program(settings, python, marker))
    _check_ports(settings, programs)
    return programs


def _check_ports(settings: Settings, programs: list[Program]) -> None:
    owners: dict[int, str] = {settings.stack.supervisor_port: "supervisord"}
    for program in programs:
        if program.port is None:
            continue
        other = owners.setdefault(program.port, program.name)
        if other != program.name:
            raise StackConfigError(
                f"port {program.port} is configured for both {other} and {program.name}; "
                "change RECSTACK_STACK__* / RECSTACK_REDIS__PORT / RECSTACK_MLFLOW__PORT"
            )


# Set by importing feast.metrics (any process that opened the store) to a temporary directory
# that is removed when that process exits; inherited, it crashes every program started later.
PROCESS_LOCAL_ENV = ("PROMETHEUS_MULTIPROCESS_DIR", "PROMETHEUS_MULTIPROC_DIR")


def base_env() -> dict[str, str]:
    """Environment supervisord itself is started with: the caller's, minus stale stack settings
    and the caller's own temporary metric directories (PROCESS_LOCAL_ENV)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("RECSTACK_") and k not in PROCESS_LOCAL_ENV}
