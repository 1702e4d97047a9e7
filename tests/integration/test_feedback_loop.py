"""The feedback loop through HTTP: Locust's simulated users read lists, click by ground truth and
post impressions and clicks to ``POST /events``.

The API here is a small stand-in HTTP server (the real one needs the whole stack; the demo's
end-to-end test runs this same locustfile against it). It serves a fixed model's lists and
validates every posted event with the real ``Event`` contract.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from recstack.schemas import Event
from recstack.settings import Settings
from app.stack.loadtest import run_locust
from simulator.generate import simulate
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class FakeApi(ThreadingHTTPServer):
    """GET /recommendations/{user}: the top items by id parity; POST /events: validated, kept."""

    daemon_threads = True

    def __init__(self, port: int, n_items: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.n_items = n_items
        self.lock = threading.Lock()
        self.served: set[str] = set()
        self.events: list[Event] = []
        self.bad_batches = 0


class _Handler(BaseHTTPRequestHandler):
    server: FakeApi

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        k = int(dict(p.split("=") for p in query.split("&") if p).get("k", 10))
        user = int(path.rsplit("/", 1)[-1])
        request_id = uuid.uuid4().hex
        rng = np.random.default_rng(user)
        items = rng.choice(self.server.n_items, size=k, replace=False).tolist()
        with self.server.lock:
            self.server.served.add(request_id)
        self._reply(200, {
            "request_id": request_id, "user_id": user,
            "items": [{"item_id": i, "score": 1.0 / (1 + n), "source": "ann"}
                      for n, i in enumerate(items)],
            "model": {"candidates": "c1", "ranker": "r1"}, "degraded": [], "cold_start": False,
        })

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        try:
            batch = [Event.model_validate(e) for e in body["events"]]
            assert 1 <= len(batch) <= 1000
        except (ValidationError, KeyError, AssertionError) as exc:
            with self.server.lock:
                self.server.bad_batches += 1
            self._reply(422, {"detail": str(exc)[:200]})
            return
        with self.server.lock:
            self.server.events.extend(batch)
        self._reply(202, {"accepted": len(batch)})


@pytest.fixture
def api(settings: Settings) -> Iterator[FakeApi]:
    server = FakeApi(free_port(), settings.sim.n_items)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_locust_users_click_by_ground_truth_and_post_events(
    settings: Settings, api: FakeApi, tmp_path: Path
) -> None:
    simulate(settings)  # saves the world under $RECSTACK_HOME/world
    host = f"http://127.0.0.1:{api.server_address[1]}"
    result = run_locust(settings, host, users=3, spawn_rate=3, duration_s=4, out_dir=tmp_path)
    assert result.failures == 0, result.top_failures
    assert api.bad_batches == 0
    events = api.events
    impressions = [e for e in events if e.event_type == "impression"]
    clicks = [e for e in events if e.event_type == "click"]
    assert impressions and clicks, "simulated users posted no feedback"
    assert {e.request_id for e in events} <= api.served  # every event answers a served list
    assert {e.model_version for e in events} == {"candidates=c1,ranker=r1"}
    assert len({e.event_id for e in events}) == len(events)
    # Event times are simulated time: right after the simulated days.
    last_day = settings.sim.start_date.toordinal() + settings.sim.days - 1
    assert all(e.ts.date().toordinal() > last_day for e in events)

    summary = json.loads((settings.reports_dir / "online_ctr.json").read_text())
    assert summary["impressions"] == len(impressions)  # every request's events were flushed
    assert summary["clicks"] == len(clicks)
    assert 0 < summary["fraction_of_oracle"] < 1  # random lists: far below the oracle
    assert 0 < summary["ctr"] < summary["oracle_expected_ctr"]


def test_without_a_world_users_only_request(settings: Settings, api: FakeApi, tmp_path) -> None:
    # 5 s, not 2: on a loaded 2-core machine 2 s passed before the first request (0 made).
    result = run_locust(settings, f"http://127.0.0.1:{api.server_address[1]}", users=2,
                        spawn_rate=2, duration_s=5, out_dir=tmp_path)
    assert result.failures == 0 and result.requests > 0
    assert api.events == []
    assert "recstack simulate" in (tmp_path / "locust.log").read_text()
