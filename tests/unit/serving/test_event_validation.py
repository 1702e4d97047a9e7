"""Hostile input at the API edge: ids past int64, implausible times, oversized bodies, a full
stream. Each is a 4xx/503 naming what is wrong, and nothing of a rejected batch is stored."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from recstack.clock import stack_clock
from recstack.schemas import MAX_ID, Event, event_problems
from recstack.settings import Settings
from serving.errors import StreamBacklogFull
from serving.events import EventRules, RedisStreamSink
from tests.unit.serving.conftest import FakeSink, make_resources

UTC = dt.UTC
NOW = dt.datetime(2026, 1, 5, tzinfo=UTC)
DAY = dt.timedelta(days=1)


def _event(i: int = 0, **over) -> dict:
    e = {"event_id": f"e{i}", "ts": "2026-01-02T00:00:00Z", "user_id": 1, "item_id": 1000 + i,
         "event_type": "impression", "position": i}
    e.update(over)
    return e


def test_path_ids_past_int64_are_422_not_500(client_for) -> None:
    client = client_for()
    resp = client.get("/recommendations/3645594372138822027497271932420620288")
    assert resp.status_code == 422, resp.text
    assert "user_id" in resp.json()["detail"]
    assert client.get(f"/recommendations/{MAX_ID + 1}").status_code == 422
    assert client.get(f"/recommendations/{MAX_ID}").status_code == 200  # a (cold) user


def test_query_and_header_values_out_of_range_are_422(client_for) -> None:
    client = client_for()
    for url, headers in [("/recommendations/1?k=99999999999999999999999", {}),
                         ("/recommendations/1?k=-1", {}),
                         ("/recommendations/1", {"x-deadline-ms": "nan"}),
                         ("/recommendations/1", {"x-deadline-ms": "1e400"})]:
        resp = client.get(url, headers=headers)
        assert resp.status_code == 422, (url, headers, resp.text)


@pytest.mark.parametrize("ts", ["0170-10-25T00:00:00Z", "1970-01-01T00:00:00Z",
                                "2000-06-01T00:00:00Z", "4248-03-01T00:00:00Z", 0])
def test_implausible_timestamps_are_422_naming_index_and_field(client_for, ts) -> None:
    sink = FakeSink()
    client = client_for(make_resources(events=sink))
    resp = client.post("/events", json={"events": [_event(0), _event(1), _event(2, ts=ts)]})
    assert resp.status_code == 422, resp.text
    assert resp.json()["detail"].startswith("events.2.ts: ")
    assert sink.events == []  # nothing of the batch
    assert 'recstack_events_rejected_total{reason="implausible"} 1.0' in client.get(
        "/metrics").text


@pytest.mark.parametrize("ts", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_times_that_leave_the_calendar_in_utc_are_422_not_500(client_for, ts) -> None:
    # Found by the API fuzzer: year 1 at +01:00 is before datetime.min in UTC.
    sink = FakeSink()
    client = client_for(make_resources(events=sink))
    resp = client.post("/events", json={"events": [_event(0, ts=ts)]})
    assert resp.status_code == 422, resp.text
    assert "events.0.ts" in resp.json()["detail"] and "UTC" in resp.json()["detail"]
    assert sink.events == []


def test_ids_past_int64_in_events_are_422_naming_the_field(client_for) -> None:
    sink = FakeSink()
    client = client_for(make_resources(events=sink))
    for field in ("user_id", "item_id", "position"):
        resp = client.post("/events", json={"events": [_event(0), _event(1, **{field: 2**64})]})
        assert resp.status_code == 422, resp.text
        assert f"events.1.{field}" in resp.json()["detail"]
    long_id = client.post("/events", json={"events": [_event(0, request_id="r" * 129)]})
    assert long_id.status_code == 422 and "events.0.request_id" in long_id.json()["detail"]
    assert sink.events == []
    assert 'recstack_events_rejected_total{reason="invalid"} 4.0' in client.get("/metrics").text


def test_the_simulators_events_are_accepted(client_for) -> None:
    """What the stack posts itself: the load test at the world's end, the experiments days
    after it, tests at sim.start_date (Settings() defaults: 2026-01-01 + 4 days)."""
    sink = FakeSink()
    client = client_for(make_resources(events=sink))
    times = ["2026-01-01T00:00:00Z", "2026-01-05T00:00:01+00:00", "2026-01-14T23:00:00",
             "2026-01-05T01:00:00+01:00"]
    batch = [_event(i, ts=t) for i, t in enumerate(times)]
    assert client.post("/events", json={"events": batch}).status_code == 202
    assert [e.ts.tzinfo for e in sink.events] == [UTC] * 4


def test_bodies_over_the_limit_are_413(serving_settings, client_for) -> None:
    sink = FakeSink()
    client = client_for(make_resources(events=sink))
    limit = serving_settings.events.max_body_bytes
    big = b'{"events": [' + b" " * limit + b"]}"
    resp = client.post("/events", content=big, headers={"content-type": "application/json"})
    assert resp.status_code == 413 and "bytes" in resp.json()["detail"]

    def chunked():  # no Content-Length: the streamed body is counted
        yield b'{"events": ['
        for _ in range(limit // 65536 + 2):
            yield b" " * 65536
        yield b"]}"

    resp = client.post("/events", content=chunked(), headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert sink.events == []
    ok = client.post("/events", json={"events": [_event(0)]})  # small bodies still pass
    assert ok.status_code == 202
    assert 'recstack_events_rejected_total{reason="body_too_large"} 2.0' in client.get(
        "/metrics").text


class _FullStream:
    def __init__(self, length: int) -> None:
        self.length = length

    async def xlen(self, stream: str) -> int:
        return self.length

    def pipeline(self, transaction: bool = True):
        raise AssertionError("a full stream must not be written")


def test_a_full_stream_refuses_with_503_and_retry_after(client_for) -> None:
    client = client_for(make_resources(events=RedisStreamSink(_FullStream(100), max_entries=100)))
    resp = client.post("/events", json={"events": [_event(0)]})
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "backlog_full" and int(resp.headers["retry-after"]) >= 1
    with pytest.raises(StreamBacklogFull):
        asyncio.run(RedisStreamSink(_FullStream(95), max_entries=100).append(
            [Event.model_validate(_event(i)) for i in range(6)]))


def test_event_problems_is_the_one_rule_set() -> None:
    ok = Event.model_validate(_event())
    assert event_problems(ok, NOW, 30 * DAY, 30 * DAY) == []
    old = ok.model_copy(update={"ts": NOW - 31 * DAY})
    ahead = ok.model_copy(update={"ts": NOW + 31 * DAY})
    assert event_problems(old, NOW, 30 * DAY, 30 * DAY)[0].startswith("ts: ")
    assert "after" in event_problems(ahead, NOW, 30 * DAY, 30 * DAY)[0]
    assert event_problems(ahead, NOW, 30 * DAY, 32 * DAY) == []
    constructed = Event.model_construct(**{**ok.model_dump(), "user_id": 2**63})
    assert event_problems(constructed, NOW, 30 * DAY, 30 * DAY) == [
        f"user_id: {2**63} is outside 0..{MAX_ID}"]


def test_the_stack_clock_is_the_simulated_calendars_end_or_the_wall() -> None:
    sim = stack_clock(Settings(sim={"start_date": "2026-01-01", "days": 4}))()
    assert NOW <= sim < NOW + dt.timedelta(minutes=1)
    wall = stack_clock(Settings(events={"clock": "wall"}))()
    assert abs(wall - dt.datetime.now(UTC)) < dt.timedelta(minutes=1)
    rules = EventRules.of(Settings(events={"clock_skew": "PT1H", "allowed_lateness": "P1D"}))
    assert rules.skew == dt.timedelta(hours=1) and rules.lateness == DAY
