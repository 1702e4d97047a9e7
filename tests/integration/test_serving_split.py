"""Split mode for real: the API, the candidate service and the ranking service as separate uvicorn
processes talking HTTP, a real Redis behind the user features. Every fallback path answers 200
with the right ``degraded`` reason and no 5xx; the breaker opens and recovers; shedding is fast.

The models are tiny in-memory ones (tests/unit/serving/conftest.py); the app factories below
build the same apps as ``serving.app`` around them, so no MLflow is needed.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from recstack.schemas import USER_FEATURE_VIEW, USER_FEATURES
from recstack.settings import REPO_ROOT, Settings
from tests.conftest import free_port, need_binary, stop_process, wait_for_port

pytestmark = [pytest.mark.integration, pytest.mark.redis]


# ---- app factories, run by uvicorn in the child processes -------------------------------------

def _settings() -> Settings:
    return Settings(serving={"n_candidates": 100, "k_max": 50})


def candidates_app():  # type: ignore[no-untyped-def]
    from serving.app import create_app
    from tests.unit.serving.conftest import make_resources

    return create_app(_settings(), make_resources(), role="candidates")


def ranking_app():  # type: ignore[no-untyped-def]
    from serving.app import create_app
    from serving.breaker import CircuitBreaker
    from serving.features import USER_KEY
    from serving.metrics import ServingMetrics
    from serving.onlinestore import RedisFeatureReader, sync_redis_client
    from serving.resources import DelayedRanker
    from tests.unit.serving.conftest import FakeRanker, make_resources

    delay = float(os.environ.get("TEST_RANK_DELAY_MS", "0"))
    ranker = DelayedRanker(FakeRanker(), delay) if delay else FakeRanker()
    client = sync_redis_client(f"redis://127.0.0.1:{os.environ['TEST_REDIS_PORT']}/0", 0.05)
    metrics = ServingMetrics()
    breaker = CircuitBreaker(2, 0.5, on_change=metrics.breaker_changed)
    users = RedisFeatureReader(client, "p", USER_FEATURE_VIEW, USER_FEATURES, USER_KEY, breaker)
    app = create_app(_settings(), make_resources(ranker=ranker, user_features=users),
                     role="ranking")
    app.state.metrics = metrics  # the breaker reports to this app's /metrics
    return app


def api_app():  # type: ignore[no-untyped-def]
    from serving.app import create_app
    from serving.remote import HttpCandidateSource, HttpScorer, http_client
    from tests.unit.serving.conftest import make_resources, tiny_model

    resources = make_resources(
        candidates=HttpCandidateSource(http_client(os.environ["TEST_CANDIDATES_URL"], 8),
                                       tiny_model().popular),
        scorer=HttpScorer(http_client(os.environ["TEST_RANKING_URL"], 8)),
        ranker=None, user_features=None, item_features=None,
    )
    # Generous candidate budget: this test is about the ranking stage, on 2 shared cores.
    base = _settings()
    serving = base.serving.model_copy(update={
        "max_in_flight": int(os.environ.get("TEST_MAX_IN_FLIGHT", "16")),
        "candidates_budget_ms": 200, "ranking_budget_ms": 30})
    return create_app(base.model_copy(update={"serving": serving}), resources)


# ---- fixtures ----------------------------------------------------------------------------------

class Proc:
    """One uvicorn (or redis-server) child on a fixed port, restartable."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.argv, self.port, self.env, self.log = argv, port, env, log
        self.proc: subprocess.Popen | None = None

    def start(self, **extra_env: str) -> None:
        self.proc = subprocess.Popen(
            self.argv, env={**os.environ, **self.env, **extra_env}, cwd=REPO_ROOT,
            stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for_port(self.port, 30, self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def _uvicorn(factory: str, port: int, env: dict[str, str], log: Path) -> Proc:
    argv = [sys.executable, "-m", "uvicorn", f"tests.integration.test_serving_split:{factory}",
            "--factory", "--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    return Proc(argv, port, env, log)


@pytest.fixture
def split_stack(tmp_path: Path) -> Iterator[dict[str, Proc]]:
    redis_port, cand_port, rank_port, api_port = (free_port() for _ in range(4))
    env = {
        "TEST_REDIS_PORT": str(redis_port),
        "TEST_CANDIDATES_URL": f"http://127.0.0.1:{cand_port}",
        "TEST_RANKING_URL": f"http://127.0.0.1:{rank_port}",
        "TEST_MAX_IN_FLIGHT": "2",
    }
    procs = {
        "redis": Proc([need_binary("redis-server"), "--port", str(redis_port), "--bind",
                       "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                      redis_port, {}, tmp_path / "redis.log"),
        "candidates": _uvicorn("candidates_app", cand_port, env, tmp_path / "candidates.log"),
        "ranking": _uvicorn("ranking_app", rank_port, env, tmp_path / "ranking.log"),
        "api": _uvicorn("api_app", api_port, env, tmp_path / "api.log"),
    }
    try:
        for proc in procs.values():
            proc.start()
        _seed_user_features(procs["redis"])
        yield procs
    finally:
        for proc in procs.values():
            proc.stop()


def _seed_user_features(redis: Proc, user: int = 4) -> None:
    """Write the test user's features the way Feast does (project "p"): a known user without
    features would be ``user_features_missing`` (an empty or lost online store)."""
    import struct

    import redis as redis_py

    from serving.features import USER_KEY
    from recstack.feastlayout import entity_key, field_key

    values = {field_key(USER_FEATURE_VIEW, n): b"\x29" + struct.pack("<d", float(i + 1))
              for i, n in enumerate(USER_FEATURES)}
    with redis_py.Redis(port=redis.port) as client:
        client.hset(entity_key(USER_KEY, user, "p"), mapping=values)


def _get(api: Proc, user: int = 4, k: int = 5) -> tuple[int, dict]:
    resp = httpx.get(f"http://127.0.0.1:{api.port}/recommendations/{user}", params={"k": k},
                     timeout=5, trust_env=False)
    return resp.status_code, resp.json()


def _warm(api: Proc, until=lambda body: body["degraded"] == []) -> None:  # type: ignore[no-untyped-def]
    """First requests open connections and warm lazy imports; they may miss their budgets."""
    deadline = time.monotonic() + 10
    while True:
        code, body = _get(api)
        assert code == 200, body
        if until(body):
            return
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def _metrics(proc: Proc) -> str:
    return httpx.get(f"http://127.0.0.1:{proc.port}/metrics", timeout=5, trust_env=False).text


def test_every_fallback_path_answers_200_with_its_reason(split_stack: dict[str, Proc]) -> None:
    api = split_stack["api"]
    _warm(api)
    code, body = _get(api)
    assert code == 200 and body["degraded"] == [], body
    assert body["model"] == {"candidates": "3", "ranker": "7"}
    ids = [i["item_id"] for i in body["items"]]
    assert ids == sorted(ids, reverse=True)  # the fake ranker's order: ranked remotely

    # Redis down: the ranking service ranks without user features; its breaker opens.
    split_stack["redis"].stop()
    for _ in range(4):
        code, body = _get(api)
        assert code == 200 and body["degraded"] == ["user_features_unavailable"], body
    assert 'recstack_breaker_state{dependency="redis"} 2.0' in _metrics(split_stack["ranking"])
    t = time.perf_counter()
    assert _get(api)[0] == 200
    assert time.perf_counter() - t < 0.5  # open: no waiting on Redis
    # Redis back: the breaker's probe succeeds after the cooldown and it closes.
    split_stack["redis"].start()
    _seed_user_features(split_stack["redis"])  # no persistence here: the restart lost them
    time.sleep(0.6)
    deadline = time.monotonic() + 5
    while _get(api)[1]["degraded"]:
        assert time.monotonic() < deadline, "the breaker did not recover"
        time.sleep(0.2)
    assert 'recstack_breaker_state{dependency="redis"} 0.0' in _metrics(split_stack["ranking"])

    # Ranking service down: candidate order.
    split_stack["ranking"].stop()
    code, body = _get(api)
    assert code == 200 and body["degraded"] == ["ranker_unavailable"], body
    assert len(body["items"]) == 5

    # Ranking slower (300 ms) than its budget (30 ms): candidate order, without the long wait.
    split_stack["ranking"].start(TEST_RANK_DELAY_MS="300")
    _warm(api, until=lambda body: body["degraded"] == ["ranker_late"])
    t = time.perf_counter()
    code, body = _get(api)
    assert code == 200 and body["degraded"] == ["ranker_late"], body
    assert time.perf_counter() - t < 0.25

    # Candidate service down: the popular list.
    split_stack["candidates"].stop()
    code, body = _get(api)
    assert code == 200 and body["degraded"] == ["candidates_unavailable"], body
    assert [i["item_id"] for i in body["items"]] == [1000, 1001, 1002, 1003, 1004]
    text = _metrics(api)
    for reason in ("ranker_unavailable", "ranker_late", "candidates_unavailable"):
        assert f'recstack_degraded_total{{reason="{reason}"}}' in text
    assert 'code="5' not in text  # no 5xx at all


def test_overload_is_shed_with_a_fast_503(split_stack: dict[str, Proc]) -> None:
    split_stack["ranking"].stop()
    split_stack["ranking"].start(TEST_RANK_DELAY_MS="400")  # requests hold their slot ~30 ms+
    api = split_stack["api"]
    url = f"http://127.0.0.1:{api.port}/recommendations/4"

    # One shared keep-alive client: a fresh httpx client per call costs more than the 503 itself.
    client = httpx.Client(trust_env=False, timeout=5,
                          limits=httpx.Limits(max_connections=12, max_keepalive_connections=12))

    def one(_: int) -> tuple[int, float, str | None]:
        t = time.perf_counter()
        resp = client.get(url)
        return resp.status_code, time.perf_counter() - t, resp.headers.get("retry-after")

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        list(pool.map(one, range(12)))  # open the connections
        results = list(pool.map(one, range(48)))
    client.close()
    shed = [r for r in results if r[0] == 503]
    assert shed, "nothing was shed at max_in_flight=2"
    assert {r[0] for r in results} <= {200, 503}
    assert all(r[2] == "1" for r in shed)
    shed_times = sorted(r[1] for r in shed)
    assert shed_times[len(shed_times) // 2] < 0.05, shed_times  # median: no queueing, no work
    assert "recstack_shed_requests_total" in _metrics(api)
