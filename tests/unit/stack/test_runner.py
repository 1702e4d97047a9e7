"""The stack's verbs when nothing runs: clear errors, no processes, no surprises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recstack.settings import Settings
from app.stack.runner import down, scale, status, up, urls
from app.stack.supervisor import StackError
from app.stack.paths import StackPaths
from app.stack.runner import _replicas, default_services, replica_counts_now
from tests.conftest import free_port


@pytest.fixture
def idle(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", stack={"supervisor_port": free_port()})


def test_status_of_a_stack_that_never_ran_is_empty(idle: Settings) -> None:
    assert status(idle) == []
    assert not StackPaths.of(idle).run_dir.exists()  # status creates nothing


def test_down_is_idempotent_when_nothing_runs(idle: Settings) -> None:
    down(idle)
    down(idle)
    assert status(idle) == []


def test_unknown_service_is_refused_before_anything_starts(idle: Settings) -> None:
    with pytest.raises(StackError, match="unknown service.*'ranker'"):
        up(idle, services=["redis", "ranker"])
    assert not StackPaths.of(idle).supervisord_conf.exists()


def test_scale_checks_its_arguments_and_needs_a_running_stack(idle: Settings) -> None:
    with pytest.raises(StackError, match="'redis' does not scale.*api, candidates, ranking"):
        scale(idle, "redis", 2)
    with pytest.raises(StackError, match="between 1 and 16"):
        scale(idle, "api", 0)
    with pytest.raises(StackError, match="ranking replicas must be between 1 and 8"):
        scale(idle, "ranking", 9)
    with pytest.raises(StackError, match="not running"):
        scale(idle, "api", 3)


def test_scale_file_overrides_settings_until_down(idle: Settings) -> None:
    assert _replicas(idle) == idle.stack.api_replicas
    path = StackPaths.of(idle).scale_file
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"api": 5}))
    assert _replicas(idle) == 5
    down(idle)
    assert _replicas(idle) == idle.stack.api_replicas


def test_scale_file_holds_every_scalable_service(idle: Settings) -> None:
    path = StackPaths.of(idle).scale_file
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"api": 2, "ranking": 3}))
    assert replica_counts_now(idle) == {"api": 2, "candidates": 1, "ranking": 3}
    path.write_text("not json")
    assert replica_counts_now(idle)["ranking"] == idle.serving.ranking_replicas


def test_trainer_and_monitor_start_only_on_request(idle: Settings) -> None:
    services = default_services(idle)
    assert "trainer" not in services and "monitor" not in services
    assert "ranking" not in services and {"api", "nginx", "sink"} <= set(services)
    split = idle.model_copy(deep=True)
    split.serving.mode = "split"
    assert {"candidates", "ranking"} <= set(default_services(split))
    asked = idle.model_copy(deep=True)
    asked.stack.autostart = ["monitor"]
    assert "monitor" in default_services(asked) and "trainer" not in default_services(asked)


def test_urls_point_at_the_balancer_prometheus_and_mlflow(idle: Settings) -> None:
    u = urls(idle)
    assert u["api"] == f"http://127.0.0.1:{idle.stack.lb_port}"
    assert u["docs"] == u["api"] + "/docs"
    assert u["prometheus"].endswith(str(idle.stack.prometheus_port))
    assert u["mlflow"].endswith(str(idle.mlflow.port))
