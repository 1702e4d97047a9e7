"""The response-body checks shared by the locustfiles."""

from __future__ import annotations

from loadtests.checks import degraded_reasons, events_problem, recommendation_problem


def _body(ids: list[int], **extra: object) -> dict:
    return {"request_id": "r1", "items": [{"item_id": i, "score": 0.1} for i in ids], **extra}


def test_a_right_body_passes_even_degraded() -> None:
    assert recommendation_problem(_body([1, 2, 3]), 3) is None
    assert recommendation_problem(_body([1, 2], degraded=["ranker_late"]), 2) is None


def test_wrong_bodies_say_why() -> None:
    assert recommendation_problem([], 3) == "body is not a JSON object"
    assert recommendation_problem({"request_id": "r"}, 3) == "body has no 'items' list"
    assert recommendation_problem(_body([1, 2]), 3) == "expected 3 items, got 2"
    assert recommendation_problem(_body([1, 1, 2]), 3) == "duplicate item ids in the list"
    assert "integer" in recommendation_problem(
        {"request_id": "r", "items": [{"item_id": "x"}]}, 1)
    body = _body([1])
    del body["request_id"]
    assert recommendation_problem(body, 1) == "body has no 'request_id'"


def test_events_and_degraded() -> None:
    assert events_problem({"accepted": 3}, 3) is None
    assert events_problem({"accepted": 2}, 3) == "posted 3 events, 2 accepted"
    assert events_problem("x", 3) == "body is not a JSON object"
    assert degraded_reasons(_body([1], degraded=["a", "b"])) == ["a", "b"]
    assert degraded_reasons(_body([1])) == []
    assert degraded_reasons(None) == []
