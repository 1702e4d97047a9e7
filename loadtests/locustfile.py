"""Simulated users asking for recommendations through the load balancer.

Run by ``recstack.stack.loadtest.run_locust`` (``python -m locust -f loadtests/locustfile.py
--headless ...``); it imports nothing of the project, so Locust's gevent patching stays harmless.
The user-id range comes from ``RECSTACK_SIM__N_USERS`` (the simulated world's size).
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task

# Same defaults as recstack.settings (SimSettings.n_users, ServingSettings.k_default).
N_USERS = int(os.environ.get("RECSTACK_SIM__N_USERS", "3000"))
K = int(os.environ.get("RECSTACK_LOADTEST_K", "20"))
# Ids far above the simulated world: unknown users, served the cold-start list.
UNKNOWN_BASE = 10_000_000


class RecommendationUser(FastHttpUser):
    """~90% known users, ~10% unknown ones (cold start); checks the body, not just the status."""

    wait_time = between(0.01, 0.05)

    def _recommend(self, user_id: int) -> None:
        with self.client.get(
            f"/recommendations/{user_id}?k={K}",
            name="/recommendations/[user]",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"status {resp.status_code}: {(resp.text or '')[:120]}")
                return
            try:
                items = resp.json().get("items")
            except (ValueError, AttributeError):
                resp.failure("body is not a JSON object")
                return
            if not isinstance(items, list):
                resp.failure("body has no 'items' list")
            elif len(items) != K:
                resp.failure(f"expected {K} items, got {len(items)}")
            elif len({item.get("item_id") for item in items}) != K:
                resp.failure("duplicate item ids in the list")
            else:
                resp.success()

    @task(9)
    def known_user(self) -> None:
        self._recommend(random.randrange(N_USERS))

    @task(1)
    def unknown_user(self) -> None:
        self._recommend(UNKNOWN_BASE + random.randrange(1_000_000))
