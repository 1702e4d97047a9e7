"""Soak: events posted continuously through the API's events path (uvicorn on loopback) into a
real Redis, moved by a real sink process, leave Redis's memory flat - the sink trims what it
acknowledged - and every accepted event is in the lake exactly once.

Three minutes of posting at ~1,000 events/s (``SOAK_S``, ``RATE``); the stream keeps acknowledged entries
``RETENTION`` (5 s here, 2 min by default) for the monitor.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import redis

from recstack import lake
from recstack.settings import REPO_ROOT, Settings
from serving.app import create_app
from serving.events import EVENTS_STREAM, RedisStreamSink, stream_client
from serving.sink import GROUP
from tests.conftest import free_port, serve_app, start_redis, stop_process
from tests.unit.serving.conftest import make_resources

pytestmark = [pytest.mark.integration, pytest.mark.redis, pytest.mark.slow]

SOAK_S = 180.0
RATE = 1000  # events per second offered
BATCH = 200
RETENTION = "PT5S"


def _batch(start: int) -> dict:
    ts = dt.datetime(2026, 1, 5, 12, tzinfo=dt.UTC).isoformat()
    return {"events": [
        {"event_id": f"soak-{i}", "ts": ts, "user_id": i % 3000, "item_id": i % 2000,
         "event_type": "impression", "request_id": f"r{i // 10}", "position": i % 10,
         "model_version": "candidates=3,ranker=7"}
        for i in range(start, start + BATCH)]}


def _post_steadily(base_url: str, r: redis.Redis) -> tuple[list[tuple[float, int, int]], int, int]:
    """POST ``BATCH``-event batches at ``RATE`` for ``SOAK_S``, sampling Redis every second:
    the samples (t, used_memory, stream length), events accepted, events refused (503)."""
    memory: list[tuple[float, int, int]] = []
    accepted, refused, n = 0, 0, 0
    with httpx.Client(base_url=base_url, timeout=10) as client:
        t0 = time.monotonic()
        next_sample = t0
        while (now := time.monotonic()) - t0 < SOAK_S:
            if now >= next_sample:
                memory.append((now - t0, int(r.info("memory")["used_memory"]),
                               int(r.xlen(EVENTS_STREAM))))
                next_sample += 1.0
            resp = client.post("/events", json=_batch(n))
            if resp.status_code == 202:
                accepted += resp.json()["accepted"]
            else:
                assert resp.status_code == 503, resp.text  # backlog/stream: never 5xx else
                refused += BATCH
            n += BATCH
            time.sleep(max(0.0, t0 + n / RATE - time.monotonic()))
    return memory, accepted, refused


def _wait_drained(r: redis.Redis, sink: subprocess.Popen, sink_log: Path) -> None:
    """Until the sink's group has read the stream's last entry and acknowledged everything."""
    deadline = time.monotonic() + 60
    last = r.xrevrange(EVENTS_STREAM, count=1)[0][0]
    while True:
        group = next(g for g in r.xinfo_groups(EVENTS_STREAM) if g["name"] == GROUP.encode())
        if int(group["pending"]) == 0 and group["last-delivered-id"] == last:
            return
        assert sink.poll() is None, sink_log.read_text()[-2000:]
        assert time.monotonic() < deadline, "the sink did not catch up"
        time.sleep(0.5)


def test_redis_memory_stays_flat_and_every_accepted_event_lands_once(tmp_path: Path) -> None:
    redis_port, api_port = free_port(), free_port()
    home = tmp_path / "home"
    redis_proc = start_redis(redis_port, tmp_path)
    env = {**os.environ, "RECSTACK_HOME": str(home), "RECSTACK_REDIS__PORT": str(redis_port),
           "RECSTACK_REDIS__GENERATE_PASSWORD": "false", "RECSTACK_SINK__CONSUMER": "soak",
           "RECSTACK_EVENTS__STREAM_RETENTION": RETENTION}
    sink = subprocess.Popen([sys.executable, "-m", "serving.sink"], env=env, cwd=REPO_ROOT,
                            stdout=(tmp_path / "sink.log").open("ab"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    app_settings = Settings(home=home, redis={"port": redis_port, "generate_password": False})
    stream = stream_client(f"redis://127.0.0.1:{redis_port}/0", 0.5)
    app = create_app(app_settings, make_resources(events=RedisStreamSink(
        stream, max_entries=app_settings.events.max_stream_entries)))
    r = redis.Redis(port=redis_port)
    try:
        with serve_app(app, api_port, "soak-api") as base_url:
            memory, accepted, refused = _post_steadily(base_url, r)
        _wait_drained(r, sink, tmp_path / "sink.log")
    finally:
        stop_process(sink)
        mem_end = int(r.info("memory")["used_memory"])
        stop_process(redis_proc)

    third = len(memory) // 3
    first = max(m for _, m, _ in memory[:third])
    final = max(m for _, m, _ in memory[-third:])
    peak_len = max(x for _, _, x in memory)
    print(f"\nsoak: {accepted} accepted, {refused} refused in {SOAK_S:.0f}s; used_memory max "
          f"first third {first / 1e6:.2f} MB, last third {final / 1e6:.2f} MB, end "
          f"{mem_end / 1e6:.2f} MB; stream length peak {peak_len}")
    assert accepted >= 0.9 * SOAK_S * RATE and refused == 0
    # Flat: the last third's peak within 1.5x the first third's (the stream reaches its
    # retention-sized steady state within the first third); untrimmed, 180k entries would grow
    # it steadily (~30 MB).
    assert final <= 1.5 * first, memory
    assert peak_len <= 3 * RATE * 5 + 2 * BATCH * 5, peak_len  # ~ the retention's traffic
    events = lake.read_events(home / "lake")
    assert events.num_rows == accepted
    raw = sum(pq.read_metadata(f).num_rows for f in lake.partition_files(home / "lake"))
    assert raw == accepted  # exactly once, even before the readers' de-dup
    assert events["event_id"].to_pylist().__len__() == len(set(events["event_id"].to_pylist()))
