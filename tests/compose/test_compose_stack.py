"""docker-compose.yml, run: build, up (health checks), bootstrap a tiny world, recommend through
nginx, every Prometheus target up, two API replicas both serving, one stopped and requests still
answered, then `down -v` (checked by the fixtures: nothing of the project left).

With Docker (`docker compose`) where there is one, else podman through tests/compose/harness.py.
The tests run in file order on one stack (module-scoped); each step relies on the one before.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest

from tests.compose.conftest import Engine, record

UPSTREAM = re.compile(r'"upstream":"([^"]+)"')

pytestmark = [pytest.mark.compose, pytest.mark.slow, pytest.mark.timeout(1800)]


def _get(url: str, timeout: float = 10) -> tuple[int, Any, dict[str, str]]:
    """Status, body (parsed when JSON, else text) and headers of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            raw, status, headers = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, None, dict(exc.headers)
    if "json" in headers.get("Content-Type", ""):
        return status, json.loads(raw or b"null"), headers
    return status, raw.decode(errors="replace"), headers


def _eventually(check: Any, timeout_s: float, what: str, pause_s: float = 1.0) -> Any:
    """Call ``check`` until it returns something truthy; fail naming ``what`` and the last
    value or error."""
    deadline, last = time.monotonic() + timeout_s, None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError) as exc:
            last = exc
        time.sleep(pause_s)
    pytest.fail(f"{what}: not within {timeout_s:.0f}s (last: {last!r})")


@pytest.fixture(scope="module")
def urls(stack: Any, compose_env: dict[str, str], docker_ip: str) -> dict[str, str]:
    return {
        "lb": f"http://{docker_ip}:{compose_env['NGINX_PORT']}",
        "prometheus": f"http://{docker_ip}:{compose_env['PROMETHEUS_PORT']}",
        "mlflow": f"http://{docker_ip}:{compose_env['MLFLOW_PORT']}",
    }


def _recommend(lb: str, user_id: int) -> dict[str, Any]:
    status, body, _ = _get(f"{lb}/recommendations/{user_id}?k=5")
    assert status == 200, f"GET /recommendations/{user_id} through nginx: HTTP {status}"
    assert body is not None
    return body


def _targets(prometheus: str) -> list[dict[str, Any]]:
    status, body, _ = _get(f"{prometheus}/api/v1/targets?state=active")
    assert status == 200 and body is not None and body["status"] == "success", body
    return body["data"]["activeTargets"]


def test_a_recommendation_through_nginx(urls: dict[str, str], engine: Engine) -> None:
    start = time.monotonic()

    def served() -> dict[str, Any]:
        # /healthz (the compose healthcheck) is liveness: a replica answers 503 until it has
        # loaded the champion models, a few seconds after the bootstrap.
        status, body, _ = _get(f"{urls['lb']}/recommendations/1?k=5")
        if status != 200 or not body:
            raise ValueError(f"HTTP {status}")
        return body

    body = _eventually(served, 90, "a recommendation through nginx")
    record("first_recommendation_after_healthy", time.monotonic() - start)
    assert body["user_id"] == 1
    assert 1 <= len(body["items"]) <= 5
    assert all({"item_id", "score", "source"} <= set(item) for item in body["items"])
    # Served by the models the bootstrap registered, not by an empty fallback.
    assert body["model"].get("candidates") and body["model"].get("ranker"), body
    # The published MLflow UI answers too (the bootstrap logged there).
    status, _, _ = _get(f"{urls['mlflow']}/health")
    assert status == 200


def test_prometheus_scrapes_every_target_up(urls: dict[str, str], engine: Engine) -> None:
    def all_up() -> list[dict[str, Any]] | None:
        targets = _targets(urls["prometheus"])
        jobs = {t["labels"]["job"] for t in targets}
        ok = {"prometheus", "api"} <= jobs and all(t["health"] == "up" for t in targets)
        return targets if ok else None

    targets = _eventually(all_up, 60, "every Prometheus target up", pause_s=2)
    assert sum(t["labels"]["job"] == "api" for t in targets) == 1


def test_api_scales_to_two_replicas_and_both_serve(
    stack: Any, urls: dict[str, str], engine: Engine
) -> None:
    start = time.monotonic()
    # What a Docker user runs to scale without re-running the one-shot bootstrap.
    stack._docker_compose.execute("up -d --no-deps --scale api=2 --wait api")
    assert len(engine.containers("api", running=True)) == 2

    def two_api_targets_up() -> list[str] | None:
        api = [t for t in _targets(urls["prometheus"]) if t["labels"]["job"] == "api"]
        return [t["labels"]["instance"] for t in api] if (
            len(api) == 2 and all(t["health"] == "up" for t in api)) else None

    instances = _eventually(two_api_targets_up, 60, "two api targets up in Prometheus", 2)
    record("scale_to_2", time.monotonic() - start)

    # nginx re-resolves "api" every 5 s and spreads requests over every address it gets.
    def both_replicas_served() -> set[str] | None:
        for user_id in range(20):
            _recommend(urls["lb"], user_id)
        logs = stack._docker_compose.execute("logs --tail 400 nginx").decode(errors="replace")
        upstreams = set()
        for line in logs.splitlines():  # JSON access log lines, behind a (coloured) prefix
            match = UPSTREAM.search(line)
            if match and '"status":200' in line and "/recommendations/" in line:
                upstreams.add(match.group(1).split(",")[-1].strip())
        return upstreams if len(upstreams) >= 2 else None

    upstreams = _eventually(both_replicas_served, 60, "requests served by both replicas", 2)
    hosts = {u.rsplit(":", 1)[0] for u in upstreams}
    assert hosts <= {i.rsplit(":", 1)[0] for i in instances}, (upstreams, instances)


def test_requests_answered_with_one_replica_stopped(
    urls: dict[str, str], engine: Engine
) -> None:
    replicas = engine.containers("api", running=True)
    assert len(replicas) == 2
    stopped = engine.run("stop", "-t", "5", replicas[0])
    assert stopped.returncode == 0, stopped.stderr
    assert engine.containers("api", running=True) == replicas[1:]
    # Right away: nginx may still hold the stopped replica's address; it retries on the other.
    failures = []
    for user_id in range(30):
        status, _, _ = _get(f"{urls['lb']}/recommendations/{user_id}?k=5")
        if status != 200:
            failures.append((user_id, status))
    assert not failures, f"requests not answered after stopping one replica: {failures}"


def _in_project_container(engine: Engine, code: str) -> str:
    """Run Python in a running api container (it mounts the project's state volume)."""
    ctr = engine.containers("api", running=True)[0]
    done = engine.run("exec", ctr, "python", "-c", code, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


_LAKE_FILES = ("from recstack.lake import partition_files; from recstack.settings import "
               "get_settings; print(len(partition_files(get_settings().lake_dir)))")
_STACK_NOW = ("from recstack.clock import stack_clock; from recstack.settings import "
              "get_settings; print(stack_clock(get_settings())().isoformat())")


def _post_events(lb: str, ts: str, n: int) -> None:
    events = [{"event_id": uuid.uuid4().hex, "ts": ts, "user_id": i % 50, "item_id": i % 40,
               "event_type": "impression", "position": i % 5} for i in range(n)]
    req = urllib.request.Request(f"{lb}/events", data=json.dumps({"events": events}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 202


def test_a_second_up_keeps_the_lake_the_features_and_the_champion(
    stack: Any, urls: dict[str, str], engine: Engine
) -> None:
    # Feedback through the API, written to the lake by the sink: files a simulation would delete.
    files_before = int(_in_project_container(engine, _LAKE_FILES))
    _post_events(urls["lb"], _in_project_container(engine, _STACK_NOW), 200)
    files = _eventually(
        lambda: (n := int(_in_project_container(engine, _LAKE_FILES))) > files_before and n,
        60, "the sink's file in the lake", pause_s=2)
    before = {user: _recommend(urls["lb"], user) for user in range(10)}

    start = time.monotonic()
    stack._docker_compose.execute("down --timeout 10")  # no -v: the volumes stay
    assert engine.containers(running=True) == []
    stack._docker_compose.execute("up --wait")
    record("second_up_healthy", time.monotonic() - start)

    bootstrap_log = stack._docker_compose.execute("logs bootstrap").decode(errors="replace")
    assert "bootstrap: nothing to do" in bootstrap_log, bootstrap_log[-3000:]
    assert "will run" not in bootstrap_log, bootstrap_log[-3000:]

    def served_again() -> dict[int, dict[str, Any]] | None:
        status, _, _ = _get(f"{urls['lb']}/recommendations/0?k=5")
        return {u: _recommend(urls["lb"], u) for u in range(10)} if status == 200 else None

    after = _eventually(served_again, 120, "recommendations after the second up", pause_s=2)
    record("second_up_first_recommendation", time.monotonic() - start)
    assert int(_in_project_container(engine, _LAKE_FILES)) == files
    for user in range(10):  # the same champion and online store: the same lists
        assert after[user]["model"] == before[user]["model"], (before[user], after[user])
        assert after[user]["degraded"] == [], after[user]
        assert [i["item_id"] for i in after[user]["items"]] == \
            [i["item_id"] for i in before[user]["items"]], user
