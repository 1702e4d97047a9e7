"""The drift experiment's traffic: the same simulated users at the same moments on every arm,
figures against the oracle, events only from the live arm (a stand-in API over HTTP)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from app.experiments.drift.traffic import Arm, play_hour, post_events
from recstack.schemas import Event
from recstack.settings import Settings
from simulator.world import World
from tests.conftest import free_port

pytestmark = [pytest.mark.integration]


class _Api(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, offset: int) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.offset = offset
        self.users: list[int] = []
        self.events: list[Event] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    server: _Api

    def log_message(self, *args: object) -> None:
        pass

    def _reply(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        user = int(self.path.split("?")[0].rsplit("/", 1)[-1])
        with self.server.lock:
            self.server.users.append(user)
        items = [(user + self.server.offset + i) % 100 for i in range(10)]
        self._reply(200, {"request_id": uuid.uuid4().hex, "user_id": user,
                          "items": [{"item_id": i, "score": 1.0, "source": "ann"} for i in items],
                          "model": {"candidates": "1", "ranker": "1"}, "degraded": []})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.server.lock:
            self.server.events += [Event.model_validate(e) for e in body["events"]]
        self._reply(202, {"accepted": len(body["events"])})


@pytest.fixture
def apis() -> Iterator[tuple[_Api, _Api]]:
    servers = (_Api(free_port(), 0), _Api(free_port(), 37))
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    yield servers
    for s in servers:
        s.shutdown()
        s.server_close()


def test_arms_see_the_same_users_and_only_live_posts(settings: Settings, apis) -> None:
    live_api, frozen_api = apis
    world = World.generate(settings.sim.model_copy(update={"n_items": 100}))
    live = Arm("live", f"http://127.0.0.1:{live_api.server_port}", post_events=True)
    frozen = Arm("frozen", f"http://127.0.0.1:{frozen_api.server_port}", post_events=False)
    at = dt.datetime(2026, 1, 4, tzinfo=dt.UTC)
    figures, events = play_hour([live, frozen], world, 0, at, 25, 10, np.random.default_rng(0))
    assert sorted(live_api.users) == sorted(frozen_api.users) and len(live_api.users) == 25
    for f in figures:
        assert f.requests == 25 and f.errors == 0 and f.impressions == 250
        assert 0 < f.expected_clicks <= f.oracle_clicks
    assert figures[0].expected_clicks != figures[1].expected_clicks  # different lists
    assert post_events(live, events) == len(events) > 250
    assert len(live_api.events) == len(events) and frozen_api.events == []
    assert {e.model_version for e in live_api.events} == {"candidates=1,ranker=1"}


def test_affected_users_are_summed_apart(settings: Settings, apis) -> None:
    live_api, _ = apis
    world = World.generate(settings.sim.model_copy(update={"n_items": 100}))
    at = dt.datetime(2026, 1, 4, tzinfo=dt.UTC)
    half = np.arange(world.n_users) % 2 == 0
    arm = Arm("live", f"http://127.0.0.1:{live_api.server_port}", post_events=False)
    (fig,), _ = play_hour([arm], world, 0, at, 40, 10, np.random.default_rng(1), half)
    users = np.array(live_api.users)
    assert half[users].any() and not half[users].all()  # both kinds drawn
    assert 0 < fig.affected_expected_clicks < fig.expected_clicks
    assert 0 < fig.affected_oracle_clicks < fig.oracle_clicks
    everyone = Arm("all", arm.url, post_events=False)
    (all_fig,), _ = play_hour([everyone], world, 0, at, 40, 10, np.random.default_rng(1),
                              np.ones(world.n_users, dtype=bool))
    assert all_fig.affected_oracle_clicks == pytest.approx(all_fig.oracle_clicks)
    assert all_fig.row()["affected_expected_clicks"] == pytest.approx(all_fig.expected_clicks)
