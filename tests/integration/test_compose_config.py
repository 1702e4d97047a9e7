"""The Docker description of the stack, checked without a Docker engine.

``docker-compose config`` (Debian's Compose v1.29) validates docker-compose.yml against the Compose
spec and renders it with the placeholder values of ``.env.example``; the rendered services are
then checked against what the native stack runs (``app.stack.services.SERVICE_COMMANDS``),
against ``recstack.settings`` (environment names) and against the rules a Docker user relies on:
health checks, restart policies, limits, named volumes, only the UIs published and only on
127.0.0.1. The Dockerfile, .dockerignore, nginx, Prometheus and Grafana files are checked too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from recstack.settings import Settings
from tests.conftest import need_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Services only the compose stack has, and why the native stack does without them.
COMPOSE_ONLY = {
    "postgres": "MLflow's backend store; the native stack's MLflow uses SQLite",
    "bootstrap": "one-shot simulate + pipeline + train; natively `recstack demo` runs these steps",
    "grafana": "optional UI (profile dashboards); there is no Debian package for the native stack",
    "locust": "one-shot load test (profile loadtest); natively `recstack demo` runs Locust",
}
ONE_SHOT = {"bootstrap", "locust"}  # exit when done: no healthcheck, no restart
# Services only started when asked for (compose profile -> services), as `recstack up` starts the
# stage services only in split mode and the trainer and monitor only on request.
PROFILES = {"split": {"candidates", "ranking"}, "trainer": {"trainer"},
            "monitor": {"monitor"}, "dashboards": {"grafana"}, "loadtest": {"locust"}}
PUBLISHED = {"nginx", "prometheus", "grafana", "mlflow"}  # the balancer and the UIs

# What a third-party image runs when compose does not override it, from each image's Dockerfile:
# (ENTRYPOINT, CMD). The project image's are read from our Dockerfile.
IMAGE_DEFAULTS: dict[str, tuple[list[str], list[str]]] = {
    "redis": (["docker-entrypoint.sh"], ["redis-server"]),
    "postgres": (["docker-entrypoint.sh"], ["postgres"]),
    "nginx": (["/docker-entrypoint.sh"], ["nginx", "-g", "daemon off;"]),
    "prom/prometheus": (
        ["/bin/prometheus"],
        ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"],
    ),
    "grafana/grafana": (["/run.sh"], []),
}
# Entrypoint scripts that set things up, then exec their arguments: the process is the command.
WRAPPER_ENTRYPOINTS = {"docker-entrypoint.sh", "/docker-entrypoint.sh",
                       "/usr/local/bin/docker-entrypoint.sh",
                       # docker/redis-entrypoint.sh: renders redis.conf, execs redis-server.
                       "/usr/local/bin/recstack-redis-entrypoint"}


# ---- helpers --------------------------------------------------------------------------------

def _env_file_values(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def _compose(*args: str, env_file: Path = ENV_EXAMPLE) -> subprocess.CompletedProcess[str]:
    """Run docker-compose on the repo's file; the caller's shell values of .env.example's keys
    are dropped so they cannot mask a missing one."""
    binary = need_binary("docker-compose")
    keys = set(_env_file_values(ENV_EXAMPLE))
    env = {k: v for k, v in os.environ.items() if k not in keys and not k.startswith("COMPOSE_")}
    return subprocess.run(
        [binary, "--env-file", str(env_file), "--project-directory", str(REPO),
         "-f", str(COMPOSE_FILE), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as Compose renders it with .env.example (anchors merged, ${} filled)."""
    result = _compose("config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def _argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def _image_name(image: str) -> str:
    """``prom/prometheus:v2.55.1`` -> ``prom/prometheus`` (a registry's port is kept)."""
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


def _image_tag(image: str) -> str | None:
    name, _, tag = image.rpartition(":")
    return tag if name and "/" not in tag else None


@dataclass
class Dockerfile:
    """The instructions of a Dockerfile, stage by stage, continuation lines joined."""

    args: dict[str, str] = field(default_factory=dict)  # ARGs before the first FROM
    stages: list[list[tuple[str, str]]] = field(default_factory=list)

    @classmethod
    def parse(cls, path: Path) -> "Dockerfile":
        df = cls()
        logical, buf = [], ""
        for raw in path.read_text().splitlines():
            if not buf and raw.lstrip().startswith("#"):
                continue
            if raw.rstrip().endswith("\\"):
                buf += raw.rstrip()[:-1] + " "
                continue
            if not buf and not raw.strip():
                continue
            if buf and raw.lstrip().startswith("#"):
                continue  # a comment inside a continued instruction
            logical.append(buf + raw)
            buf = ""
        for line in logical:
            instruction, _, rest = line.strip().partition(" ")
            instruction = instruction.upper()
            if instruction == "FROM":
                df.stages.append([])
            if not df.stages:
                if instruction == "ARG":
                    key, _, default = rest.strip().partition("=")
                    df.args[key] = default
                continue
            df.stages[-1].append((instruction, rest.strip()))
        return df

    def base_image(self) -> str:
        first_from = self.stages[0][0][1].split()[0]
        return re.sub(r"\$\{?(\w+)\}?", lambda m: self.args.get(m.group(1), ""), first_from)

    def final(self, instruction: str) -> list[str]:
        """Arguments of every ``instruction`` of the final stage."""
        return [rest for ins, rest in self.stages[-1] if ins == instruction]

    def final_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for rest in self.final("ENV"):
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
        return env

    def cmd(self) -> list[str]:
        return json.loads(self.final("CMD")[-1])

    def copies(self) -> Iterator[tuple[str, list[str], str]]:
        """(stage index, sources, destination) of every COPY from the build context."""
        for i, stage in enumerate(self.stages):
            for ins, rest in stage:
                if ins == "COPY" and "--from=" not in rest:
                    *sources, dest = rest.split()
                    yield str(i), sources, dest


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return Dockerfile.parse(DOCKERFILE)


def _effective_argv(service: dict[str, Any], project_cmd: list[str]) -> list[str]:
    """The argv a service's container runs, argv[0] by basename, wrapper entrypoints skipped."""
    if "build" in service:  # the project image: no ENTRYPOINT, CMD from our Dockerfile
        entrypoint, cmd = [], project_cmd
    else:
        entrypoint, cmd = IMAGE_DEFAULTS[_image_name(service["image"])]
    if "entrypoint" in service:  # overriding the entrypoint also drops the image's CMD
        entrypoint, cmd = _argv(service["entrypoint"]), []
    argv = entrypoint + _argv(service.get("command")) if "command" in service else entrypoint + cmd
    if argv and argv[0] in WRAPPER_ENTRYPOINTS:
        argv = argv[1:]
    return [Path(argv[0]).name, *argv[1:]] if argv else []


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> source (a named volume, or an absolute host path)."""
    out = {}
    for spec in service.get("volumes", []):
        if isinstance(spec, dict):
            out[spec["target"]] = spec.get("source", "")
        else:
            parts = spec.split(":")
            out[parts[1]] = parts[0]
    return out


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parents = [path]
    while "/" in parents[-1]:
        parents.append(parents[-1].rsplit("/", 1)[0])
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        regex = "^" + re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*") \
            .replace(r"\*", "[^/]*").replace(r"\?", "[^/]") + "$"
        # fnmatch-style character classes ([cod]) survive re.escape as \[cod\]; restore them.
        regex = re.sub(r"\\\[([^\]\\]*)\\\]", r"[\1]", regex)
        if any(re.match(regex, p) for p in parents):
            ignored = not negate
    return ignored


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# ---- compose ----------------------------------------------------------------------------------

def test_compose_file_is_valid_without_warnings() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr
    # v1 warns (and ignores) keys it cannot apply, e.g. unsupported deploy sub-keys.
    assert "WARNING" not in result.stderr, result.stderr


def test_secrets_are_required(tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _compose("config", "-q", env_file=empty)
    assert result.returncode != 0
    assert "REDIS_PASSWORD" in result.stderr or "POSTGRES_PASSWORD" in result.stderr
    # The committed example holds placeholders only; real values go to the git-ignored .env.
    secrets = {k: v for k, v in _env_file_values(ENV_EXAMPLE).items() if "PASSWORD" in k}
    assert secrets and all(v.startswith("change-me") for v in secrets.values()), secrets


def test_services_and_commands_match_the_native_stack(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    from app.stack.services import SERVICE_COMMANDS

    assert set(services) - set(SERVICE_COMMANDS) == set(COMPOSE_ONLY), (
        "a compose service the native stack lacks must be listed in COMPOSE_ONLY with a reason"
    )
    for name, expected in SERVICE_COMMANDS.items():
        assert name in services, f"the native stack runs {name}; docker-compose.yml does not"
        argv = _effective_argv(services[name], dockerfile.cmd())
        assert argv[: len(expected)] == expected, f"{name}: compose runs {argv}, native {expected}"


def test_third_party_images_are_pinned_and_known(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if "build" in service:
            continue
        image = service["image"]
        assert _image_name(image) in IMAGE_DEFAULTS, f"{name}: add {image} to IMAGE_DEFAULTS"
        assert _image_tag(image) not in (None, "latest"), f"{name}: pin a tag for {image}"


def test_long_running_services_have_healthchecks_and_restart(
    services: dict[str, dict[str, Any]],
) -> None:
    assert ONE_SHOT <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", name
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name}: no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service.get("restart") == "unless-stopped", name


def test_depends_on_waits_for_health_or_completion(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dep, spec in service.get("depends_on", {}).items():
            condition = spec["condition"]
            assert dep in services, f"{name} depends on unknown {dep}"
            if dep in ONE_SHOT:
                assert condition == "service_completed_successfully", (name, dep)
            else:
                assert condition == "service_healthy", (name, dep)
    api = services["api"]["depends_on"]
    assert api["bootstrap"]["condition"] == "service_completed_successfully"
    assert {"redis", "mlflow"} <= set(api)
    assert {"redis", "mlflow"} <= set(services["bootstrap"]["depends_on"])


def test_only_the_balancer_and_uis_are_published_on_loopback(
    services: dict[str, dict[str, Any]],
) -> None:
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == PUBLISHED
    for name in published:
        for port in services[name]["ports"]:
            host_ip = port.get("host_ip") if isinstance(port, dict) else port.split(":")[0]
            assert host_ip == "127.0.0.1", f"{name} publishes {port} beyond loopback"


def test_api_and_stage_services_can_scale(services: dict[str, dict[str, Any]]) -> None:
    for name in ("api", "candidates", "ranking"):
        service = services[name]
        # A fixed name or host port would make `--scale NAME=N` fail on the second replica.
        assert "container_name" not in service and not service.get("ports"), name
        assert "8000" in [str(p) for p in service.get("expose", [])], name
    assert not any("container_name" in s for s in services.values())


def test_on_request_services_sit_behind_profiles(services: dict[str, dict[str, Any]]) -> None:
    for profile, names in PROFILES.items():
        for name in names:
            assert services[name].get("profiles") == [profile], name
    profiled = {n for names in PROFILES.values() for n in names}
    unprofiled = {n for n, s in services.items() if s.get("profiles")} - profiled
    assert not unprofiled, f"profiles not listed in PROFILES: {unprofiled}"
    # The podman compose test pulls no image: every service of the default set is built here
    # or has a stand-in (tests/compose/images).
    default = {n for n, s in services.items() if not s.get("profiles")}
    assert "grafana" not in default and {"sink", "api", "nginx"} <= default


def test_split_mode_api_calls_the_stage_services_by_name(
    services: dict[str, dict[str, Any]],
) -> None:
    env = services["api"]["environment"]
    assert env["RECSTACK_SERVING__MODE"] == "inprocess"  # split only when asked for
    for name in ("candidates", "ranking"):
        url = urlsplit(env[f"RECSTACK_SERVING__{name.upper()}_URL"])
        argv = _argv(services[name]["command"])
        assert (url.hostname, str(url.port)) == (name, argv[argv.index("--port") + 1])
        assert argv[argv.index("--host") + 1] == "0.0.0.0"


def test_trainer_stops_gracefully_and_the_sink_checks_itself(
    services: dict[str, dict[str, Any]],
) -> None:
    trainer = services["trainer"]
    assert trainer["stop_signal"] == "SIGTERM"
    grace = str(trainer["stop_grace_period"])
    assert grace in ("300s", "5m", "5m0s"), grace  # a retraining run finishes before the kill
    assert services["sink"]["healthcheck"]["test"][1:] == ["python", "-m", "serving.sink",
                                                           "--check"]
    assert services["sink"]["depends_on"]["bootstrap"]["condition"] == \
        "service_completed_successfully"  # the bootstrap replaces the lake the sink writes


def test_the_monitor_listens_where_prometheus_scrapes_it(
    services: dict[str, dict[str, Any]],
) -> None:
    monitor = services["monitor"]
    env = monitor["environment"]
    assert env["RECSTACK_STACK__HOST"] == "0.0.0.0"
    port = env["RECSTACK_STACK__MONITOR_PORT"]
    assert port in [str(p) for p in monitor["expose"]]
    config = yaml.safe_load((REPO / "docker" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["monitor"]["dns_sd_configs"][0]["port"] == int(port)
    for name in ("candidates", "ranking"):
        sd = jobs[name]["dns_sd_configs"][0]
        assert sd["names"] == [name] and sd["port"] == 8000


def test_state_lives_in_named_volumes(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    named = set(compose.get("volumes", {}))
    state = {"redis": "/data", "postgres": "/var/lib/postgresql/data",
             "prometheus": "/prometheus", "grafana": "/var/lib/grafana"}
    state |= {name: "/var/recstack" for name, s in services.items() if "build" in s}
    for name, target in state.items():
        source = _mounts(services[name]).get(target)
        assert source in named, f"{name}: {target} must be a named volume, got {source}"
    project_volumes = {_mounts(s)["/var/recstack"] for s in services.values() if "build" in s}
    assert len(project_volumes) == 1, "project containers must share one RECSTACK_HOME volume"


def test_every_service_has_resource_limits(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert limits.get("memory") and float(limits.get("cpus", 0)) > 0, f"{name}: no limits"


def test_project_environment_matches_settings(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile, monkeypatch: pytest.MonkeyPatch
) -> None:
    password = _env_file_values(ENV_EXAMPLE)["REDIS_PASSWORD"]
    project = [name for name, service in services.items() if "build" in service]
    assert set(project) == {"mlflow", "bootstrap", "api", "candidates", "ranking", "sink",
                            "trainer", "monitor", "locust"}
    for key in [k for k in os.environ if k.startswith("RECSTACK_")]:
        monkeypatch.delenv(key)
    for name in project:
        env = {**dockerfile.final_env(), **services[name]["environment"]}
        for key, value in env.items():
            if key.startswith("RECSTACK_"):
                monkeypatch.setenv(key, value)
        s = Settings()
        assert str(s.home) == "/var/recstack" and s.root == Path("/var/recstack"), name
        assert (s.redis.host, s.redis.port) == ("redis", 6379), name
        assert s.redis.password is not None and s.redis.password.get_secret_value() == password
        assert s.mlflow.uri == "http://mlflow:5000", name
        assert s.feast.repo_path == Path("/opt/recstack/feature_repo"), name
        assert _mounts(services[name])["/var/recstack"]


def test_secrets_agree_across_services(services: dict[str, dict[str, Any]]) -> None:
    values = _env_file_values(ENV_EXAMPLE)
    redis_env = services["redis"]["environment"]
    # docker/redis-entrypoint.sh writes REDIS_PASSWORD into the rendered redis.conf.
    assert redis_env["REDIS_PASSWORD"] == values["REDIS_PASSWORD"]
    assert redis_env["REDISCLI_AUTH"] == values["REDIS_PASSWORD"]
    mlflow = services["mlflow"]
    mlflow_argv = _argv(mlflow["command"])
    backend = urlsplit(mlflow_argv[mlflow_argv.index("--backend-store-uri") + 1])
    pg_env = services["postgres"]["environment"]
    # The driver is named: SQLAlchemy 2.1's default for postgresql:// is psycopg 3, not in the image.
    assert backend.scheme == "postgresql+psycopg2" and backend.hostname == "postgres"
    # The password reaches libpq through PGPASSWORD, not through the URI in MLflow's argv.
    assert backend.password is None
    assert mlflow["environment"]["PGPASSWORD"] == pg_env["POSTGRES_PASSWORD"] \
        == values["POSTGRES_PASSWORD"]
    assert backend.username == pg_env["POSTGRES_USER"]
    assert backend.path.lstrip("/") == pg_env["POSTGRES_DB"]


def test_mlflow_accepts_the_hosts_clients_use(services: dict[str, dict[str, Any]]) -> None:
    # MLflow 3 answers 403 "Invalid Host header" to hosts outside its allow-list.
    from mlflow.server.security_utils import is_allowed_host_header

    argv = _argv(services["mlflow"]["command"])
    allowed = argv[argv.index("--allowed-hosts") + 1].split(",")
    tracking = urlsplit(services["api"]["environment"]["RECSTACK_MLFLOW__TRACKING_URI"])
    ui_port = services["mlflow"]["ports"][0].split(":")[1]
    for host in (tracking.netloc, f"localhost:{ui_port}", f"127.0.0.1:{ui_port}"):
        assert is_allowed_host_header(allowed, host), host
    assert not is_allowed_host_header(allowed, "attacker.example:5000")
    assert argv[argv.index("--artifacts-destination") + 1].startswith("/var/recstack/")


def test_prometheus_finds_every_api_replica_and_the_rules(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    mounts = _mounts(services["prometheus"])
    config_path = Path(mounts["/etc/prometheus/prometheus.yml"])
    config = yaml.safe_load(config_path.read_text())
    api_job = next(job for job in config["scrape_configs"] if job["job_name"] == "api")
    sd = api_job["dns_sd_configs"][0]
    assert sd["names"] == ["api"] and sd["type"] == "A" and sd["port"] == 8000
    # Each rule file must exist on the host under the mount that backs it in the container.
    host_rules = []
    for rule in config["rule_files"]:
        base = next(t for t in mounts if rule.startswith(t.rstrip("/") + "/"))
        host = Path(mounts[base]) / rule[len(base):].lstrip("/")
        assert host.is_file(), f"{rule} -> {host} does not exist"
        host_rules.append(str(host))
    promtool = need_binary("promtool")
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump({**config, "rule_files": host_rules}))
    result = subprocess.run([promtool, "check", "config", str(local)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nginx_config_is_valid_and_re_resolves_the_replicas(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    conf_path = Path(_mounts(services["nginx"])["/etc/nginx/conf.d/default.conf"])
    conf = conf_path.read_text()
    assert re.search(r"^resolver 127\.0\.0\.11\b", conf, re.M), "use Docker's embedded DNS"
    # proxy_pass through a variable: resolved per request, so scaled replicas are used.
    assert re.search(r"set \$(\w+) http://api:8000;", conf)
    assert re.search(r"proxy_pass \$\w+;", conf)
    health = re.search(r"location = (\S+) \{", conf).group(1)
    assert health in " ".join(services["nginx"]["healthcheck"]["test"])
    nginx = need_binary("nginx")
    # The image includes conf.d/*.conf inside `http {}`; wrap it the same way.
    included = tmp_path / "default.conf"
    included.write_text(conf.replace("/var/log/nginx/access.log", str(tmp_path / "access.log")))
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid;\nevents {{}}\nhttp {{\n    include {included};\n}}\n"
    )
    result = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(main), "-e", "stderr"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_grafana_is_provisioned_from_the_monitoring_folder(
    services: dict[str, dict[str, Any]],
) -> None:
    from serving.metrics import ServingMetrics

    grafana = services["grafana"]
    assert grafana.get("profiles") == ["dashboards"]
    mounts = _mounts(grafana)
    provisioning = Path(mounts["/etc/grafana/provisioning"])
    assert provisioning == REPO / "monitoring" / "grafana" / "provisioning"
    assert provisioning.is_dir(), f"{provisioning} does not exist (monitoring/grafana/)"
    (datasource_file,) = sorted((provisioning / "datasources").glob("*.y*ml"))
    datasources = yaml.safe_load(datasource_file.read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090" and source["uid"]
    dashboards = []
    for provider_file in sorted((provisioning / "dashboards").glob("*.y*ml")):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            container_dir = provider["options"]["path"]
            base = next(t for t in mounts if container_dir.rstrip("/").startswith(t.rstrip("/")))
            host_dir = Path(mounts[base]) / container_dir[len(base):].lstrip("/")
            dashboards += sorted(host_dir.glob("*.json"))
    assert dashboards, "no dashboard JSON behind the provisioned providers"

    # Series names per family type (a labelled histogram has no samples until observed).
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"],
                "gauge": [""], "summary": ["_count", "_sum", ""]}
    exported = {family.name + suffix for family in ServingMetrics().registry.collect()
                for suffix in suffixes.get(family.type, [""])}
    for path in dashboards:
        dashboard = json.loads(path.read_text())
        panels = [p for p in dashboard["panels"] if p.get("type") != "row"]
        assert panels, path
        for panel in panels:
            for target in panel.get("targets", []):
                uid = (target.get("datasource") or panel.get("datasource") or {}).get("uid")
                assert uid in (source["uid"], "${datasource}", "$datasource"), panel["title"]
                for metric in re.findall(r"\b(recstack_[a-z0-9_]+)\b", target["expr"]):
                    # The serving tier's series must exist; other stages export their own.
                    if metric.startswith(("recstack_request", "recstack_stage", "recstack_degraded",
                                          "recstack_shed", "recstack_breaker", "recstack_in_flight")):
                        assert metric in exported, f"{panel['title']}: serving exports no {metric}"


# ---- secrets stay out of argv ----------------------------------------------------------------

def _raw_compose() -> dict[str, Any]:
    """docker-compose.yml as written (anchors merged by YAML, ``${...}`` left as text)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _process_argv_fields(service: dict[str, Any]) -> dict[str, Any]:
    """What becomes a process's argv: command, entrypoint, the healthcheck's test."""
    fields = {key: service[key] for key in ("command", "entrypoint") if key in service}
    if "healthcheck" in service:
        fields["healthcheck.test"] = service["healthcheck"].get("test")
    return fields


def test_no_command_interpolates_a_password() -> None:
    # `ps` shows every process's argv to every user of the host (and `docker inspect` shows
    # commands); environment variables and files are readable by the container's user only.
    secret_ref = re.compile(r"\$\{?\w*(PASSWORD|SECRET|TOKEN|_AUTH)\w*")
    for name, service in _raw_compose()["services"].items():
        for key, value in _process_argv_fields(service).items():
            text = json.dumps(value)
            assert not secret_ref.search(text), f"{name}: {key} interpolates a secret: {text}"


def test_no_rendered_argv_holds_a_password_value(services: dict[str, dict[str, Any]]) -> None:
    secrets_ = [v for k, v in _env_file_values(ENV_EXAMPLE).items() if "PASSWORD" in k]
    for name, service in services.items():
        for key, value in _process_argv_fields(service).items():
            text = json.dumps(value)
            leaked = [s for s in secrets_ if s in text]
            assert not leaked, f"{name}: {key} carries {leaked}"


REDIS_CONF = REPO / "docker" / "redis.conf"
REDIS_ENTRYPOINT = REPO / "docker" / "redis-entrypoint.sh"


def _redis_conf(path: Path = REDIS_CONF) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out[key.lower()] = value.strip().strip('"')
    return out


def _bytes(value: str) -> int:
    """Redis / Compose memory units: 384mb, 512M, 1gb -> bytes (1024-based, as both use)."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?)b?", value.strip().lower())
    assert match, value
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")


def test_redis_runs_from_a_config_rendered_at_start(services: dict[str, dict[str, Any]]) -> None:
    redis_service = services["redis"]
    entrypoint = _argv(redis_service["entrypoint"])
    assert entrypoint == ["/usr/local/bin/recstack-redis-entrypoint"]
    assert _argv(redis_service["command"]) == ["redis-server"]  # no option with a secret
    mounts = _mounts(redis_service)
    assert Path(mounts[entrypoint[0]]) == REDIS_ENTRYPOINT
    assert os.access(REDIS_ENTRYPOINT, os.X_OK), "the bind-mounted entrypoint must be executable"
    assert Path(mounts["/usr/local/etc/redis/recstack.conf"]) == REDIS_CONF
    # The rendered file (it holds requirepass) lives in memory only, never in a volume.
    tmpfs = redis_service.get("tmpfs")
    tmpfs = [tmpfs] if isinstance(tmpfs, str) else tmpfs or []
    assert any(t.split(":")[0] == "/run/recstack-redis" for t in tmpfs), tmpfs
    assert "requirepass" not in _redis_conf(), "the committed redis.conf must hold no secret"


def test_redis_is_durable_and_bounded(services: dict[str, dict[str, Any]]) -> None:
    conf = _redis_conf()
    assert conf["appendonly"] == "yes" and conf["appendfsync"] == "everysec"
    # The server's files go to its working directory: /data in redis:7, the named volume.
    assert "dir" not in conf and _mounts(services["redis"])["/data"] == "redis-data"
    # noeviction: evicting a user's or item's features would silently degrade ranking; a full
    # Redis fails writes loudly instead, and maxmemory is sized so that it is never reached.
    assert conf["maxmemory-policy"] == "noeviction"
    maxmemory = _bytes(conf["maxmemory"])
    limit = _bytes(services["redis"]["deploy"]["resources"]["limits"]["memory"])
    # An AOF rewrite forks: copy-on-write pages, the client buffers and the allocator's
    # fragmentation need room above maxmemory, or the kernel OOM-kills the container.
    assert maxmemory <= 0.75 * limit, (conf["maxmemory"], limit)


def test_redis_entrypoint_keeps_the_password_out_of_argv(tmp_path: Path) -> None:
    """The real script and redis-server: authenticated, durable, bounded, no secret in argv."""
    import redis as redis_py

    from tests.conftest import free_port, stop_process, wait_for_port

    need_binary("redis-server")
    password, port = "s3cret-" + os.urandom(6).hex(), free_port()
    env = {**os.environ, "REDIS_PASSWORD": password, "REDISCLI_AUTH": password,
           "RECSTACK_REDIS_BASE_CONF": str(REDIS_CONF),
           "RECSTACK_REDIS_RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.Popen(
        [str(REDIS_ENTRYPOINT), "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--dir", str(tmp_path)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, 10, proc)
        argv = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        # (redis-server retitles itself "redis-server HOST:PORT"; the argv it was started with
        # is the compose command checked above, and the script exec'ed it in place.)
        assert b"redis-server" in argv[0] and password.encode() not in b" ".join(argv)
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        assert password.encode() not in environ  # the script unset what it wrote to the file
        rendered = tmp_path / "run" / "redis.conf"
        assert rendered.stat().st_mode & 0o077 == 0, oct(rendered.stat().st_mode)
        with pytest.raises(redis_py.exceptions.AuthenticationError):
            redis_py.Redis(port=port).ping()
        client = redis_py.Redis(port=port, password=password, decode_responses=True)
        config = {k: client.config_get(k)[k] for k in
                  ("appendonly", "appendfsync", "maxmemory", "maxmemory-policy")}
        assert config == {"appendonly": "yes", "appendfsync": "everysec",
                          "maxmemory": str(_bytes(_redis_conf()["maxmemory"])),
                          "maxmemory-policy": "noeviction"}
    finally:
        stop_process(proc)
    empty = subprocess.run([str(REDIS_ENTRYPOINT), "redis-server"],
                           env={**env, "REDIS_PASSWORD": ""}, capture_output=True, text=True,
                           timeout=10)
    assert empty.returncode != 0 and "REDIS_PASSWORD" in empty.stderr


def test_worst_case_stream_entry_fits_the_maxmemory_arithmetic(tmp_path: Path) -> None:
    """docker/redis.conf sizes maxmemory with 750 B per stream entry (entry + pending entry):
    measure an event with every string at its maximum length, delivered and not acknowledged."""
    import datetime as dt

    import redis as redis_py

    from recstack.schemas import EVENTS_STREAM, Event
    from serving.events import event_fields
    from tests.conftest import free_port, stop_process, wait_for_port

    binary, port, n = need_binary("redis-server"), free_port(), 5_000
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, 10, proc)
        client = redis_py.Redis(port=port)
        base = client.info("memory")["used_memory"]
        client.xgroup_create(EVENTS_STREAM, "sink", id="0", mkstream=True)
        pipe = client.pipeline(transaction=False)
        for i in range(n):
            event = Event(event_id=f"{i:020d}".ljust(128, "e"), ts=dt.datetime.now(dt.UTC),
                          user_id=2**63 - 1, item_id=2**63 - 1, event_type="click",
                          request_id="r" * 128, position=10_000, model_version="m" * 128,
                          arm="a" * 64)
            pipe.xadd(EVENTS_STREAM, event_fields(event))
        pipe.execute()
        client.xreadgroup("sink", "c1", {EVENTS_STREAM: ">"}, count=n)  # all pending
        per_entry = (client.info("memory")["used_memory"] - base) / n
    finally:
        stop_process(proc)
    assert per_entry <= 750, f"{per_entry:.0f} B per entry: redo docker/redis.conf's arithmetic"
    stream_bytes = Settings().events.max_stream_entries * 750
    assert stream_bytes <= 0.5 * _bytes(_redis_conf()["maxmemory"]), stream_bytes


# ---- the bootstrap fills in only what is missing --------------------------------------------

BOOTSTRAP_SCRIPT = REPO / "docker" / "bootstrap.py"


def _load_bootstrap() -> Any:
    """docker/bootstrap.py (a script in the image, not a package) as a module."""
    import importlib.util
    import sys

    name = "recstack_compose_bootstrap"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BOOTSTRAP_SCRIPT)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_bootstrap_runs_the_idempotent_script(
    services: dict[str, dict[str, Any]], dockerfile: Dockerfile
) -> None:
    argv = _argv(services["bootstrap"]["command"])
    # `recstack simulate` replaces the lake: run unconditionally on every `up`, it deleted the
    # events the sink had written (issue 16, item 7).
    assert "simulate" not in " ".join(argv), argv
    assert argv[0] == "python" and argv[1].endswith("/docker/bootstrap.py"), argv
    workdir = Path(dockerfile.final("WORKDIR")[-1])
    final = str(len(dockerfile.stages) - 1)
    copied = {workdir / dest for stage, _, dest in dockerfile.copies() if stage == final}
    assert Path(argv[1]) in copied, f"the image does not hold {argv[1]} (COPY it)"


def _state(**overrides: Any) -> Any:
    module = _load_bootstrap()
    full = dict(lake_days=4, lake_files=12, feature_tables=True, online_features=True,
                champion={"candidates": "1", "ranker": "1"})
    return module, module.StackState(**{**full, **overrides})


def test_bootstrap_plan_keeps_a_stack_that_has_everything() -> None:
    module, state = _state()
    assert module.plan(state) == []
    kept = " ".join(module.kept(state, []))
    assert "lake (4 days, 12 event files)" in kept and "champion (ranker v1)" in kept


def test_bootstrap_plan_builds_an_empty_stack() -> None:
    module, state = _state(lake_days=0, lake_files=0, feature_tables=False,
                           online_features=False, champion=None)
    assert module.plan(state) == ["simulate", "pipeline", "train"]


def test_bootstrap_plan_never_simulates_over_a_lake() -> None:
    module = _load_bootstrap()
    for tables in (True, False):
        for online in (True, False):
            for champion in (None, {"candidates": "2", "ranker": "3"}):
                state = module.StackState(lake_days=1, lake_files=1, feature_tables=tables,
                                          online_features=online, champion=champion)
                assert "simulate" not in module.plan(state), state


def test_bootstrap_plan_rematerializes_a_lost_online_store() -> None:
    module, state = _state(online_features=False)
    assert module.plan(state) == ["materialize"]  # no simulation, no Beam, no training
    module, state = _state(feature_tables=False, online_features=False)
    assert module.plan(state) == ["pipeline"]
    module, state = _state(champion=None)
    assert module.plan(state) == ["train"]


# ---- image ------------------------------------------------------------------------------------

def test_dockerfile_builds_a_non_root_api_image(
    dockerfile: Dockerfile, services: dict[str, dict[str, Any]]
) -> None:
    assert dockerfile.base_image() == "python:3.11-slim"
    user = dockerfile.final("USER")[-1].split(":")[0]
    assert user not in ("", "0", "root")
    assert "8000" in dockerfile.final("EXPOSE")[-1].split()
    assert dockerfile.final_env()["RECSTACK_HOME"] == "/var/recstack"
    installs = [r for s in dockerfile.stages for ins, r in s if ins == "RUN" and "pip install" in r]
    assert any("-c constraints.txt" in r and '".[postgres]"' in r for r in installs)
    # The api service overrides nothing the image's default would get wrong.
    assert _argv(services["api"]["command"])[:6] == dockerfile.cmd()[:6]


def test_dockerfile_copies_every_package_and_the_files_outside_the_wheel(
    dockerfile: Dockerfile,
) -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {p.split(".")[0] for p in pyproject["tool"]["setuptools"]["packages"]}
    copied = {src.strip("/") for _, sources, _ in dockerfile.copies() for src in sources}
    assert packages <= copied, f"not copied: {packages - copied}"
    assert {"pyproject.toml", "constraints.txt", "README.md"} <= copied
    workdir = dockerfile.final("WORKDIR")[-1]
    final = str(len(dockerfile.stages) - 1)
    final_dests = {dest.strip("/"): src for stage, srcs, dest in dockerfile.copies()
                   if stage == final for src in srcs}
    repo_path = dockerfile.final_env()["RECSTACK_FEAST__REPO_PATH"]
    assert repo_path == f"{workdir}/feature_repo" and "feature_repo" in final_dests
    assert "loadtests" in final_dests


def test_dockerignore_keeps_the_sources_and_drops_secrets_and_state(
    dockerfile: Dockerfile,
) -> None:
    patterns = _dockerignore_patterns()
    for _, sources, _ in dockerfile.copies():
        for src in sources:
            assert not _dockerignored(src.strip("/"), patterns), f"{src} is excluded"
            probe = f"{src.strip('/')}/__init__.py"
            if (REPO / src).is_dir():
                assert not _dockerignored(probe, patterns), f"{probe} is excluded"
    for path in (".env", ".git/HEAD", ".venv/bin/python", "var/lake/x.parquet", "tests/conftest.py",
                 "recstack/__pycache__/cli.cpython-311.pyc", "docker-compose.yml"):
        assert _dockerignored(path, patterns), f"{path} would be sent to the build"


def test_dockerignore_matcher() -> None:
    # The helper above decides what the image tests trust; pin its semantics.
    patterns = ["*", "!src/", "**/__pycache__", "**/*.py[cod]"]
    assert _dockerignored("README.md", patterns)
    assert not _dockerignored("src/a.py", patterns)
    assert _dockerignored("src/__pycache__/a.cpython-311.pyc", patterns)
    assert _dockerignored("src/a.pyc", patterns)
    assert not _dockerignored("src/a.py", [*patterns, "!src/a.py"])
