"""The serving benchmark's load: a fixed offered rate of recommendation requests.

Run by ``serving.bench`` (``python -m locust -f loadtests/serving_bench.py --headless ...``);
imports nothing of the project. Each user sends ``RECSTACK_BENCH_USER_RPS`` requests per second
(``loadtests/pacing.py``), so ``users x user_rps`` is the offered load whatever the latency.
``RECSTACK_BENCH_ARRIVALS``: ``poisson`` (open loop: each user's requests are due at Poisson
arrivals and Locust records each latency from its due time) or ``paced`` (a fixed period per
user; latency from the actual send). Known users only: the benchmark measures the two-stage path, 500 candidates
ranked, top ``RECSTACK_LOADTEST_K`` returned. A degraded answer is a success here (the API did
its job); the benchmark counts degraded answers from the replicas' /metrics.

The four variables have no defaults here: the runner (``app.stack.servingbench`` through
``app.stack.loadtest.run_locust``) passes them from the settings, and a run without them
stops at once saying which is missing.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, task

try:  # run from the repository root (python -m locust -f loadtests/...)
    from loadtests.checks import recommendation_problem
    from loadtests.pacing import begin, begin_poisson, lag_ms, paced, poisson
except ImportError:  # Locust puts the locustfile's own folder on the path
    from checks import recommendation_problem  # type: ignore[no-redef]
    from pacing import begin, begin_poisson, lag_ms, paced, poisson  # type: ignore[no-redef]



def _passed(name: str) -> str:
    """The value the runner passed in ``name``; a clear error when it did not."""
    value = os.environ.get(name, "")
    if not value:
        raise RuntimeError(f"{name} is not set: run this locustfile through `recstack bench "
                           "--suite serving` (app.stack.servingbench), which passes it")
    return value


N_USERS = int(_passed("RECSTACK_SIM__N_USERS"))
K = int(_passed("RECSTACK_LOADTEST_K"))
USER_RPS = float(_passed("RECSTACK_BENCH_USER_RPS"))
OPEN_LOOP = _passed("RECSTACK_BENCH_ARRIVALS") == "poisson"


class BenchUser(FastHttpUser):
    wait_time = poisson(USER_RPS) if OPEN_LOOP else paced(USER_RPS)

    def on_start(self) -> None:
        if OPEN_LOOP:
            begin_poisson(self, USER_RPS)
        else:
            # Users spawned together stay in phase and arrive as one burst per period (25
            # requests at once every 250 ms measured p50 29 ms where smooth arrivals measured
            # 6 ms): each starts at a random point of its period and keeps that phase.
            begin(self, USER_RPS)

    @task
    def recommend(self) -> None:
        lag = lag_ms(self) if OPEN_LOOP else 0.0
        with self.client.get(
            f"/recommendations/{random.randrange(N_USERS)}?k={K}",
            name="/recommendations/[user]",
            catch_response=True,
        ) as resp:
            # From the due time: a request sent late because its user was still waiting is
            # as late for its client as the answer's own time says.
            resp.request_meta["response_time"] = (resp.request_meta["response_time"] or 0) + lag
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:120]}")
                return
            try:
                body = resp.json()
            except ValueError:
                resp.failure("body is not JSON")
                return
            problem = recommendation_problem(body, K)
            if problem:
                resp.failure(problem)
            else:
                resp.success()
