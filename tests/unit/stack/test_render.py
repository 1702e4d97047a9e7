"""The native stack's rendered configs: validated by the tools that will read them."""

from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from recstack.settings import Settings
from app.stack.services import SERVICE_COMMANDS, StackConfigError, native_programs
from app.stack.paths import RULES_FILE, StackPaths
from app.stack.render import (
    render_api_targets,
    render_nginx,
    render_prometheus,
    render_supervisord,
    render_targets,
    write_configs,
    write_monitor_targets,
)
from app.stack.services import STACK_MARKER_ENV, settings_env
from tests.conftest import need_binary

COMMANDS = SERVICE_COMMANDS


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    return Settings(
        home=tmp_path / "home",
        redis={"port": 26379, "password": "s3cr%t"},
        mlflow={"port": 25000},
        stack={"lb_port": 28080, "prometheus_port": 29090, "api_base_port": 28100,
               "supervisor_port": 29001, "api_replicas": 3},
    )


def test_every_program_starts_with_its_service_command(stack_settings: Settings) -> None:
    programs = native_programs(stack_settings)
    assert {p.group for p in programs} == set(COMMANDS)
    assert [p.name for p in programs if p.group == "api"] == ["api-0", "api-1", "api-2"]
    for program in programs:
        expected = COMMANDS[program.group]
        assert Path(program.argv[0]).name == expected[0], program.argv
        assert program.argv[1 : len(expected)] == expected[1:], program.argv
        assert Path(program.argv[0]).is_absolute()


def test_supervisord_conf_is_accepted_by_supervisor_and_lists_every_program(
    stack_settings: Settings,
) -> None:
    programs = native_programs(stack_settings)
    write_configs(stack_settings, programs, replicas=3)
    conf = StackPaths.of(stack_settings).supervisord_conf
    assert oct(conf.stat().st_mode & 0o777) == "0o600"  # it holds passwords

    parser = configparser.RawConfigParser()
    parser.read(conf)
    sections = {s.removeprefix("program:") for s in parser.sections() if s.startswith("program:")}
    assert sections == {p.name for p in programs}
    for program in programs:
        section = f"program:{program.name}"
        argv = shlex.split(parser.get(section, "command"))
        expected = COMMANDS[program.group]
        assert Path(argv[0]).name == expected[0] and argv[1 : len(expected)] == expected[1:]
        assert parser.get(section, "stopasgroup") == "true"
        assert parser.get(section, "killasgroup") == "true"
        assert parser.get(section, "autostart") == "false"

    # supervisord's own parser: the file is loadable and environments decode back exactly.
    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    groups = {g.name: g for g in options.process_group_configs}
    api0 = groups["api-0"].process_configs[0]
    assert api0.environment["RECSTACK_HOME"] == str(stack_settings.root)
    assert api0.environment["RECSTACK_REDIS__PASSWORD"] == "s3cr%t"  # % survived escaping
    assert api0.environment[STACK_MARKER_ENV] == str(stack_settings.run_dir)
    assert groups["redis"].process_configs[0].environment[STACK_MARKER_ENV]


def test_settings_env_round_trips_into_settings(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in [k for k in os.environ if k.startswith("RECSTACK_")]:
        monkeypatch.delenv(key)
    for key, value in settings_env(stack_settings).items():
        monkeypatch.setenv(key, value)
    seen = Settings()
    assert seen.root == stack_settings.root
    assert seen.redis.password.get_secret_value() == "s3cr%t"
    expected = stack_settings.model_dump(exclude={"home", "redis", "stack", "load"})
    assert seen.model_dump(exclude={"home", "redis", "stack", "load"}) == expected
    assert seen.stack.lb_port == stack_settings.stack.lb_port


def test_scaling_does_not_change_existing_replicas(stack_settings: Settings) -> None:
    # supervisord restarts a program whose config changed: scale must leave api-0 untouched.
    two = {p.name: p for p in native_programs(stack_settings, replicas=2)}
    four = {p.name: p for p in native_programs(stack_settings, replicas=4)}
    assert two["api-0"] == four["api-0"] and two["api-1"] == four["api-1"]
    assert set(four) - set(two) == {"api-2", "api-3"}
    a = render_supervisord(stack_settings, list(two.values()), "pw")
    b = render_supervisord(stack_settings, list(four.values()), "pw")
    section = lambda text: text.split("[program:api-0]")[1].split("[program:")[0]  # noqa: E731
    assert section(a) == section(b)


def test_port_clash_is_a_clear_error(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, stack={"api_base_port": 18079, "lb_port": 18080})
    with pytest.raises(StackConfigError, match="port 18080 .*api-1.*nginx|port 18080"):
        native_programs(s)


def test_env_values_with_both_quotes_are_refused(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, redis={"password": """a"b'c"""})
    with pytest.raises(StackConfigError, match="quote"):
        render_supervisord(s, native_programs(s), "pw")


def test_json_list_settings_reach_programs_intact(tmp_path: Path) -> None:
    # List settings travel as JSON (double quotes inside): single-quoted for supervisor.
    s = Settings(home=tmp_path, redis={"password": 'a"b'})
    conf = render_supervisord(s, native_programs(s), "pw")
    parser = configparser.RawConfigParser()
    parser.read_string(conf)
    from supervisor.datatypes import dict_of_key_value_pairs

    env = dict_of_key_value_pairs(parser.get("program:api-0", "environment").replace("%%", "%"))
    assert env["RECSTACK_REDIS__PASSWORD"] == 'a"b'
    lists = {k: v for k, v in env.items() if v.startswith("[")}
    assert lists, "no list-valued setting to check"
    for key, value in lists.items():
        assert json.loads(value) == json.loads(settings_env(s)[key]), key


def test_nginx_config_passes_nginx_t(stack_settings: Settings) -> None:
    nginx = need_binary("nginx")
    programs = native_programs(stack_settings)
    write_configs(stack_settings, programs, replicas=3)
    p = StackPaths.of(stack_settings)
    proc = subprocess.run(
        [nginx, "-t", "-p", str(p.nginx_dir), "-c", str(p.nginx_conf), "-e", "stderr"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    text = p.nginx_conf.read_text()
    for port in (28100, 28101, 28102):
        assert f"server 127.0.0.1:{port} max_fails=2 fail_timeout=5s;" in text
    assert "server 127.0.0.1:28103" not in text
    assert "least_conn;" in text and "proxy_next_upstream_tries 2;" in text
    assert f"listen 127.0.0.1:{stack_settings.stack.lb_port};" in text


def test_nginx_upstreams_follow_the_replica_count(stack_settings: Settings) -> None:
    text = render_nginx(stack_settings, replicas=1)
    assert text.count("max_fails=2") == 1


def test_prometheus_config_and_rules_pass_promtool(stack_settings: Settings) -> None:
    promtool = need_binary("promtool")
    write_configs(stack_settings, native_programs(stack_settings), replicas=3)
    p = StackPaths.of(stack_settings)
    config = subprocess.run(
        [promtool, "check", "config", str(p.prometheus_conf)], capture_output=True, text=True
    )
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr
    rules = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    targets = json.loads(p.prometheus_targets.read_text())
    assert [t["targets"] for t in targets] == [["127.0.0.1:28100"], ["127.0.0.1:28101"], ["127.0.0.1:28102"]]
    assert [t["labels"]["replica"] for t in targets] == ["api-0", "api-1", "api-2"]


def test_api_targets_follow_the_replica_count(stack_settings: Settings) -> None:
    assert len(json.loads(render_api_targets(stack_settings, 5))) == 5


RULES_TEST = """
rule_files: [{rules}]
evaluation_interval: 5s
tests:
  - interval: 5s
    input_series:
      - series: 'up{{job="api", instance="127.0.0.1:1", replica="api-0"}}'
        values: '1 1 0 0 0 0 0 0 0 0'
      - series: 'up{{job="api", instance="127.0.0.1:2", replica="api-1"}}'
        values: '1x10'
      # 20 requests/s, 99% of them under 50 ms: p99 lands exactly on the 50 ms bucket edge.
      - series: 'recstack_request_duration_seconds_bucket{{job="api", le="0.05"}}'
        values: '0+99x20'
      - series: 'recstack_request_duration_seconds_bucket{{job="api", le="0.1"}}'
        values: '0+100x20'
      - series: 'recstack_request_duration_seconds_bucket{{job="api", le="+Inf"}}'
        values: '0+100x20'
      - series: 'recstack_request_duration_seconds_count{{job="api"}}'
        values: '0+100x20'
      - series: 'recstack_stage_duration_seconds_bucket{{job="api", stage="ranking", le="0.008"}}'
        values: '0+50x20'
      - series: 'recstack_stage_duration_seconds_bucket{{job="api", stage="ranking", le="+Inf"}}'
        values: '0+50x20'
    alert_rule_test:
      - eval_time: 10s
        alertname: ApiReplicaDown
        exp_alerts: []
      - eval_time: 40s
        alertname: ApiReplicaDown
        exp_alerts:
          - exp_labels: {{severity: page, job: api, instance: "127.0.0.1:1", replica: api-0}}
            exp_annotations:
              summary: "api replica 127.0.0.1:1 is down"
              description: "Prometheus cannot scrape 127.0.0.1:1 (api-0) for 15s; nginx routes around it, capacity is reduced."
      - eval_time: 40s
        alertname: ApiAllReplicasDown
        exp_alerts: []
    promql_expr_test:
      - expr: recstack:request_rate:rate1m
        eval_time: 90s
        exp_samples:
          - labels: 'recstack:request_rate:rate1m{{job="api"}}'
            value: 20
      - expr: recstack:request_duration_seconds:p99_1m
        eval_time: 90s
        exp_samples:
          - labels: 'recstack:request_duration_seconds:p99_1m{{job="api"}}'
            value: 0.05
      - expr: recstack:stage_duration_seconds:p99_1m
        eval_time: 90s
        exp_samples:
          - labels: 'recstack:stage_duration_seconds:p99_1m{{job="api", stage="ranking"}}'
            value: 0.00792
"""


def test_rules_compute_what_their_names_say(tmp_path: Path) -> None:
    promtool = need_binary("promtool")
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(RULES_TEST.format(rules=json.dumps(str(RULES_FILE))))
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_split_mode_adds_stage_services_fronted_by_nginx(
    stack_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    serving = stack_settings.serving.model_copy(update={"mode": "split", "ranking_replicas": 2})
    stack_settings = stack_settings.model_copy(update={"serving": serving})
    programs = {p.name: p for p in native_programs(stack_settings)}
    assert {"candidates-0", "ranking-0", "ranking-1"} <= set(programs)
    assert programs["ranking-1"].port == stack_settings.stack.api_base_port + 41
    api_env = programs["api-0"].env
    assert api_env["RECSTACK_SERVING__MODE"] == "split"
    assert api_env["RECSTACK_SERVING__CANDIDATES_URL"] == "http://127.0.0.1:28081"
    assert api_env["RECSTACK_SERVING__RANKING_URL"] == "http://127.0.0.1:28082"

    write_configs(stack_settings, list(programs.values()), replicas=3)
    p = StackPaths.of(stack_settings)
    text = p.nginx_conf.read_text()
    assert "upstream ranking {" in text and "listen 127.0.0.1:28082;" in text
    assert text.count("server 127.0.0.1:2814") == 2  # ranking-0, ranking-1
    result = subprocess.run(
        [need_binary("nginx"), "-t", "-p", str(p.nginx_dir), "-c", str(p.nginx_conf),
         "-e", "stderr"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    # One Prometheus job per service (the rules aggregate by job): the stage services' own
    # targets files list their replicas, the api's only the api.
    assert {t["labels"]["service"] for t in json.loads(p.prometheus_targets.read_text())} == {"api"}
    ranking = json.loads(p.targets_file("ranking").read_text())
    assert [t["labels"]["replica"] for t in ranking] == ["ranking-0", "ranking-1"]
    assert [t["targets"] for t in ranking] == [["127.0.0.1:28140"], ["127.0.0.1:28141"]]
    assert len(json.loads(p.targets_file("candidates").read_text())) == 1


def test_inprocess_mode_has_no_stage_fronts(stack_settings: Settings) -> None:
    assert "upstream ranking" not in render_nginx(stack_settings, replicas=1)


def test_each_service_is_its_own_prometheus_job(stack_settings: Settings) -> None:
    import yaml

    config = yaml.safe_load(render_prometheus(stack_settings))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"prometheus", "api", "candidates", "ranking", "monitor"}
    p = StackPaths.of(stack_settings)
    for service in ("api", "candidates", "ranking", "monitor"):
        assert jobs[service]["file_sd_configs"][0]["files"] == [str(p.targets_file(service))]
    # In-process mode the stage services run nowhere: their jobs have no target.
    assert json.loads(render_targets(stack_settings, "ranking", {"ranking": 3})) == []


def test_monitor_target_follows_the_monitor(stack_settings: Settings) -> None:
    write_configs(stack_settings, native_programs(stack_settings), replicas=3)
    path = StackPaths.of(stack_settings).targets_file("monitor")
    assert json.loads(path.read_text()) == []
    assert write_monitor_targets(stack_settings, running=True)
    (entry,) = json.loads(path.read_text())
    assert entry["targets"] == [f"127.0.0.1:{stack_settings.stack.monitor_port}"]
    assert entry["labels"] == {"service": "monitor", "replica": "monitor"}
    write_configs(stack_settings, native_programs(stack_settings), replicas=3)
    assert len(json.loads(path.read_text())) == 1  # configs leave the monitor's entry alone
    write_monitor_targets(stack_settings, running=False)
    assert json.loads(path.read_text()) == []


def test_trainer_and_monitor_programs(stack_settings: Settings) -> None:
    programs = {p.name: p for p in native_programs(stack_settings)}
    trainer, monitor = programs["trainer"], programs["monitor"]
    assert trainer.argv[1:] == ["-m", "app.cli", "trainer"]
    assert (trainer.stopsignal, trainer.stopwaitsecs, trainer.port) == ("TERM", 300, None)
    assert monitor.argv[1:] == ["-m", "app.cli", "monitor"]
    assert monitor.port == stack_settings.stack.monitor_port
    assert (monitor.health.kind, monitor.health.path) == ("http", "/metrics")
    assert trainer.env[STACK_MARKER_ENV] == monitor.env[STACK_MARKER_ENV]
    conf = render_supervisord(stack_settings, list(programs.values()), "pw")
    assert "[program:trainer]" in conf and "stopwaitsecs=300" in conf


def test_stage_replica_counts_change_no_environment(stack_settings: Settings) -> None:
    # Scaling a stage service must not restart the api replicas (their env is their identity).
    one = {p.name: p for p in native_programs(stack_settings, {"api": 3, "ranking": 1})}
    two = {p.name: p for p in native_programs(stack_settings, {"api": 3, "ranking": 2})}
    assert set(two) - set(one) == {"ranking-1"}
    for name in one:
        assert one[name].env == two[name].env and one[name].argv == two[name].argv, name


def test_servers_run_outside_the_checkout(stack_settings: Settings) -> None:
    # A run from another checkout of the code restarts the Python programs, never Redis (whose
    # online features would be lost) or the other servers.
    from recstack.settings import REPO_ROOT

    programs = {p.name: p for p in native_programs(stack_settings)}
    for name in ("redis", "mlflow", "prometheus", "nginx"):
        assert programs[name].directory == stack_settings.run_dir, name
    for name in ("api-0", "sink", "trainer", "monitor", "ranking-0"):
        assert programs[name].directory == REPO_ROOT, name


def test_redis_is_durable_and_its_password_stays_out_of_argv(stack_settings: Settings) -> None:
    from app.stack.render import render_redis

    text = render_redis(stack_settings, "pa\"ss")
    lines = set(text.splitlines())
    assert {"appendonly yes", "appendfsync everysec", 'save ""'} <= lines
    assert f'dir "{stack_settings.root / "redis"}"' in lines  # under RECSTACK_HOME
    assert 'requirepass "pa\\"ss"' in lines
    redis = next(p for p in native_programs(stack_settings) if p.name == "redis")
    assert redis.argv[1:] == [str(StackPaths.of(stack_settings).redis_conf)]


def test_a_generated_redis_password_is_kept_0600_and_found_by_later_settings(
    tmp_path: Path,
) -> None:
    from app.stack.render import redis_secret

    s = Settings(home=tmp_path / "home", redis={"port": 26379})
    assert s.redis.secret() is None and s.redis.url == "redis://127.0.0.1:26379/0"
    write_configs(s, native_programs(s), 1)
    secret_file = s.run_dir / "redis.secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    secret = secret_file.read_text()
    assert len(secret) >= 24 and redis_secret(s) == secret  # generated once, then reused
    assert f'requirepass "{secret}"' in StackPaths.of(s).redis_conf.read_text()
    # The settings made before `up`, and those of any later process, connect with it.
    later = Settings(home=tmp_path / "home", redis={"port": 26379})
    assert s.redis.url == later.redis.url == f"redis://:{secret}@127.0.0.1:26379/0"
    assert secret in later.feast_env()["RECSTACK_FEAST_REDIS"]
    open_ = Settings(home=tmp_path / "other", redis={"generate_password": False})
    write_configs(open_, native_programs(open_), 1)
    assert "requirepass" not in StackPaths.of(open_).redis_conf.read_text()


def test_prometheus_has_no_http_lifecycle_unless_asked(stack_settings: Settings) -> None:
    def argv(s: Settings) -> list[str]:
        return next(p.argv for p in native_programs(s) if p.name == "prometheus")

    assert "--web.enable-lifecycle" not in argv(stack_settings)
    asked = stack_settings.model_copy(update={"stack": stack_settings.stack.model_copy(
        update={"prometheus_lifecycle": True})})
    assert "--web.enable-lifecycle" in argv(asked)


def test_supervisord_does_not_inherit_a_feast_metrics_dir_that_dies_with_the_caller(
        monkeypatch) -> None:
    """Importing feast (any verb that opens the store) creates a temporary
    PROMETHEUS_MULTIPROCESS_DIR, points both prometheus variables at it, and removes it when
    that process exits. supervisord started from such a process handed the dead directory to
    every program it (re)started later: a replica restarted after `recstack demo` had exited
    crashed at import (FileNotFoundError: .../feast_metrics_*/gauge_liveall_<pid>.db)."""
    from app.stack.services import base_env

    monkeypatch.setenv("PROMETHEUS_MULTIPROCESS_DIR", "/tmp/feast_metrics_gone")
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/tmp/feast_metrics_gone")
    monkeypatch.setenv("RECSTACK_HOME", "/tmp/x")
    monkeypatch.setenv("PATH_FOR_TEST", "kept")
    env = base_env()
    assert "PROMETHEUS_MULTIPROCESS_DIR" not in env and "PROMETHEUS_MULTIPROC_DIR" not in env
    assert "RECSTACK_HOME" not in env and env["PATH_FOR_TEST"] == "kept"
