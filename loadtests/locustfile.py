"""Simulated users asking for recommendations through the load balancer, and clicking.

Run by ``app.stack.loadtest.run_locust`` (``python -m locust -f loadtests/locustfile.py
--headless ...``): Locust is imported (and gevent patches the process) before anything else.

Each request is made on behalf of a user of the simulated world (drawn by activity), saved by
``recstack simulate`` under ``$RECSTACK_HOME/world``. The user reacts to the served list by
the world's ground truth (``simulator.users.SimulatedUser``: taste, freshness, position bias,
fatigue), and the impressions and clicks, carrying the response's ``request_id`` and model
version, are posted in batches to ``POST /events`` — so the next training run learns from what
the deployed model showed. A batch the API refuses stays buffered and is posted again after a
back-off (the lake dedupes on ``event_id``), so a fault under load loses no events. ~10% of requests are for unknown users (cold start; not in the
world, so they post nothing). When the run stops, the online CTR (realized, expected, and as a
fraction of the oracle's) is written to ``$RECSTACK_LOADTEST_CTR_FILE`` (default
``$RECSTACK_HOME/reports/online_ctr.json``).

Without a saved world the users still send the same GET load but click nothing (a warning says
how to get one); ``RECSTACK_SIM__N_USERS`` then gives the user-id range.

Knobs for the load-testing lab (``recstack experiment scale|chaos``), all optional:

- ``RECSTACK_LOADTEST_USER_RPS``: each user runs its tasks at this rate, so ``users x rate``
  is the offered load whatever the latency;
- ``RECSTACK_LOADTEST_ARRIVALS``: ``poisson`` (default; open loop: each user's tasks are due at
  Poisson arrivals, and a recommendation's latency is measured from its due time, the lag of a
  late start included) or ``paced`` (a fixed period per user, latency from the actual send)
  (``loadtests/pacing.py``);
- ``RECSTACK_LOADTEST_STAGES``: ``"end_s:users,end_s:users,..."`` drives the user count over time
  (a ``LoadTestShape``; e.g. 50% load, then 2x, then 50% again);
- ``RECSTACK_LOADTEST_REQUEST_LOG``: a path prefix; each Locust process appends one CSV row per
  request to ``<prefix>-<pid>.csv`` (start time, name, ms, ok, status, degraded reasons, lag ms:
  how late it was sent after its due time, already included in ms), from which the
  experiments build per-second timelines.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, events, task

# Imported after locust (gevent patching first); numpy and the world only, no pyarrow.
try:
    import numpy as np

    from recstack.clock import SimClock
    from simulator.users import OnlineCtr, SimulatedUser, model_version_of
    from simulator.world import World
except ImportError as _exc:  # the project is not installed where Locust runs: GET load only
    SimulatedUser = model_version_of = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR: ImportError | None = _exc
else:
    _IMPORT_ERROR = None
try:  # run from the repository root (the project's runners) or from loadtests/ (Locust's path)
    from loadtests.checks import degraded_reasons, events_problem, recommendation_problem
    from loadtests.pacing import begin, begin_poisson, lag_ms, paced, poisson
except ImportError:
    from checks import degraded_reasons, events_problem, recommendation_problem  # type: ignore[no-redef]
    from pacing import begin, begin_poisson, lag_ms, paced, poisson  # type: ignore[no-redef]

logger = logging.getLogger("recstack.locustfile")

# Same defaults as recstack.settings (SimSettings.n_users, ServingSettings.k_default).
N_USERS = int(os.environ.get("RECSTACK_SIM__N_USERS", "3000"))
K = int(os.environ.get("RECSTACK_LOADTEST_K", "20"))
# Simulated seconds per wall second for event timestamps (which start where the run ended).
SPEEDUP = float(os.environ.get("RECSTACK_LOADTEST_SPEEDUP", "1"))
FLUSH_EVENTS = 200  # events buffered per Locust user before one POST /events (max 1000)
# A batch the API did not accept (503 while Redis is down or the replica sheds, 502 when a
# replica dies mid-request) stays buffered and is posted again after a back-off, like a client
# SDK does: the lake dedupes on event_id, so a batch that did land before the error is not
# counted twice. Beyond MAX_BUFFERED events per user the oldest are dropped (and counted).
MAX_BATCH = 1000
MAX_BUFFERED = 5 * MAX_BATCH
RETRY_S = (1.0, 8.0)  # first and longest back-off
# Ids far above the simulated world: unknown users, served the cold-start list.
UNKNOWN_BASE = 10_000_000
USER_RPS = float(os.environ.get("RECSTACK_LOADTEST_USER_RPS", "0") or 0)
ARRIVALS = os.environ.get("RECSTACK_LOADTEST_ARRIVALS", "") or "poisson"
if ARRIVALS not in ("poisson", "paced"):
    raise RuntimeError(f"RECSTACK_LOADTEST_ARRIVALS={ARRIVALS!r}: use poisson or paced")
OPEN_LOOP = USER_RPS > 0 and ARRIVALS == "poisson"
STAGES = os.environ.get("RECSTACK_LOADTEST_STAGES", "")
REQUEST_LOG = os.environ.get("RECSTACK_LOADTEST_REQUEST_LOG", "")


def parse_stages(text: str) -> list[tuple[float, int]]:
    """``"10:20,25:80"`` -> [(10.0, 20), (25.0, 80)]: run 20 users until 10 s, then 80 until 25 s."""
    stages = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        end, users = part.split(":")
        stages.append((float(end), int(users)))
    return stages


class _RequestLog:
    """One CSV row per request of this process (appended in chunks, flushed when Locust stops).

    The file is named by the pid at write time, so workers forked by ``--processes`` keep apart.
    """

    FLUSH_ROWS = 500

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.rows: list[str] = []

    @property
    def enabled(self) -> bool:
        return bool(self.prefix)

    def add(self, start: float, name: str, ms: float, ok: bool, status: int, degraded: str,
            lag: float = 0.0) -> None:
        self.rows.append(f"{start:.4f},{name},{ms:.2f},{int(ok)},{status},{degraded},{lag:.2f}\n")
        if len(self.rows) >= self.FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.prefix or not self.rows:
            return
        rows, self.rows = self.rows, []
        path = Path(f"{self.prefix}-{os.getpid()}.csv")
        new = not path.exists()
        with path.open("a") as f:
            if new:
                f.write("start_s,name,response_ms,ok,status,degraded,lag_ms\n")
            f.writelines(rows)


REQUEST_LOG_ROWS = _RequestLog(REQUEST_LOG)


class _Feedback:
    """Process-wide state: the world, its simulated users, the CTR tally (loaded on init)."""

    def __init__(self) -> None:
        self.world: Any = None
        self.users: dict[int, Any] = {}
        self.tally: Any = None
        self.clock: Any = None
        self.cum_weights: list[float] = []
        self.home = Path(os.environ.get("RECSTACK_HOME", "var")).resolve()
        self.events_retried = 0  # events of batches posted again after a failed POST
        self.events_dropped = 0  # events given up (buffer full, or still failing at the end)

    def load(self) -> None:
        """Load the saved world; on failure keep going without clicks, saying why once."""
        path = self.home / "world"
        if _IMPORT_ERROR is not None:
            logger.warning("simulator not importable (%s): users will not click", _IMPORT_ERROR)
            return
        try:
            world = World.load(path)
        except (FileNotFoundError, ValueError, OSError, ImportError) as exc:
            logger.warning(
                "no simulated world (%s): users will request but not click or post events; "
                "run `recstack simulate` with the same RECSTACK_HOME first", exc,
            )
            return
        self.world = world
        self.tally = OnlineCtr()
        self.clock = SimClock(sim_start=world.end, speedup=SPEEDUP)
        joined = world.active_users(world.end)
        self.cum_weights = np.cumsum(world.user_activity * joined).tolist()
        logger.info("simulated world from %s: %d users, %d items", path, world.n_users, world.n_items)

    def pick_user(self) -> Any:
        """A simulated user, drawn by activity; None without a world."""
        if self.world is None:
            return None

        uid = random.choices(range(self.world.n_users), cum_weights=self.cum_weights)[0]
        user = self.users.get(uid)
        if user is None:
            user = self.users[uid] = SimulatedUser(self.world, uid, clock=self.clock)
        return user

    def write_summary(self) -> None:
        if self.tally is None:
            return
        default = self.home / "reports" / "online_ctr.json"
        out = Path(os.environ.get("RECSTACK_LOADTEST_CTR_FILE", default))
        out.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "k": K,
            **self.tally.summary(),
            "events_retried": self.events_retried,
            "events_dropped": self.events_dropped,
        }
        out.write_text(json.dumps(summary, indent=2))
        logger.warning(
            "online CTR %.4f (expected %.4f, %.1f%% of the oracle) over %d requests -> %s",
            summary["ctr"], summary["expected_ctr"],
            100 * (summary["fraction_of_oracle"] or 0.0), summary["requests"], out,
        )


FEEDBACK = _Feedback()


@events.init.add_listener
def _on_init(**_: Any) -> None:
    FEEDBACK.load()


@events.quitting.add_listener
def _on_quitting(**_: Any) -> None:
    REQUEST_LOG_ROWS.flush()
    FEEDBACK.write_summary()


@events.test_stop.add_listener
def _on_test_stop(**_: Any) -> None:
    REQUEST_LOG_ROWS.flush()


@events.request.add_listener
def _on_request(
    name: str, response_time: float, response: Any = None, exception: Any = None,
    start_time: float | None = None, context: dict[str, Any] | None = None, **_: Any,
) -> None:
    if not REQUEST_LOG_ROWS.enabled:
        return
    status = int(getattr(response, "status_code", 0) or 0)
    # The reasons were read from the body the user already parsed (no second parse here).
    degraded = str((context or {}).get("degraded", ""))
    lag = float((context or {}).get("lag_ms", 0.0))
    started = start_time if start_time is not None else time.time() - response_time / 1000
    REQUEST_LOG_ROWS.add(started, name, response_time or 0.0, exception is None, status, degraded,
                         lag)


class RecommendationUser(FastHttpUser):
    """~90% known (simulated) users who click and post events, ~10% unknown ones (cold start).

    Checks the body, not just the status, for both endpoints.
    """

    wait_time = ((poisson(USER_RPS) if OPEN_LOOP else paced(USER_RPS)) if USER_RPS > 0
                 else between(0.01, 0.05))

    def on_start(self) -> None:
        self.pending: list[dict[str, Any]] = []
        self.retry_at = 0.0  # no POST /events before this (monotonic), after a failed one
        self.backoff_s = RETRY_S[0]
        if OPEN_LOOP:
            begin_poisson(self, USER_RPS)  # the first request at the user's first arrival
        elif USER_RPS > 0:
            # Users spawned together would stay in phase and arrive in bursts: each starts at a
            # random point of its period and keeps that phase (loadtests/pacing.py).
            begin(self, USER_RPS)

    def on_stop(self) -> None:
        # Every user flushes its buffer when the run stops; 100 users at once would exceed a
        # replica's in-flight limit and be shed (measured: 26 of 100 final POSTs got a 503).
        # So they spread out over a second and retry a refused batch, within Locust's 5 s stop.
        time.sleep(random.uniform(0.0, 1.0))
        for _ in range(3):
            self.retry_at = 0.0
            self._flush()
            if not self.pending:
                break
            time.sleep(random.uniform(0.5, 1.0))
        FEEDBACK.events_dropped += len(self.pending)
        self.pending = []

    def _recommend(self, user_id: int) -> dict[str, Any] | None:
        """GET a list; the validated body, or None (the failure is recorded). Open loop: the
        recorded latency runs from the request's due time (``lag_ms`` + the response time)."""
        lag = lag_ms(self) if OPEN_LOOP else 0.0
        with self.client.get(
            f"/recommendations/{user_id}?k={K}",
            name="/recommendations/[user]",
            catch_response=True,
            context={"lag_ms": lag},
        ) as resp:
            resp.request_meta["response_time"] = (resp.request_meta["response_time"] or 0) + lag
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:120]}")
                return None
            try:
                body = resp.json()
            except ValueError:
                resp.failure("body is not JSON")
                return None
            problem = recommendation_problem(body, K)
            if problem is not None:
                resp.failure(problem)
                return None
            resp.success()
            # For the request log (the request event gets this context when the block ends).
            resp.request_meta["context"] = {**(resp.request_meta.get("context") or {}),
                                            "degraded": ";".join(degraded_reasons(body))}
            return body
        return None

    def _flush(self) -> None:
        """POST the oldest buffered events (one batch); 202 with the right count or a failure,
        after which the batch stays buffered for a retry (see ``RETRY_S``)."""
        if not self.pending or time.monotonic() < self.retry_at:
            return
        batch = self.pending[:MAX_BATCH]
        accepted = False
        with self.client.post(
            "/events", json={"events": batch}, name="/events", catch_response=True
        ) as resp:
            if resp.status_code != 202:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:120]}")
            else:
                try:
                    problem = events_problem(resp.json(), len(batch))
                except ValueError:
                    problem = "body is not JSON"
                if problem is not None:
                    resp.failure(problem)
                else:
                    resp.success()
                    accepted = True
        if accepted:
            del self.pending[:len(batch)]
            self.backoff_s = RETRY_S[0]
            return
        self.retry_at = time.monotonic() + self.backoff_s * random.uniform(0.5, 1.0)
        self.backoff_s = min(2 * self.backoff_s, RETRY_S[1])
        FEEDBACK.events_retried += len(batch)
        if len(self.pending) > MAX_BUFFERED:
            over = len(self.pending) - MAX_BUFFERED
            del self.pending[:over]
            FEEDBACK.events_dropped += over

    @task(9)
    def known_user(self) -> None:
        user = FEEDBACK.pick_user()
        body = self._recommend(user.user_id if user is not None else random.randrange(N_USERS))
        if body is None or user is None:
            return
        oracle = user.oracle_expected_clicks(K)  # before reacting: what the best list could get
        reaction = user.react(body)
        FEEDBACK.tally.add(reaction, oracle, model_version_of(body))
        self.pending.extend(reaction.events)
        if len(self.pending) >= FLUSH_EVENTS:
            self._flush()

    @task(1)
    def unknown_user(self) -> None:
        self._recommend(UNKNOWN_BASE + random.randrange(1_000_000))


if STAGES:

    class StagedLoad(LoadTestShape):
        """The user count over time from ``RECSTACK_LOADTEST_STAGES`` (stops after the last)."""

        stages = parse_stages(STAGES)

        def tick(self) -> tuple[int, float] | None:
            run_time = self.get_run_time()
            for end, users in self.stages:
                if run_time < end:
                    return users, max(users, 1)
            return None
