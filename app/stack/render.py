"""Config files of the native stack, rendered from ``Settings`` and the program list.

Pure functions from settings to text, so unit tests can validate them with ``nginx -t``,
``promtool check config`` and supervisor's own parser; ``write_configs`` puts them on disk.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
from dataclasses import dataclass

import yaml

from recstack.settings import Settings
from app.stack.paths import StackPaths, write_if_changed
from app.stack.services import (
    STAGE_SERVICES,
    Program,
    Replicas,
    StackConfigError,
    api_ports,
    replica_counts,
    stage_front_port,
    stage_ports,
)

SUPERVISOR_USER = "recstack"


def supervisor_secret(paths: StackPaths) -> str:
    """The password of supervisord's loopback XML-RPC port, created once (mode 0600)."""
    if paths.secret.exists():
        return paths.secret.read_text().strip()
    value = secrets.token_urlsafe(18)
    write_if_changed(paths.secret, value, mode=0o600)
    return value


def _sv(value: str) -> str:
    """Escape a value for supervisor's ini: it expands ``%(name)s``, so ``%`` must be doubled."""
    return value.replace("%", "%%")


def _env_line(env: dict[str, str]) -> str:
    """supervisor's ``environment=`` line: values in double quotes, or in single quotes when
    they hold double quotes (JSON lists such as ``["in_memory"]``); its parser keeps quotes of
    the other kind inside a quoted value but strips quote characters at either end."""
    parts = []
    for key, value in sorted(env.items()):
        if "\n" in value or ('"' in value and "'" in value) or value[:1] in "'\"" and value \
                or value[-1:] in "'\"" and value:
            raise StackConfigError(f"{key} contains a quote or newline; supervisor cannot pass it")
        quote = "'" if '"' in value else '"'
        parts.append(f"{key}={quote}{_sv(value)}{quote}")
    return ",".join(parts)


def render_supervisord(settings: Settings, programs: list[Program], password: str) -> str:
    """supervisord.conf: an authenticated loopback XML-RPC port and one [program:x] per process.

    No ``[group:api]``: supervisor restarts every member of a group whose membership changes, so
    ``scale`` would restart all replicas; each replica is its own program and ``Program.group``
    names the service instead.
    """
    p = StackPaths.of(settings)
    port = settings.stack.supervisor_port
    host = settings.stack.host
    lines = [
        "; rendered by app.stack; edits are overwritten",
        "[supervisord]",
        f"logfile={_sv(str(p.supervisord_log))}",
        "logfile_maxbytes=10MB",
        "logfile_backups=2",
        f"pidfile={_sv(str(p.supervisord_pid))}",
        f"childlogdir={_sv(str(p.logs_dir))}",
        f"directory={_sv(str(p.run_dir))}",
        f"identifier=recstack:{_sv(str(settings.root))}",
        "nodaemon=false",
        "minfds=4096",
        "loglevel=info",
        "",
        "[inet_http_server]",
        f"port={host}:{port}",
        f"username={SUPERVISOR_USER}",
        f"password={_sv(password)}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=http://{host}:{port}",
        f"username={SUPERVISOR_USER}",
        f"password={_sv(password)}",
        "",
    ]
    for program in programs:
        log = p.program_log(program.name)
        lines += [
            f"[program:{program.name}]",
            f"command={_sv(shlex.join(program.argv))}",
            f"directory={_sv(str(program.directory))}",
            f"environment={_env_line(program.env)}",
            "autostart=false",  # `up` starts the services it is asked for
            "autorestart=true",
            f"startsecs={program.startsecs}",
            "startretries=3",
            f"stopsignal={program.stopsignal}",
            f"stopwaitsecs={program.stopwaitsecs}",
            # Kill the whole process group: uvicorn/mlflow workers and nginx workers included.
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_sv(str(log))}",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=2",
            "",
        ]
    return "\n".join(lines)


def redis_secret(settings: Settings) -> str | None:
    """The native Redis's password: the configured one, else one generated once into
    ``redis.password_file`` (mode 0600) unless ``redis.generate_password`` is off."""
    redis = settings.redis
    secret = redis.secret()
    if secret is not None or not redis.generate_password or redis.password_file is None:
        return secret
    value = secrets.token_urlsafe(24)
    write_if_changed(redis.password_file, value, mode=0o600)
    return value


def render_redis(settings: Settings, secret: str | None = None) -> str:
    """redis.conf: loopback only, durable (append-only file under ``$RECSTACK_HOME/redis``).

    ``appendfsync everysec``: every write reaches the file (the OS page cache) before Redis
    answers, and is fsynced within about a second. So a killed redis-server loses nothing
    acknowledged; a crash of the machine itself loses at most the last ~1 s (2 s when the disk
    stalls an fsync). ``secret``: the ``requirepass``, in the file (0600), never in argv.
    """
    p = StackPaths.of(settings)
    lines = [
        f"port {settings.redis.port}",
        f"bind {settings.stack.host}",
        "protected-mode yes",
        "daemonize no",
        f'dir "{p.redis_data}"',
        'save ""',
        "appendonly yes",
        "appendfsync everysec",
        'appenddirname "appendonlydir"',
        "aof-use-rdb-preamble yes",
        'logfile ""',
    ]
    if secret is not None:
        lines.append('requirepass "{}"'.format(secret.replace("\\", "\\\\").replace('"', '\\"')))
    return "\n".join(lines) + "\n"


def render_nginx(settings: Settings, replicas: int | Replicas) -> str:
    """nginx.conf: the api replicas behind ``least_conn`` with passive health checks and one retry.

    Idempotent requests that hit a dead replica (connect error, timeout, 502) are retried once on
    another; nginx never retries a POST that reached a replica. A 503 (shed, not ready) reaches
    the client with its Retry-After.
    """
    p = StackPaths.of(settings)
    counts = replica_counts(settings, replicas)
    nd = p.nginx_dir
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers need root for run_dir
    servers = "\n".join(
        f"        server {settings.stack.host}:{port} max_fails=2 fail_timeout=5s;"
        for port in api_ports(settings, counts["api"])
    )
    stages = _render_stage_fronts(settings, counts)
    return f"""# rendered by app.stack; edits are overwritten
{user}
worker_processes 1;
daemon off;
pid {nd}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    server_tokens off;
    client_body_temp_path {nd}/client_body_temp;
    proxy_temp_path {nd}/proxy_temp;
    fastcgi_temp_path {nd}/fastcgi_temp;
    uwsgi_temp_path {nd}/uwsgi_temp;
    scgi_temp_path {nd}/scgi_temp;
    keepalive_timeout 65s;

    upstream api {{
        least_conn;
{servers}
        keepalive 64;
        keepalive_timeout 60s;
    }}

    server {{
        listen {settings.stack.host}:{settings.stack.lb_port};

        location = /lb/healthz {{
            default_type text/plain;
            return 200 "ok\\n";
        }}

        location / {{
            proxy_pass http://api;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Request-ID $request_id;
            proxy_set_header X-Request-Start "t=$msec";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            # Not http_503: a 503 is a replica shedding load (or not ready yet) and nginx would
            # count it as a failure, take the replica out for fail_timeout and push its traffic
            # onto the others, which then shed too (seen: both out, every request a 502). The
            # 503 with Retry-After goes to the client instead.
            proxy_next_upstream error timeout http_502;
            proxy_next_upstream_tries 2;
            proxy_next_upstream_timeout 5s;
        }}
    }}
{stages}}}
"""


def _render_stage_fronts(settings: Settings, counts: dict[str, int]) -> str:
    """Split mode only: an upstream and a loopback listener per stage service.

    The API's own timeouts are the stage budgets, so nginx only fails over on a refused
    connection or a 502 (idempotent here: scoring has no side effect). Not on a 503: that is a
    replica shedding load, and counting it as a failure takes the replica out of the group and
    pushes its load onto the others (as for the api's upstream); the API falls back instead.
    """
    if settings.serving.mode != "split":
        return ""
    blocks = []
    for service in STAGE_SERVICES:
        servers = "\n".join(
            f"        server {settings.stack.host}:{port} max_fails=2 fail_timeout=5s;"
            for port in stage_ports(settings, service, counts[service])
        )
        blocks.append(f"""
    upstream {service} {{
        least_conn;
{servers}
        keepalive 64;
        keepalive_timeout 60s;
    }}

    server {{
        listen {settings.stack.host}:{stage_front_port(settings, service)};
        location / {{
            proxy_pass http://{service};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_connect_timeout 1s;
            proxy_read_timeout 10s;
            proxy_next_upstream error http_502 non_idempotent;
            proxy_next_upstream_tries 2;
        }}
    }}
""")
    return "".join(blocks)


def render_prometheus(settings: Settings) -> str:
    """prometheus.yml: 5 s scrapes of itself and one job per service, targets in file_sd files.

    Jobs: ``api``, ``candidates`` and ``ranking`` (split mode; their files are empty in-process
    mode) and ``monitor`` (listed only while the monitor runs). The rules aggregate by job, so
    the stage services' requests never mix with the api's. ``scale`` and ``up`` rewrite the
    files and Prometheus follows without a reload; a changed config is applied with
    ``/-/reload``. The trainer serves no /metrics: its runs are in MLflow and the monitor
    reports model freshness.
    """
    p = StackPaths.of(settings)
    jobs = [
        {
            "job_name": service,
            "metrics_path": "/metrics",
            "file_sd_configs": [{"files": [str(p.targets_file(service))], "refresh_interval": "5s"}],
        }
        for service in TARGET_SERVICES
    ]
    config = {
        "global": {
            "scrape_interval": "5s",
            "evaluation_interval": "5s",
            "external_labels": {"stack": "native"},
        },
        "rule_files": [str(p.prometheus_rules)],
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"{settings.stack.host}:{settings.stack.prometheus_port}"]}],
            },
            *jobs,
        ],
    }
    return "# rendered by app.stack; edits are overwritten\n" + yaml.safe_dump(
        config, sort_keys=False
    )


# Services Prometheus scrapes through a file_sd targets file each.
TARGET_SERVICES: tuple[str, ...] = ("api", *STAGE_SERVICES, "monitor")


def render_targets(
    settings: Settings, service: str, replicas: int | Replicas, running: bool = False
) -> str:
    """The file_sd targets of one job: one entry per replica, labelled with its program name.

    Stage services are listed in split mode only; the monitor only when ``running``.
    """
    counts = replica_counts(settings, replicas)
    if service == "monitor":
        ports = [settings.stack.monitor_port] if running else []
        names = ["monitor"]
    elif service in STAGE_SERVICES:
        split = settings.serving.mode == "split"
        ports = stage_ports(settings, service, counts[service]) if split else []
        names = [f"{service}-{i}" for i in range(len(ports))]
    else:
        ports = api_ports(settings, counts["api"])
        names = [f"api-{i}" for i in range(len(ports))]
    entries = [
        {"targets": [f"{settings.stack.host}:{port}"], "labels": {"service": service, "replica": name}}
        for name, port in zip(names, ports)
    ]
    return json.dumps(entries, indent=2) + "\n"


def render_api_targets(settings: Settings, replicas: int | Replicas) -> str:
    """The file_sd targets of the api job."""
    return render_targets(settings, "api", replicas)


@dataclass(frozen=True)
class Changed:
    """Which rendered files differ from what was on disk (so the caller reloads only those)."""

    supervisord: bool
    nginx: bool
    prometheus: bool
    targets: bool
    redis: bool


def write_configs(
    settings: Settings,
    programs: list[Program],
    replicas: int | Replicas,
    *,
    supervisord: bool = True,
    nginx: bool = True,
    targets: bool = True,
) -> Changed:
    """Render every config file under ``run_dir``; flags let ``scale`` order the writes.

    The monitor's targets file is left as it is (``write_monitor_targets`` follows the monitor).
    """
    p = StackPaths.of(settings)
    p.make_dirs()
    password = supervisor_secret(p)
    changed_targets = False
    if targets:
        for service in TARGET_SERVICES:
            if service == "monitor":
                if not p.targets_file(service).exists():
                    write_if_changed(p.targets_file(service), "[]\n")
                continue
            text = render_targets(settings, service, replicas)
            changed_targets = write_if_changed(p.targets_file(service), text) or changed_targets
    return Changed(
        supervisord=supervisord
        and write_if_changed(
            p.supervisord_conf, render_supervisord(settings, programs, password), 0o600
        ),
        nginx=nginx and write_if_changed(p.nginx_conf, render_nginx(settings, replicas)),
        prometheus=write_if_changed(p.prometheus_conf, render_prometheus(settings)),
        targets=changed_targets,
        redis=write_if_changed(p.redis_conf, render_redis(settings, redis_secret(settings)),
                               0o600),
    )


def write_monitor_targets(settings: Settings, running: bool) -> bool:
    """List the monitor in its job's targets while it runs (an absent monitor is not "down")."""
    p = StackPaths.of(settings)
    p.make_dirs()
    return write_if_changed(p.targets_file("monitor"), render_targets(settings, "monitor", 1,
                                                                        running=running))
