"""Property-based fuzzing of the API from its own OpenAPI (schemathesis): no input gets a 5xx,
and every response matches the schema the app declares.

The app is served by uvicorn on a free loopback port, with in-memory fakes of the models (a
tiny faiss index: /recommendations answers 200, personalized for users 0..49, cold start for the
rest) and a real Redis behind POST /events, so valid batches really go to a stream. Bounded:
``FUZZ_EXAMPLES`` examples per operation (positive and negative data), ~20 s on 2 cores.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from recstack.settings import Settings
from serving.app import create_app
from serving.events import RedisStreamSink, stream_client
from tests.conftest import free_port, serve_app, start_redis, stop_process
from tests.unit.serving.conftest import make_resources

pytestmark = [pytest.mark.integration, pytest.mark.redis]

FUZZ_EXAMPLES = 80
STATUSES: Counter = Counter()  # (operation, status) -> cases, reported at the end


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("fuzz")
    redis_port, api_port = free_port(), free_port()
    redis_proc = start_redis(redis_port, workdir)
    app_settings = Settings(home=workdir / "home",
                            redis={"port": redis_port, "generate_password": False},
                            serving={"n_candidates": 100})
    stream = stream_client(f"redis://127.0.0.1:{redis_port}/0", 0.5)
    app = create_app(app_settings, make_resources(
        events=RedisStreamSink(stream, max_entries=app_settings.events.max_stream_entries)))
    try:
        with serve_app(app, api_port, "fuzz-api") as url:
            yield url
    finally:
        stop_process(redis_proc)
        print("\nfuzz cases by operation and status:",
              dict(sorted(STATUSES.items())), "total", sum(STATUSES.values()))


def _fuzz(api_url: str, strategy, label: str) -> None:
    """``FUZZ_EXAMPLES`` cases drawn from ``strategy``, each sent and checked (no 5xx, the
    response as the schema declares it); statuses counted under ``label``."""
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance

    @given(case=strategy)
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        response = case.call_and_validate(
            base_url=api_url, checks=[not_a_server_error, response_schema_conformance],
            timeout=10)
        STATUSES[(label, response.status_code)] += 1

    fuzz()


def _operations(url: str) -> list:
    loaded = schemathesis.openapi.from_url(f"{url}/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


# Each (operation, generation mode) is its own test: a failure names what was fuzzed.
# (schemathesis.pytest.from_fixture does not run under this pytest version.)
@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_input_gets_a_server_error_and_responses_match_the_schema(api_url, mode) -> None:
    operations = _operations(api_url)
    assert {op.label for op in operations} >= {"GET /recommendations/{user_id}", "POST /events"}
    for operation in operations:
        raw = operation.definition.raw
        if mode is schemathesis.GenerationMode.NEGATIVE and not (
                raw.get("parameters") or raw.get("requestBody")):
            continue  # nothing to make invalid (/healthz, /metrics ...)

        _fuzz(api_url, operation.as_strategy(generation_mode=mode),
              f"{mode.value} {operation.label}")
    ok = sum(n for (label, status), n in STATUSES.items()
             if label.startswith(mode.value) and "recommendations" in label and status == 200)
    if mode is schemathesis.GenerationMode.POSITIVE:
        assert ok > 0, "the fuzzer never got a recommendation: a weak test"


def _plausible_times(case):
    """The generated batch with every ``ts`` inside the window: what is left to fuzz is every
    other field, so valid-looking batches (any unicode strings, extreme ids) reach the stream."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        for event in body["events"]:
            if isinstance(event, dict):
                event["ts"] = "2026-01-05T00:00:00Z"
    return case


def test_fuzzed_batches_with_plausible_times_are_stored_or_refused_cleanly(api_url) -> None:
    events_op = next(op for op in _operations(api_url) if op.label == "POST /events")

    _fuzz(api_url, events_op.as_strategy().map(_plausible_times), "plausible-ts POST /events")
    assert STATUSES[("plausible-ts POST /events", 202)] > 0, STATUSES
