"""Events: POST /events -> Redis Stream -> the lake sink (a real process on a real Redis).

No accepted event is lost when the sink is SIGKILLed between its lake write and its XACK and
then restarted; a dead Redis makes the API answer 503, never 202.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import redis
from fastapi.testclient import TestClient

from recstack import lake
from recstack.settings import REPO_ROOT, Settings
from serving.app import create_app
from serving.events import EVENTS_STREAM, RedisStreamSink, stream_client
from serving.sink import GROUP
from tests.conftest import free_port, need_binary, stop_process, wait_for_port
from tests.unit.serving.conftest import make_resources

pytestmark = [pytest.mark.integration, pytest.mark.redis]


def _redis(port: int, workdir: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [need_binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    wait_for_port(port, 10, proc)
    return proc


def _sink(home: Path, port: int, log: Path) -> subprocess.Popen:
    env = {
        **os.environ, "RECSTACK_HOME": str(home), "RECSTACK_REDIS__PORT": str(port),
        "RECSTACK_SINK_CONSUMER": "sink-0", "RECSTACK_SINK_ACK_DELAY_S": "0.3",
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
    redis_proc = _redis(port, tmp_path)
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
    redis_proc = _redis(port, tmp_path)
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
