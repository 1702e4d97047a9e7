"""pytest-docker's fixtures pointed at docker-compose.yml, with podman where Docker is absent.

``docker compose`` (Compose v2 with a running Docker engine) is used when it works. Otherwise
the compose command is ``tests/compose/harness.py compose``: podman-compose on the harness's own
podman configuration, with stand-in images built from Debian packages and ``up`` honouring the
compose file's health and completion conditions (see harness.py).
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compose import harness
from tests.conftest import REQUIRE_SERVICES, free_port

# A tiny world: the bootstrap (simulate, pipelines, materialize, train) takes a minute or two.
# Five days of 400 users: enough signal for the first model to beat the popularity baseline,
# which the promotion gate requires (3 days of 300 users lost to it by 0.009 AUC: no champion).
TINY_WORLD = {"RECSTACK_SIM__N_USERS": "400", "RECSTACK_SIM__N_ITEMS": "200",
              "RECSTACK_SIM__DAYS": "5",
              # 2 shared cores, limits on every container: the default 8 ms budget of the
              # promotion gate was missed (13 ms) and no model became champion.
              "RECSTACK_GATE__LATENCY_P99_MS": "50"}
TIMINGS: dict[str, float] = {}
_SESSION_START = time.time()


def _docker_compose_works() -> bool:
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True,
                                timeout=20, check=False)
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and info.returncode == 0


@pytest.fixture(scope="session")
def use_docker() -> bool:
    """True with a working Docker engine and Compose v2; else podman, or skip (fail when
    RECSTACK_REQUIRE_SERVICES=1)."""
    if os.environ.get("RECSTACK_COMPOSE_ENGINE", "") != "podman" and _docker_compose_works():
        return True
    missing = [b for b in ("podman", "debootstrap") if harness.shutil.which(b) is None]
    if missing:
        message = (f"neither `docker compose` nor {' + '.join(missing)} available "
                   "(apt-get install -y podman debootstrap catatonit)")
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    return False


@pytest.fixture(scope="session")
def compose_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The values of .env for this run: fresh passwords, free loopback ports, a tiny world."""
    values = {
        "REDIS_PASSWORD": secrets.token_urlsafe(18),
        "POSTGRES_PASSWORD": secrets.token_urlsafe(18),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "NGINX_PORT": str(free_port()),
        "MLFLOW_PORT": str(free_port()),
        "PROMETHEUS_PORT": str(free_port()),
        "GRAFANA_PORT": str(free_port()),
        "RECSTACK_LOG_LEVEL": "INFO",
        **TINY_WORLD,
    }
    return values


@pytest.fixture(scope="session")
def compose_env_file(compose_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in compose_env.items()))
    return path


# ---- pytest-docker's fixtures -------------------------------------------------------------------

@pytest.fixture(scope="session")
def docker_compose_command(use_docker: bool, compose_env_file: Path) -> str:
    if use_docker:
        return f"docker compose --env-file {shlex.quote(str(compose_env_file))}"
    return (f"{shlex.quote(sys.executable)} {shlex.quote(str(Path(harness.__file__)))} compose "
            f"--env-file {shlex.quote(str(compose_env_file))}")


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(harness.COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return f"recstack-test-{os.getpid()}"


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    # Docker: Compose v2 builds, starts in dependency order and waits for health itself.
    # podman: harness.py's `up` does the same (podman-compose cannot on podman 4.3).
    return ["up --build --wait"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --timeout 10"]


# ---- the engine under compose (docker or the harness's podman) ----------------------------------

class Engine:
    """`docker` or `podman` (on the harness's configuration) for what compose has no verb for."""

    def __init__(self, use_docker: bool, project: str) -> None:
        self.binary = "docker" if use_docker else "podman"
        self.env = os.environ.copy() if use_docker else harness.Podman().env
        self.project = project

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.binary, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=False)

    def containers(self, service: str | None = None, running: bool = False) -> list[str]:
        args = ["ps", "-q", "--filter", f"label=com.docker.compose.project={self.project}"]
        if not running:
            args.insert(1, "-a")
        if service:
            args += ["--filter", f"label=com.docker.compose.service={service}"]
        return self.run(*args).stdout.split()

    def resources(self) -> dict[str, list[str]]:
        """What is left of the project: containers, networks, volumes."""
        label = f"label=com.docker.compose.project={self.project}"
        return {
            "containers": self.containers(),
            "networks": self.run("network", "ls", "-q", "--filter", label).stdout.split(),
            "volumes": self.run("volume", "ls", "-q", "--filter", label).stdout.split(),
        }

    def dump_logs(self, tail: int = 60) -> str:
        lines = [self.run("ps", "-a", "--filter",
                          f"label=com.docker.compose.project={self.project}").stdout]
        for ctr in self.containers():
            name = self.run("inspect", "--format", "{{.Name}}", ctr).stdout.strip()
            logs = self.run("logs", "--tail", str(tail), ctr)
            lines.append(f"----- {name} -----\n{logs.stdout}{logs.stderr}")
        return "\n".join(lines)


@pytest.fixture(scope="session")
def engine(use_docker: bool, docker_compose_project_name: str) -> Engine:
    return Engine(use_docker, docker_compose_project_name)


@pytest.fixture(scope="session")
def leftover_guard(engine: Engine, use_docker: bool) -> Iterator[None]:
    """Set up before the stack, torn down after its `down -v`: nothing of the project may
    remain (containers, networks, volumes)."""
    yield
    left = engine.resources()
    if not use_docker:
        harness.clean(harness.Podman(), engine.project)  # whatever a failed run left, even so
    assert not any(left.values()), f"left behind after down -v: {left}"


@pytest.fixture(scope="session")
def stack(leftover_guard: None, engine: Engine, request: pytest.FixtureRequest) -> Iterator[Any]:
    """The running stack (pytest-docker's ``docker_services``, set up here to time it); the
    containers' logs when a test failed."""
    start = time.monotonic()
    services = request.getfixturevalue("docker_services")
    record("build_and_up_healthy", time.monotonic() - start)
    up = harness.podman_home() / "last-up-timings.json"  # the harness's breakdown, podman only
    if up.exists() and up.stat().st_mtime > _SESSION_START:
        TIMINGS.update({f"up.{k}": v for k, v in json.loads(up.read_text()).items()})
    yield services
    if request.session.testsfailed:
        print("\n" + engine.dump_logs(), file=sys.stderr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed compose test's report carries `ps -a` and every container's last log lines."""
    outcome = yield
    report = outcome.get_result()
    engine = getattr(item, "funcargs", {}).get("engine")
    if report.failed and call.when == "call" and isinstance(engine, Engine):
        report.sections.append(("compose containers and logs", engine.dump_logs()))


def record(name: str, seconds: float) -> None:
    TIMINGS[name] = round(seconds, 1)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.write_sep("-", "compose stack timings (s)")
        terminalreporter.write_line(json.dumps(TIMINGS))
        out = harness.podman_home() / "last-timings.json"
        try:
            out.write_text(json.dumps({"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                       **TIMINGS}, indent=1))
        except OSError:
            pass
