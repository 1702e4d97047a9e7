"""POST /events: validation, 202 on a stored batch, 503 when the stream is down."""

from __future__ import annotations

import asyncio

from recstack.schemas import Event
from serving.events import MAX_BATCH, RedisStreamSink, event_fields
from tests.unit.serving.conftest import FakeSink, make_resources


def _event(i: int = 0, **over) -> dict:
    e = {"event_id": f"e{i}", "ts": "2026-01-01T00:00:00Z", "user_id": 1, "item_id": 1000 + i,
         "event_type": "click", "request_id": "r1", "position": i}
    e.update(over)
    return e


def test_valid_batch_is_202_and_stored(client_for) -> None:
    sink = FakeSink()
    client = client_for(make_resources(events=sink))
    resp = client.post("/events", json={"events": [_event(0), _event(1)]})
    assert resp.status_code == 202, resp.text
    assert resp.json() == {"accepted": 2}
    assert [e.event_id for e in sink.events] == ["e0", "e1"]
    assert "recstack_events_accepted_total 2.0" in client.get("/metrics").text


def test_bad_payloads_are_422_with_readable_messages(client_for) -> None:
    sink = FakeSink()
    client = client_for(make_resources(events=sink))
    cases = {
        "not json": "the body is not valid JSON",
        '{"events": []}': "events",
        '{"events": [{"event_id": "x"}]}': "is required",
        '{"nope": 1}': "events is required",
    }
    for body, fragment in cases.items():
        resp = client.post("/events", content=body, headers={"content-type": "application/json"})
        assert resp.status_code == 422, body
        assert fragment in resp.json()["detail"], (body, resp.json())
    bad_type = client.post(
        "/events", json={"events": [_event(0, event_type="purchase"), _event(1)]}
    )
    assert bad_type.status_code == 422
    assert "events.0.event_type" in bad_type.json()["detail"]
    negative = client.post("/events", json={"events": [_event(0, user_id=-1)]})
    assert negative.status_code == 422 and "user_id" in negative.json()["detail"]
    too_many = client.post("/events", json={"events": [_event(i) for i in range(MAX_BATCH + 1)]})
    assert too_many.status_code == 422 and "1000" in too_many.json()["detail"]
    assert sink.events == []  # nothing from a rejected batch is stored


def test_stream_failure_is_503_with_retry_after(client_for) -> None:
    client = client_for(make_resources(events=FakeSink(fail=True)))
    resp = client.post("/events", json={"events": [_event()]})
    assert resp.status_code == 503
    assert resp.headers["retry-after"] == "1"
    assert resp.json()["error"] == "stream_unavailable"


class _Pipe:
    def __init__(self, fail: bool) -> None:
        self.fail, self.added = fail, []

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return False

    def xadd(self, stream, fields):
        self.added.append((stream, fields))

    async def execute(self):
        if self.fail:
            raise ConnectionError("Connection refused")
        return [b"1-0"] * len(self.added)


class _Client:
    def __init__(self, fail: bool = False) -> None:
        self.pipe = _Pipe(fail)

    def pipeline(self, transaction: bool = True):
        assert transaction is False
        return self.pipe


def test_redis_stream_sink_pipelines_xadd_and_round_trips() -> None:
    client = _Client()
    event = Event.model_validate(_event(3, request_id=None))
    assert asyncio.run(RedisStreamSink(client).append([event, event])) == 2
    stream, fields = client.pipe.added[0]
    assert stream == "recstack:events"
    assert "request_id" not in fields and all(isinstance(v, str) for v in fields.values())
    assert Event.model_validate(fields) == event == Event.model_validate(event_fields(event))


def test_redis_stream_sink_failure_raises_stream_unavailable() -> None:
    import pytest

    from serving.errors import StreamUnavailable

    with pytest.raises(StreamUnavailable):
        asyncio.run(RedisStreamSink(_Client(fail=True)).append([Event.model_validate(_event())]))


def test_a_batch_full_of_errors_gets_a_short_message(client_for) -> None:
    resp = client_for().post("/events", json={"events": [{"event_id": ""}] * 500})
    assert resp.status_code == 422
    body = resp.json()
    assert len(body["errors"]) == 10 and body["detail"].endswith("; ...")
    assert len(resp.content) < 5000
