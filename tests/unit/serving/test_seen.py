"""The seen filter: a user's seen items never come back, k items remain, and a history that does
not answer is served unfiltered and said so (``seen_unavailable``)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recstack.history import history_key, newest_per_user, oldest_counted
from recstack.settings import SeenSettings
from serving.candidates import AnnCandidateSource
from serving.protocols import Candidates
from serving.recommender import SEEN_UNAVAILABLE, Budgets, Recommender
from serving.seen import RedisSeenReader
from tests.unit.serving.conftest import (
    FakeRanker,
    FakeUserFeatures,
    item_table,
    make_resources,
    tiny_model,
)

ROOMY_BUDGETS = Budgets(deadline_s=1.0, candidates_s=0.5, user_features_s=0.5, ranking_s=0.5)


class FakeSeen:
    def __init__(self, items: list[int] | None = None, fail: bool = False) -> None:
        self.items = np.asarray(items or [], dtype=np.int64)
        self.fail = fail

    def seen(self, user_id: int) -> np.ndarray:
        if self.fail:
            raise ConnectionError("redis down")
        return self.items


class CountingSource(AnnCandidateSource):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.asked: list[int] = []

    def candidates(self, user_id: int, n: int) -> Candidates:
        self.asked.append(n)
        return super().candidates(user_id, n)


def _recommender(seen, n_candidates: int = 100, source=None) -> Recommender:
    model = tiny_model()
    return Recommender(source or AnnCandidateSource(model), FakeRanker(), FakeUserFeatures(),
                       item_table(model), n_candidates=n_candidates, budgets=ROOMY_BUDGETS,
                       seen=seen)


def test_candidates_without_keeps_order_and_sources() -> None:
    c = Candidates(np.array([5, 6, 7, 8, 9, 10]), np.arange(6, dtype=np.float32), n_ann=3,
                   n_fresh=1)
    out = c.without(np.array([6, 8]), 3)
    assert out.item_ids.tolist() == [5, 7, 9]
    assert out.scores.tolist() == [0.0, 2.0, 4.0]
    assert [out.source(i) for i in range(3)] == ["ann", "ann", "popular"]
    assert c.without(np.empty(0, np.int64), 10) is c


def test_seen_items_never_come_back_and_k_remain() -> None:
    plain = _recommender(None).recommend(7, 20)
    served = [i.item_id for i in plain.items]
    source = CountingSource(tiny_model())
    filtered = _recommender(FakeSeen(served[:15]), source=source).recommend(7, 20)
    ids = [i.item_id for i in filtered.items]
    assert len(ids) == 20 and not set(ids) & set(served[:15])
    # Ranked as before: scores fall, and the unseen rest of the old list keeps its order.
    scores = [i.score for i in filtered.items]
    assert scores == sorted(scores, reverse=True)
    assert [i for i in ids if i in served[15:]] == [i for i in served[15:] if i in ids]
    assert source.asked == [100 + 15]  # over-fetched by the history's length
    assert filtered.n_candidates == 100 and filtered.degraded == []
    assert "seen" in filtered.stage_seconds


def test_cold_start_and_the_popular_fallback_are_filtered_too() -> None:
    model = tiny_model()
    popular = model.popular.tolist()
    cold = _recommender(FakeSeen(popular[:2])).recommend(10_000, 3)  # a user the model lacks
    assert cold.cold_start and [i.item_id for i in cold.items] == popular[2:5]

    class DeadSource(AnnCandidateSource):
        def candidates(self, user_id: int, n: int) -> Candidates:
            raise ConnectionError("candidate service down")

    down = _recommender(FakeSeen(popular[:1]), source=DeadSource(model)).recommend(7, 3)
    assert [i.item_id for i in down.items] == popular[1:4]
    assert "candidates_unavailable" in down.degraded


def test_a_history_that_does_not_answer_is_served_unfiltered_and_said_so() -> None:
    plain = _recommender(None).recommend(7, 10)
    out = _recommender(FakeSeen(fail=True)).recommend(7, 10)
    assert out.degraded == [SEEN_UNAVAILABLE]
    assert [i.item_id for i in out.items] == [i.item_id for i in plain.items]


def test_the_recommendations_route_counts_seen_unavailable(client_for) -> None:
    resources = make_resources(seen=FakeSeen(fail=True))
    client = client_for(resources)
    body = client.get("/recommendations/7").json()
    assert body["degraded"] == [SEEN_UNAVAILABLE]
    metrics = client.get("/metrics").text
    assert 'recstack_degraded_total{reason="seen_unavailable"} 1.0' in metrics


def test_history_helpers() -> None:
    assert history_key("clicked", 42) == "recstack:seen:clicked:42"
    assert newest_per_user([(1, 5, 10.0), (1, 5, 30.0), (1, 5, 20.0), (2, 6, 1.0)]) == {
        1: {5: 30.0}, 2: {6: 1.0}}
    now = dt.datetime(2026, 1, 31, tzinfo=dt.UTC)
    assert oldest_counted(SeenSettings(policy="clicked"), now) == float("-inf")
    assert oldest_counted(SeenSettings(policy="shown", window_days=30), now) == dt.datetime(
        2026, 1, 1, tzinfo=dt.UTC).timestamp()


def test_the_reader_asks_for_the_window_and_fails_loudly() -> None:
    class Client:
        def __init__(self, fail: bool = False) -> None:
            self.fail, self.calls = fail, []

        def zrangebyscore(self, key, low, high):
            if self.fail:
                raise TimeoutError("slow redis")
            self.calls.append((key, low, high))
            return [b"1005", b"1010"]

    now = dt.datetime(2026, 1, 31, tzinfo=dt.UTC)
    client = Client()
    reader = RedisSeenReader(client, SeenSettings(policy="shown", window_days=1), lambda: now)
    assert reader.seen(3).tolist() == [1005, 1010]
    assert client.calls == [("recstack:seen:shown:3", (now - dt.timedelta(days=1)).timestamp(),
                             "+inf")]
    with pytest.raises(Exception, match="seen history: TimeoutError"):
        RedisSeenReader(Client(fail=True), SeenSettings(policy="clicked"), lambda: now).seen(3)
