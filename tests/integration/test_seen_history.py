"""The seen policy on a real Redis: clicks posted to the API leave the user's lists at once,
the history stays bounded, ``recstack pipeline``'s lake step writes the same history the events
path does, and a Redis that stops answering is served unfiltered and said so."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from pipelines.seen import load_seen_history
from recstack.clock import stack_clock
from recstack.history import history_key
from recstack.settings import Settings
from serving.app import create_app
from serving.events import RedisStreamSink, stream_client
from serving.onlinestore import sync_redis_client
from serving.seen import RedisSeenReader
from simulator.importer import ImportOptions, import_interactions
from tests.conftest import free_port, serve_app, start_redis, stop_process
from tests.unit.serving.conftest import make_resources

pytestmark = [pytest.mark.integration, pytest.mark.redis]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[str, Settings, redis.Redis, object]]:
    redis_port, api_port = free_port(), free_port()
    proc = start_redis(redis_port, tmp_path)
    s = Settings(home=tmp_path / "home", redis={"port": redis_port, "generate_password": False},
                 serving={"n_candidates": 100, "deadline_ms": 1000, "max_deadline_ms": 1000,
                          "candidates_budget_ms": 500, "user_features_budget_ms": 500,
                          "ranking_budget_ms": 500},
                 seen={"policy": "clicked", "max_per_user": 10})
    sync = redis.Redis(port=redis_port, socket_timeout=0.5)
    resources = make_resources(
        events=RedisStreamSink(stream_client(s.redis.url, 0.5), seen=s.seen),
        seen=RedisSeenReader(sync_redis_client(s.redis.url, 0.5), s.seen, stack_clock(s)))
    try:
        with serve_app(create_app(s, resources), api_port, "seen-api") as url:
            yield url, s, sync, proc
    finally:
        stop_process(proc)


def _events(user: int, items: list[int], kind: str, at: dt.datetime) -> dict:
    return {"events": [{"event_id": uuid.uuid4().hex, "ts": (at + dt.timedelta(seconds=i))
                        .isoformat(), "user_id": user, "item_id": item, "event_type": kind}
                       for i, item in enumerate(items)]}


def _listed(url: str, user: int, k: int = 20) -> tuple[list[int], list[str]]:
    body = httpx.get(f"{url}/recommendations/{user}", params={"k": k}, timeout=10).json()
    return [i["item_id"] for i in body["items"]], body["degraded"]


def test_clicked_items_leave_the_list_at_once_and_impressions_do_not(stack) -> None:
    url, s, sync, _ = stack
    now = stack_clock(s)()
    before, _ = _listed(url, 7)
    shown = httpx.post(f"{url}/events", json=_events(7, before[5:10], "impression", now))
    clicked = httpx.post(f"{url}/events", json=_events(7, before[:5], "click", now))
    assert (shown.status_code, clicked.status_code) == (202, 202)
    after, degraded = _listed(url, 7)
    assert degraded == [] and len(after) == 20
    assert not set(after) & set(before[:5])  # clicked: gone
    assert set(before[5:10]) <= set(after)  # only shown: still there (policy "clicked")
    assert sorted(int(m) for m in sync.zrange(history_key("clicked", 7), 0, -1)) == sorted(
        before[:5])


def test_the_history_keeps_the_newest_items_of_a_user(stack) -> None:
    url, s, sync, _ = stack
    now = stack_clock(s)() - dt.timedelta(hours=1)
    items = list(range(1000, 1030))
    assert httpx.post(f"{url}/events", json=_events(9, items, "click", now)).status_code == 202
    # An older click of a kept item does not move it back.
    old = _events(9, [1029], "click", now - dt.timedelta(days=2))
    assert httpx.post(f"{url}/events", json=old).status_code == 202
    kept = [int(m) for m in sync.zrange(history_key("clicked", 9), 0, -1)]
    assert kept == items[-10:]


def test_the_lake_step_writes_what_the_events_path_would(stack, tmp_path: Path) -> None:
    url, s, sync, _ = stack
    source = tmp_path / "u.data"
    rows = [(1, 10, 5, 880_000_000), (1, 11, 2, 880_000_100), (1, 12, 4, 880_000_200),
            (2, 10, 4, 880_000_300), (1, 10, 4, 880_000_400)]
    source.write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    import_interactions(s, source, ImportOptions(format="movielens"))
    first = load_seen_history(s, sync)
    assert (first["users"], first["items"]) == (2, 3)  # clicks: ratings >= 4
    history = sync.zrange(history_key("clicked", 1), 0, -1, withscores=True)
    assert history == [(b"12", 880_000_200.0), (b"10", 880_000_400.0)]  # newest time kept
    assert sync.zrange(history_key("clicked", 2), 0, -1) == [b"10"]
    load_seen_history(s, sync)  # again: nothing changes
    assert sync.zrange(history_key("clicked", 1), 0, -1, withscores=True) == history


def test_a_history_that_stops_answering_is_served_unfiltered_and_said_so(stack) -> None:
    url, s, sync, proc = stack
    now = stack_clock(s)()
    before, _ = _listed(url, 7)
    assert httpx.post(f"{url}/events", json=_events(7, before[:3], "click", now)).status_code \
        == 202
    stop_process(proc)
    after, degraded = _listed(url, 7)
    assert "seen_unavailable" in degraded and len(after) == 20
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'recstack_degraded_total{reason="seen_unavailable"}' in metrics
