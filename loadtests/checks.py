"""Response-body checks shared by the locustfiles (a wrong body is a failure, not just a wrong status).

Pure functions, no Locust import: each returns None when the body is right, else the message to
pass to ``resp.failure(...)``.
"""

from __future__ import annotations

from typing import Any


def recommendation_problem(body: Any, k: int) -> str | None:
    """Why a ``GET /recommendations/{user}?k=K`` body is wrong, or None if it is right.

    Right means: a JSON object with a string ``request_id`` and an ``items`` list of exactly ``k``
    objects with distinct integer ``item_id`` s. A degraded answer is well-formed, so it is right
    here (``degraded`` says why); it is not goodput: the load lab's steps count it apart and a
    step with more than 1% degraded answers is past the knee (app/experiments/loadlab/analysis.py).
    """
    if not isinstance(body, dict):
        return "body is not a JSON object"
    items = body.get("items")
    if not isinstance(items, list):
        return "body has no 'items' list"
    if len(items) != k:
        return f"expected {k} items, got {len(items)}"
    if not all(isinstance(i, dict) and isinstance(i.get("item_id"), int) for i in items):
        return "an item has no integer 'item_id'"
    if len({item["item_id"] for item in items}) != k:
        return "duplicate item ids in the list"
    if not isinstance(body.get("request_id"), str):
        return "body has no 'request_id'"
    return None


def events_problem(body: Any, posted: int) -> str | None:
    """Why a ``POST /events`` 202 body is wrong (``accepted`` must equal what was posted)."""
    if not isinstance(body, dict):
        return "body is not a JSON object"
    accepted = body.get("accepted")
    if accepted != posted:
        return f"posted {posted} events, {accepted!r} accepted"
    return None


def degraded_reasons(body: Any) -> list[str]:
    """The ``degraded`` reasons of a recommendation body ([] when it is not degraded)."""
    if not isinstance(body, dict):
        return []
    reasons = body.get("degraded") or []
    return [str(r) for r in reasons] if isinstance(reasons, list) else [str(reasons)]
