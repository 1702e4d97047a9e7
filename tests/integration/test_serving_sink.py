"""Events: POST /events -> Redis Stream -> the lake sink (a real process on a real Redis).

No accepted event is lost when the sink is SIGKILLed between its lake write and its XACK and
then restarted; a dead Redis makes the API answer 503, never 202.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient

from recstack import lake
from recstack.settings import REPO_ROOT, Settings
from serving.app import create_app
from serving.events import EVENTS_STREAM, RedisStreamSink, stream_client
from serving.sink import GROUP
from tests.conftest import free_port, start_redis, stop_process
from tests.unit.serving.conftest import make_resources

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _sink(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ, "RECSTACK_HOME": str(home), "RECSTACK_REDIS__PORT": str(port),
        "RECSTACK_SINK__CONSUMER": "sink-0", "RECSTACK_SINK__ACK_DELAY_S": "0.3",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "serving.sink"], env=env, cwd=REPO_ROOT,
        stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )


def _pending(r: redis.Redis) -> int:
    """Entries delivered to the group but not acknowledged (0 before the sink made the group)."""
    try:
        return int(r.xpending(EVENTS_STREAM, GROUP)["pending"])
    except redis.ResponseError:  # NOGROUP: the sink has not started yet
        return 0


def _batch(start: int, n: int) -> dict:
    ts = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC).isoformat()
    return {"events": [
        {"event_id": f"ev-{i}", "ts": ts, "user_id": i % 7, "item_id": 100 + i % 11,
         "event_type": "click" if i % 5 == 0 else "impression", "request_id": "r", "position": 0}
        for i in range(start, start + n)
    ]}


def _client(port: int) -> TestClient:
    stream = stream_client(f"redis://127.0.0.1:{port}/0", 0.2)
    app = create_app(Settings(), make_resources(events=RedisStreamSink(stream)))
    client = TestClient(app)
    client.__enter__()
    return client


def test_no_accepted_event_is_lost_across_a_sink_crash(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    redis_proc = start_redis(port, tmp_path)
    sink = _sink(home, port, tmp_path / "sink.log")
    client = _client(port)
    r = redis.Redis(port=port)
    accepted = 0
    try:
        for b in range(6):
            resp = client.post("/events", json=_batch(b * 50, 50))
            assert resp.status_code == 202, resp.text
            accepted += resp.json()["accepted"]
            time.sleep(0.1)
        # Kill the sink while a batch is written but not yet acknowledged.
        deadline = time.monotonic() + 20
        while not _pending(r) or not lake.partition_files(
                home / "lake"):
            assert time.monotonic() < deadline, "the sink never wrote a batch"
            time.sleep(0.02)
        os.killpg(sink.pid, signal.SIGKILL)
        sink.wait()
        assert _pending(r) > 0  # written-but-unacked entries
        for b in range(6, 10):  # the API keeps accepting while the sink is down
            resp = client.post("/events", json=_batch(b * 50, 50))
            assert resp.status_code == 202
            accepted += resp.json()["accepted"]

        sink = _sink(home, port, tmp_path / "sink.log")
        deadline = time.monotonic() + 30
        while True:
            pending = _pending(r)
            lag = r.xinfo_groups(EVENTS_STREAM)[0]["lag"]
            if pending == 0 and lag == 0:
                break
            assert time.monotonic() < deadline, f"sink did not catch up: {pending=} {lag=}"
            time.sleep(0.2)
        events = lake.read_events(home / "lake")
        assert accepted == 500
        assert events.num_rows == accepted
        assert set(events["event_id"].to_pylist()) == {f"ev-{i}" for i in range(500)}
        # Re-delivered batches rewrote their own files: no duplicate rows even before de-dup.
        raw = sum(pq.read_metadata(f).num_rows for f in lake.partition_files(home / "lake"))
        assert raw == accepted
    finally:
        stop_process(sink)
        client.__exit__(None, None, None)
        stop_process(redis_proc)


def test_events_are_503_never_202_when_redis_is_down(tmp_path: Path) -> None:
    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    client = _client(port)
    try:
        assert client.post("/events", json=_batch(0, 3)).status_code == 202
        stop_process(redis_proc)
        t = time.perf_counter()
        resp = client.post("/events", json=_batch(3, 3))
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1"
        assert resp.json()["error"] == "stream_unavailable"
        assert time.perf_counter() - t < 1.0
        bad = client.post("/events", json={"events": [{"event_id": "x"}]})
        assert bad.status_code == 422 and "events.0.ts is required" in bad.json()["detail"]
    finally:
        client.__exit__(None, None, None)
        stop_process(redis_proc)


def _sink_settings(home: Path, port: int, **events: str) -> Settings:
    return Settings(home=home, redis={"port": port, "generate_password": False},
                    events=events)


def _good_entry(i: int) -> dict[str, str]:
    return {"event_id": f"good-{i}", "ts": "2026-01-04T10:00:00+00:00", "user_id": str(i),
            "item_id": "100", "event_type": "impression", "position": "0"}


# Written straight into the stream (no API in between): what a buggy or hostile producer with
# access to Redis could leave there. Each is (entry, the dead-letter reason's prefix).
HOSTILE = [
    ({b"event_id": b"\xff\xfe garbage", b"ts": b"\x00\x01"}, "not_utf8"),
    ({**_good_entry(0), "ts": "not a time"}, "invalid: ts"),
    ({**_good_entry(0), "ts": "0170-10-25T00:00:00+00:00"}, "implausible: ts"),
    ({**_good_entry(0), "ts": "4324-11-02T00:00:00+00:00"}, "implausible: ts"),
    ({**_good_entry(0), "user_id": str(2**63)}, "invalid: user_id"),
    ({**_good_entry(0), "item_id": "-5"}, "invalid: item_id"),
    ({**_good_entry(0), "event_type": "purchase"}, "invalid: event_type"),
    ({**_good_entry(0), "surprise": "field"}, "invalid: surprise"),
    ({"only": "junk"}, "invalid: "),
]


def test_hostile_stream_entries_go_to_the_dead_letter_and_the_sink_keeps_running(
        tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    redis_proc = start_redis(port, tmp_path)
    sink = _sink(home, port, tmp_path / "sink.log")
    r = redis.Redis(port=port)
    try:
        for round_ in range(2):  # hostile entries between good ones, twice
            for i, (entry, _) in enumerate(HOSTILE):
                r.xadd(EVENTS_STREAM, _good_entry(round_ * 100 + i))
                r.xadd(EVENTS_STREAM, entry)
        n_good, n_bad = 2 * len(HOSTILE), 2 * len(HOSTILE)
        deadline = time.monotonic() + 30
        dead = home / "sink" / "dead_letter.jsonl"
        while not (dead.exists() and len(dead.read_text().splitlines()) >= n_bad
                   and _pending(r) == 0):
            assert sink.poll() is None, (tmp_path / "sink.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the sink did not handle the hostile entries"
            time.sleep(0.2)
        time.sleep(1.5)  # a crash-looping sink would be dead by now
        assert sink.poll() is None, (tmp_path / "sink.log").read_text()[-2000:]
        events = lake.read_events(home / "lake")
        assert sorted(events["event_id"].to_pylist()) == sorted(
            f"good-{round_ * 100 + i}" for round_ in range(2) for i in range(len(HOSTILE)))
        assert events.num_rows == n_good
        import orjson

        rows = [orjson.loads(line) for line in dead.read_text().splitlines()]
        assert len(rows) == n_bad
        for row, (_, reason) in zip(rows, HOSTILE * 2, strict=True):
            assert row["error"].startswith(reason), (row, reason)
        assert int(r.xpending(EVENTS_STREAM, GROUP)["pending"]) == 0  # all acknowledged
    finally:
        stop_process(sink)
        stop_process(redis_proc)


@contextlib.contextmanager
def _sink_on_own_redis(tmp_path: Path, retention: str) -> Iterator[tuple[redis.Redis, Any]]:
    """A private redis-server and an in-process sink with ``events.stream_retention``
    ``retention`` reading it: (a client, the sink); both stopped afterwards."""
    from serving.sink import sink_for

    port = free_port()
    redis_proc = start_redis(port, tmp_path)
    sink = sink_for(_sink_settings(tmp_path / "home", port, stream_retention=retention),
                    "sink-0", block_ms=50)
    try:
        sink.ensure_group()
        yield redis.Redis(port=port), sink
    finally:
        sink.client.close()
        stop_process(redis_proc)


def test_the_stream_is_trimmed_once_acknowledged_never_before(tmp_path: Path) -> None:
    """Acknowledged entries leave the stream (no retention here); entries another group has
    read but not acknowledged, and entries no one has read yet, stay."""
    with _sink_on_own_redis(tmp_path, "PT0S") as (r, sink):
        for i in range(300):
            r.xadd(EVENTS_STREAM, _good_entry(i))
        while sink.run_once():
            pass
        assert r.xlen(EVENTS_STREAM) <= 1, "acknowledged entries stayed in the stream"

        # A second group (a slower reader) holds 20 entries pending: they and all later stay.
        r.xgroup_create(EVENTS_STREAM, "slow", id="$")
        ids = [r.xadd(EVENTS_STREAM, _good_entry(1000 + i)) for i in range(50)]
        r.xreadgroup("slow", "c", {EVENTS_STREAM: ">"}, count=20)
        while sink.run_once():
            pass
        kept = [entry_id for entry_id, _ in r.xrange(EVENTS_STREAM)]
        assert kept[: len(ids)] == ids, "entries another group still needs were trimmed"
        r.xack(EVENTS_STREAM, "slow", *ids[:20])
        r.xadd(EVENTS_STREAM, _good_entry(2000))
        while sink.run_once():
            pass
        # Kept from the slow group's last delivered entry (MINID keeps ids >= it) onwards.
        assert r.xrange(EVENTS_STREAM)[0][0] == ids[19], "trimmed past the slow group"
        assert sink.stats.trimmed >= 300
        assert lake.read_events(tmp_path / "home" / "lake").num_rows == 351


def test_acknowledged_entries_are_kept_for_the_retention(tmp_path: Path) -> None:
    with _sink_on_own_redis(tmp_path, "PT1H") as (r, sink):
        for i in range(30):
            r.xadd(EVENTS_STREAM, _good_entry(i))
        while sink.run_once():
            pass
        assert r.xlen(EVENTS_STREAM) == 30  # the monitor reads them with XRANGE for an hour
