"""The native stack's verbs: up, down, status, scale, stop/start one program, urls, wait_ready.

supervisord owns the processes; this module renders its config, asks it (XML-RPC) to start and
stop programs, and checks health itself (supervisor only knows "the process is alive").
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psutil

import app.stack.health as health
import app.stack.pids as pids_mod
from app.stack.paths import StackPaths
from app.stack.render import write_configs, write_monitor_targets
from app.stack.services import (
    MAX_REPLICAS,
    ON_REQUEST_SERVICES,
    SCALABLE_SERVICES,
    SERVICE_ORDER,
    STAGE_SERVICES,
    Program,
    api_ports,
    autostart,
    default_replicas,
    native_programs,
    service_ports,
    stage_ports,
)
from app.stack.supervisor import ProcessInfo, StackError, Supervisor
from pipelines.materialize import online_store_gaps, rematerialize
from pipelines.seen import load_seen_history
from recstack.settings import Settings

logger = logging.getLogger(__name__)

_FAILED_STATES = {"FATAL"}
# Started and checked before the rest by `up` (the online store is checked in between).
INFRA_SERVICES = ("redis", "mlflow", "prometheus")
_ALIVE_STATES = {"RUNNING", "STARTING", "BACKOFF"}


@dataclass(frozen=True)
class ServiceStatus:
    """One row of ``status``: a supervised program (or supervisord itself)."""

    name: str
    state: str
    pid: int | None
    port: int | None
    uptime_s: float | None
    service: str = ""
    # What its check says now: "ready" / "healthy", or why not ("not ready: item features").
    health: str = "-"


# ---------------------------------------------------------------------------------------- helpers


def replica_counts_now(settings: Settings) -> dict[str, int]:
    """Replica counts of the scalable services: what `scale` last set while the stack is up
    (``run/scale.json``), else the settings'."""
    counts = default_replicas(settings)
    scale_file = StackPaths.of(settings).scale_file
    if scale_file.exists():
        try:
            saved = json.loads(scale_file.read_text())
            counts.update({k: int(v) for k, v in saved.items() if k in counts})
        except (ValueError, TypeError, AttributeError):
            logger.warning("ignoring unreadable %s", scale_file)
    return counts


def _replicas(settings: Settings) -> int:
    """Current api replica count (see ``replica_counts_now``)."""
    return replica_counts_now(settings)["api"]


def _service_of(program: str) -> str:
    return program.split("-", 1)[0]


def _ports(settings: Settings) -> dict[str, int]:
    ports = {
        "supervisord": settings.stack.supervisor_port,
        "redis": settings.redis.port,
        "mlflow": settings.mlflow.port,
        "prometheus": settings.stack.prometheus_port,
        "nginx": settings.stack.lb_port,
        "monitor": settings.stack.monitor_port,
    }
    ports.update({f"api-{i}": p for i, p in enumerate(api_ports(settings, MAX_REPLICAS["api"]))})
    for service in STAGE_SERVICES:
        ports.update({f"{service}-{i}": p for i, p in
                      enumerate(stage_ports(settings, service, MAX_REPLICAS[service]))})
    return ports


def log_tail(settings: Settings, program: str, lines: int = 25) -> str:
    """The last ``lines`` lines of a program's log (or a note that there is none)."""
    path = StackPaths.of(settings).program_log(program)
    if not path.exists():
        return f"(no log at {path})"
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64_000))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def _check_services(names: Sequence[str]) -> list[str]:
    unknown = [n for n in names if n not in SERVICE_ORDER]
    if unknown:
        raise StackError(f"unknown service(s) {unknown}; known: {', '.join(SERVICE_ORDER)}")
    return [s for s in SERVICE_ORDER if s in names]


def _running_supervisor(settings: Settings) -> Supervisor:
    sup = Supervisor(settings)
    if not sup.is_running():
        raise StackError("the native stack is not running; start it with `recstack up`")
    return sup


def _apply_config(sup: Supervisor) -> tuple[list[str], list[str]]:
    """Make supervisord's programs match supervisord.conf; returns (added, removed).

    A changed program that was running is restarted with its new command/environment.
    """
    added, changed, removed = sup.reload_config()
    for name in removed:
        sup.remove(name)
    for name in changed:
        was_alive = sup.info(name).state in _ALIVE_STATES
        sup.remove(name)
        sup.add(name)
        if was_alive:
            sup.start(name)
    for name in added:
        sup.add(name)
    if added or changed or removed:
        logger.info("supervisord config: added %s, changed %s, removed %s", added, changed, removed)
    return added, removed


def _nginx_test(settings: Settings, programs: list[Program]) -> None:
    """``nginx -t`` on the rendered config, so a bad config never reaches the running balancer."""
    argv = next(p.argv for p in programs if p.name == "nginx")
    proc = subprocess.run([*argv, "-t"], capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise StackError(f"rendered nginx config is invalid: {proc.stderr.strip()[-800:]}")


def _reload_nginx(sup: Supervisor, settings: Settings, programs: list[Program]) -> None:
    if sup.info("nginx").state != "RUNNING":
        return
    _nginx_test(settings, programs)
    sup.signal("nginx", "HUP")  # graceful: old workers finish their requests
    logger.info("nginx reloaded")


def _sync_monitor_target(sup: Supervisor, settings: Settings) -> None:
    """Prometheus scrapes the monitor while supervisord runs it, and forgets it when stopped."""
    infos = {i.name: i.state for i in sup.processes()}
    write_monitor_targets(settings, infos.get("monitor") in _ALIVE_STATES)


def _wait_nginx_drained(sup: Supervisor, timeout_s: float = 10.0) -> None:
    """After a reload, wait until nginx's old worker has finished its requests and exited (the
    master then has its one new worker), so replicas it used can be stopped without failing a
    request in flight. Bounded by ``proxy_read_timeout``."""
    info = sup.info("nginx")
    if info.state != "RUNNING" or not info.pid:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            workers = psutil.Process(info.pid).children()
        except psutil.Error:
            return
        if len([w for w in workers if w.status() != psutil.STATUS_ZOMBIE]) <= 1:
            return
        time.sleep(0.1)
    logger.warning("nginx's old worker still busy after %.0fs; stopping replicas anyway", timeout_s)


def _reload_prometheus(sup: Supervisor, settings: Settings) -> None:
    """SIGHUP: Prometheus re-reads its config (no HTTP lifecycle endpoint needed). A config it
    refuses keeps the old one running and says so in its log."""
    if sup.info("prometheus").state != "RUNNING":
        return
    port = settings.stack.prometheus_port
    before = health.prometheus_reload_state(port)
    sup.signal("prometheus", "HUP")
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        state = health.prometheus_reload_state(port)
        if state is not None and not state[1]:
            raise StackError("prometheus refused its new config (reload failed); see its log")
        if state is not None and (before is None or state[0] > before[0]):
            logger.info("prometheus reloaded")
            return
        time.sleep(0.2)
    logger.warning("prometheus did not report a config reload within 10 s")


def _wait_healthy(
    settings: Settings, sup: Supervisor, programs: list[Program], timeout_s: float
) -> None:
    """Wait until every program is RUNNING and passes its health check, or raise naming it."""
    deadline = time.monotonic() + timeout_s
    pending = {p.name: p for p in programs}
    seen: dict[str, str] = {}
    states: dict[str, str] = {}
    while pending:
        for name, program in list(pending.items()):
            info = sup.info(name)
            states[name] = info.state
            if info.state in _FAILED_STATES:
                raise StackError(
                    f"{name} failed to start (supervisor state {info.state}: {info.description})."
                    f" Last lines of {StackPaths.of(settings).program_log(name)}:\n"
                    f"{log_tail(settings, name)}"
                )
            ok, seen[name] = health.probe(program.health, settings)
            if ok and info.state == "RUNNING":
                logger.info("%s is healthy (pid %s)", name, info.pid)
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            name = next(iter(pending))
            raise StackError(
                f"{name} not healthy after {timeout_s:.0f}s (supervisor state {states[name]}; "
                f"last probe: {seen[name]}). Last lines of "
                f"{StackPaths.of(settings).program_log(name)}:\n{log_tail(settings, name)}"
            )
        time.sleep(0.25)


def _check_free(settings: Settings, sup: Supervisor, programs: list[Program]) -> None:
    """Fail fast when a port we are about to bind is held by some other process."""
    states = {p.name: p.state for p in sup.processes()}
    for program in programs:
        if program.port is None:
            continue
        if states.get(program.name) not in _ALIVE_STATES and health.port_open(program.port, 0.2):
            raise StackError(
                f"port {program.port} for {program.name} is already in use by another process; "
                "free it or change the port in the settings"
            )


# ------------------------------------------------------------------------------------------ verbs


def default_services(settings: Settings) -> list[str]:
    """What ``up`` starts when no service is named: everything but the stage services (only in
    split mode, when the api calls them) and the on-request services (trainer, monitor) unless
    the settings' ``stack.autostart`` lists them."""
    split = settings.serving.mode == "split"
    extra = autostart(settings)
    return [
        s for s in SERVICE_ORDER
        if (split or s not in STAGE_SERVICES) and (s not in ON_REQUEST_SERVICES or s in extra)
    ]


def up(settings: Settings, services: Sequence[str] | None = None, wait: bool = True) -> None:
    """Render configs, start supervisord if needed, start ``services`` (default all) and wait.

    Idempotent: running programs stay as they are unless their rendered config changed. Raises
    ``StackError`` naming the service and the tail of its log if one is not healthy within
    ``settings.stack.start_timeout_s``.
    """
    if services is None:
        services = default_services(settings)
    wanted = _check_services(list(services))
    counts = replica_counts_now(settings)
    programs = native_programs(settings, counts)
    changed = write_configs(settings, programs, counts)
    sup = Supervisor(settings)
    if sup.is_running():
        _apply_config(sup)
        if changed.nginx:
            _reload_nginx(sup, settings, programs)
        if changed.prometheus:
            _reload_prometheus(sup, settings)
        if changed.redis and sup.info("redis").state == "RUNNING":
            logger.warning("redis.conf changed; `recstack stop redis` + `recstack up` applies it")
    else:
        port = settings.stack.supervisor_port
        if health.port_open(port, 0.2):
            raise StackError(f"supervisor port {port} is in use by another process")
        sup.start_daemon()
    targets = [p for p in programs if p.group in wanted]
    _check_free(settings, sup, targets)
    # Infrastructure first, so a lost online store is rebuilt before any replica reads it.
    infra = [p for p in targets if p.group in INFRA_SERVICES]
    for phase in (infra, [p for p in targets if p.group not in INFRA_SERVICES]):
        for program in phase:
            sup.start(program.name)
        if wait:
            _wait_healthy(settings, sup, phase, settings.stack.start_timeout_s)
        if wait and phase is infra and _serves(wanted) and settings.stack.rematerialize_on_up:
            ensure_online_store(settings, sup)
    _sync_monitor_target(sup, settings)
    pids_mod.record_pids(settings, sup)


def _serves(services: Sequence[str]) -> bool:
    return any(s in ("api", *STAGE_SERVICES) for s in services)


def ensure_online_store(settings: Settings, sup: Supervisor | None = None) -> list[str]:
    """Re-materialize the views whose online rows are missing or older than the offline tables
    (a lost, new or restored Redis), before replicas load item features from it; returns them.

    Needs Redis running; a stack never materialized (no Feast registry yet) has nothing to do.
    """
    if sup is not None and sup.info("redis").state != "RUNNING":
        return []
    try:
        gaps = online_store_gaps(settings)
    except Exception as exc:  # noqa: BLE001 - the replicas' /readyz then says what is missing
        logger.warning("could not compare the online store with the offline tables: %s: %s",
                       type(exc).__name__, exc)
        return []
    if not gaps:
        return []
    logger.warning("online store behind the offline tables, re-materializing: %s",
                   "; ".join(f"{v}: {why}" for v, why in gaps.items()))
    started = time.monotonic()

    def progress(view: str, i: int, n: int) -> None:
        logger.info("re-materializing %d/%d: %s", i + 1, n, view)

    rematerialize(settings, list(gaps), progress=progress)
    if settings.seen.policy != "none":  # the users' seen history went with the lost Redis
        seen = load_seen_history(settings)
        logger.info("seen history of %d users rebuilt from the lake", seen["users"])
    logger.info("online store rebuilt from the offline tables in %.1fs",
                time.monotonic() - started)
    return list(gaps)


def status(settings: Settings) -> list[ServiceStatus]:
    """One row per program plus supervisord itself; empty when the stack is down."""
    sup = Supervisor(settings)
    if not sup.is_running():
        return []
    ports = _ports(settings)
    infos = sup.processes()
    order = {name: i for i, name in enumerate(SERVICE_ORDER)}

    def key(info: ProcessInfo) -> tuple[int, int, str]:
        service = _service_of(info.name)
        suffix = info.name.rsplit("-", 1)[-1]
        index = int(suffix) if service in SCALABLE_SERVICES and suffix.isdigit() else 0
        return order.get(service, 99), index, info.name

    pids_mod.record_pids(settings, sup, infos)
    sup_pid = sup.pid()
    try:
        sup_uptime: float | None = time.time() - psutil.Process(sup_pid).create_time()
    except psutil.Error:
        sup_uptime = None
    rows = [
        ServiceStatus(
            name="supervisord", state="RUNNING", pid=sup_pid, port=ports["supervisord"],
            uptime_s=sup_uptime, service="supervisord",
        )
    ]
    checks = {p.name: p.health for p in native_programs(settings, replica_counts_now(settings))}
    for info in sorted(infos, key=key):
        port = ports.get(info.name)
        rows.append(
            ServiceStatus(
                name=info.name, state=info.state, pid=info.pid, port=port,
                uptime_s=info.uptime_s, service=_service_of(info.name),
                health=_health_now(settings, info, checks.get(info.name)),
            )
        )
    return rows


def _health_now(settings: Settings, info: ProcessInfo, check: Any) -> str:
    """A serving replica's readiness (its /readyz), or another program's health check."""
    if info.state != "RUNNING" or check is None:
        return "-"
    if _service_of(info.name) in SCALABLE_SERVICES and check.kind == "http":
        code, body = health.http_status(check.port, "/readyz")
        if code == 200:
            return "ready"
        try:
            missing = json.loads(body).get("missing") or []
        except ValueError:
            missing = [body[:80]]
        return "not ready: " + ("; ".join(map(str, missing)) or str(code))
    ok, seen = health.probe(check, settings)
    return "healthy" if ok else f"unhealthy: {seen[:80]}"


def scale(settings: Settings, service: str, replicas: int) -> None:
    """Set the replica count of ``service`` (api, or a split-mode stage service: candidates,
    ranking): supervisord programs, nginx upstreams, Prometheus targets.

    New replicas start (and must pass /healthz, then /readyz) only if the service is running,
    and join nginx only once ready, so no request reaches a replica still loading its models.
    Scaling down first takes replicas out of nginx (graceful reload: requests in flight finish on
    the old workers), then stops them. The count sticks until ``down``.
    """
    if service not in SCALABLE_SERVICES:
        raise StackError(
            f"{service!r} does not scale; scalable services: {', '.join(SCALABLE_SERVICES)}"
        )
    limit = MAX_REPLICAS[service]
    if not 1 <= replicas <= limit:
        raise StackError(f"{service} replicas must be between 1 and {limit}, got {replicas}")
    sup = _running_supervisor(settings)
    counts = replica_counts_now(settings)
    old = counts[service]
    counts[service] = replicas
    paths = StackPaths.of(settings)
    paths.scale_file.write_text(json.dumps(counts))
    programs = native_programs(settings, counts)
    running = any(
        _service_of(i.name) == service and i.state in _ALIVE_STATES for i in sup.processes()
    )
    if replicas >= old:
        write_configs(settings, programs, counts, nginx=False, targets=False)
        added, _ = _apply_config(sup)
        if running:
            new = [p for p in programs if p.name in added]
            _check_free(settings, sup, new)
            for program in new:
                sup.start(program.name)
            _wait_healthy(settings, sup, new, settings.stack.start_timeout_s)
            _wait_ready_ports(settings, {p.name: p.port for p in new if p.port},
                              settings.stack.start_timeout_s)
        write_configs(settings, programs, counts)
        _reload_nginx(sup, settings, programs)
    else:
        write_configs(settings, programs, counts, supervisord=False)
        _reload_nginx(sup, settings, programs)
        _wait_nginx_drained(sup)
        write_configs(settings, programs, counts)
        _apply_config(sup)  # stops and removes the replicas past the new count
    pids_mod.record_pids(settings, sup)
    logger.info("%s scaled from %d to %d replicas", service, old, replicas)


def _resolve(sup: Supervisor, name: str) -> list[str]:
    known = [i.name for i in sup.processes()]
    if name in known:
        return [name]
    members = [n for n in known if _service_of(n) == name]
    if not members:
        raise StackError(f"no program or service {name!r}; known: {', '.join(known)}")
    return members


def stop_service(settings: Settings, program: str) -> None:
    """Stop one program (``api-1``) or every program of a service (``api``); waits for exit."""
    sup = _running_supervisor(settings)
    for name in reversed(_resolve(sup, program)):
        sup.stop(name)
        logger.info("stopped %s", name)
    _sync_monitor_target(sup, settings)


def start_service(settings: Settings, program: str, wait: bool = True) -> None:
    """Start one program (``api-1``) or a whole service (``api``); waits for its health check."""
    sup = _running_supervisor(settings)
    names = _resolve(sup, program)
    by_name = {p.name: p for p in native_programs(settings, replica_counts_now(settings))}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise StackError(f"{unknown} are not in the rendered stack; run `recstack up` first")
    targets = [by_name[n] for n in names]
    _check_free(settings, sup, targets)
    for program_ in targets:
        sup.start(program_.name)
    if wait:
        _wait_healthy(settings, sup, targets, settings.stack.start_timeout_s)
    _sync_monitor_target(sup, settings)
    pids_mod.record_pids(settings, sup)


def urls(settings: Settings) -> dict[str, str]:
    """Where a user points a browser or a client: the api (via nginx), its docs, Prometheus, MLflow."""
    lb = f"http://127.0.0.1:{settings.stack.lb_port}"
    return {
        "api": lb,
        "docs": f"{lb}/docs",
        "prometheus": f"http://127.0.0.1:{settings.stack.prometheus_port}",
        "mlflow": f"http://127.0.0.1:{settings.mlflow.port}",
    }


def serving_ports(settings: Settings) -> dict[str, int]:
    """Replica name -> port of every serving replica: the api's, and in split mode the stage
    services' (their readiness is the api's: a stage still loading is a degraded answer)."""
    counts = replica_counts_now(settings)
    services = ["api", *STAGE_SERVICES] if settings.serving.mode == "split" else ["api"]
    return {
        f"{service}-{i}": port
        for service in services
        for i, port in enumerate(service_ports(settings, service, counts[service]))
    }


def wait_ready(settings: Settings, timeout_s: float) -> None:
    """Wait until every serving replica's /readyz (models loaded, item features with values;
    stage services too in split mode) and nginx's answer 200, else raise. A Redis outage alone
    does not hold readiness back: /readyz reports it, the replicas serve degraded."""
    checks = serving_ports(settings)
    checks["nginx"] = settings.stack.lb_port
    _wait_ready_ports(settings, checks, timeout_s)


def _wait_ready_ports(settings: Settings, checks: dict[str, int], timeout_s: float) -> None:
    checks = dict(checks)
    deadline = time.monotonic() + timeout_s
    seen: dict[str, str] = {}
    while checks:
        for name, port in list(checks.items()):
            code, body = health.http_status(port, "/readyz")
            seen[name] = f"{code}: {body[:200]}"
            if code == 200:
                del checks[name]
        if not checks:
            return
        if time.monotonic() > deadline:
            details = "; ".join(f"{n} /readyz -> {seen[n]}" for n in checks)
            name = next(iter(checks))
            raise StackError(
                f"not ready after {timeout_s:.0f}s: {details}. Last lines of {name}'s log:\n"
                f"{log_tail(settings, name)}"
            )
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------- down


def down(settings: Settings, timeout_s: float = 60.0) -> None:
    """Stop every program and supervisord; afterwards no process of this stack remains.

    Idempotent. Also reaps what a supervisord that died hard left behind: processes carrying this
    stack's ``RECSTACK_STACK_RUN`` marker, and a supervisord still named in the pid file.
    """
    paths = StackPaths.of(settings)
    sup = Supervisor(settings)
    pids: list[int] = []
    try:
        ours = sup.is_running()
    except StackError as exc:  # the port is someone else's: only our own leftovers to clean
        logger.warning("%s", exc)
        ours = False
    if ours:
        infos = sup.processes()
        pids = [i.pid for i in infos if i.pid]
        sup_pid = sup.pid()
        # Front to back: nginx first (clients get "connection refused", not 502s), then the api
        # (it holds connections to MLflow and Redis, which then stop fast), then the rest.
        alive = {i.name for i in infos if i.state in _ALIVE_STATES}
        if "nginx" in alive:
            sup.stop("nginx")
        sup.stop_many(sorted(n for n in alive if _service_of(n) == "api"))
        sup.shutdown()
        pids.append(sup_pid)
    else:
        stale = pids_mod.stale_supervisord(paths)
        if stale is not None:
            logger.warning("supervisord %d does not answer; terminating it", stale)
            os.kill(stale, signal.SIGTERM)  # supervisord stops its children on TERM
            pids.append(stale)
    pids_mod.wait_gone(pids, timeout_s)
    pids_mod.reap_orphans(settings, timeout_s=10.0)
    for leftover in (paths.scale_file, paths.supervisord_pid, paths.pids_file):
        leftover.unlink(missing_ok=True)
