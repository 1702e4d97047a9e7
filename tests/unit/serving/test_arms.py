"""Online experiments at the API: assignment, arms in responses and metrics, canary, shadow."""

from __future__ import annotations

import numpy as np
import pytest
from fastapi.testclient import TestClient
from scipy import stats

from recstack.settings import Settings
from serving.app import create_app
from serving.arms import (
    Arm,
    Experiment,
    ShadowJob,
    ShadowRunner,
    assign,
    assign_many,
    bucket,
    build_experiment,
)
from serving.candidates import AnnCandidateSource
from serving.recommender import Recommender
from tests.unit.serving.conftest import (
    ROOMY,
    BrokenRanker,
    FakeRanker,
    FakeUserFeatures,
    item_table,
    make_resources,
    tiny_model,
)

SALT = "recstack-ab-1"


@pytest.fixture
def serving_settings() -> Settings:
    """Overrides conftest's: the arms' list orders are checked, so no stage may be skipped."""
    return Settings(serving=ROOMY)


def test_assignment_is_a_pure_function_of_salt_and_user() -> None:
    # Pinned: a change of hash, encoding or slicing would silently reshuffle running tests.
    assert bucket(1, SALT) == pytest.approx(0.5182678002087795, abs=1e-15)
    assert [assign(u, SALT, [0.5, 0.5]) for u in range(4)] == [0, 1, 1, 0]
    ids = np.arange(5000)
    many = assign_many(ids, SALT, [0.3, 0.7])
    assert many.tolist() == [assign(int(u), SALT, [0.3, 0.7]) for u in ids]
    assert (assign_many(ids, SALT, [0.3, 0.7]) == many).all()  # stable across calls


@pytest.mark.parametrize("weights", [(0.5, 0.5), (0.9, 0.1), (0.2, 0.3, 0.5)])
def test_assignment_is_balanced_on_100k_ids(weights: tuple[float, ...]) -> None:
    ids = np.arange(100_000)
    counts = np.bincount(assign_many(ids, SALT, weights), minlength=len(weights))
    expected = np.asarray(weights) * len(ids)
    assert stats.chisquare(counts, expected).pvalue > 0.001  # the SRM alarm level


def test_a_new_salt_reshuffles_independently_and_zero_weight_gets_nobody() -> None:
    ids = np.arange(100_000)
    a = assign_many(ids, "exp-a", [0.5, 0.5])
    b = assign_many(ids, "exp-b", [0.5, 0.5])
    table = np.array([[np.sum((a == i) & (b == j)) for j in (0, 1)] for i in (0, 1)])
    assert stats.chi2_contingency(table).pvalue > 0.001
    assert (assign_many(ids[:2000], SALT, [1.0, 0.0]) == 0).all()
    assert (assign_many(ids[:2000], SALT, [0.0, 1.0]) == 1).all()


def _recommender(ranker, n_candidates: int = 100) -> Recommender:
    model = tiny_model()
    return Recommender(AnnCandidateSource(model), ranker, FakeUserFeatures(), item_table(model),
                       n_candidates=n_candidates)


class ReversedRanker(FakeRanker):
    version = "8"

    def score(self, features: np.ndarray) -> np.ndarray:
        return -super().score(features)


class FlakyRecommender:
    """A treatment that raises on ``rate`` of its requests (seeded): the injected error."""

    def __init__(self, inner: Recommender, rate: float, seed: int = 0) -> None:
        self.inner, self.rate = inner, rate
        self.rng = np.random.default_rng(seed)
        self.versions = inner.versions

    def recommend(self, user_id: int, k: int, deadline_s: float | None = None):
        if self.rng.random() < self.rate:
            raise RuntimeError("injected failure")
        return self.inner.recommend(user_id, k, deadline_s)


def _client(settings: Settings, experiment: Experiment) -> TestClient:
    return TestClient(create_app(settings, make_resources(), experiment=experiment))


def _ab(weight: float = 0.5, treatment=None) -> Experiment:
    return Experiment("t", SALT, "ab", [
        Arm("control", "champion", 1 - weight, main=True),
        Arm("treatment", "challenger", weight, recommender=treatment),
    ])


def test_each_user_sees_their_arm_and_its_models(serving_settings: Settings) -> None:
    exp = _ab(treatment=_recommender(ReversedRanker()))
    with _client(serving_settings, exp) as client:
        seen = {}
        for user in range(40):
            body = client.get(f"/recommendations/{user}", params={"k": 5}).json()
            expected = ["control", "treatment"][assign(user, SALT, [0.5, 0.5])]
            assert body["arm"] == expected
            assert body["model"]["ranker"] == {"control": "7", "treatment": "8"}[expected]
            ids = [i["item_id"] for i in body["items"]]
            # The control's ranker prefers high ids, the treatment's low ids.
            assert ids == sorted(ids, reverse=expected == "control")
            seen[expected] = seen.get(expected, 0) + 1
        metrics = client.get("/metrics").text
        described = client.get("/experiment").json()
    assert set(seen) == {"control", "treatment"}
    for arm, n in seen.items():
        assert f'recstack_arm_requests_total{{arm="{arm}"}} {float(n)}' in metrics
    assert [a["name"] for a in described["arms"]] == ["control", "treatment"]
    assert described["salt"] == SALT and all(a["loaded"] for a in described["arms"])


def test_no_experiment_means_no_arm(client_for) -> None:
    client = client_for()
    assert client.get("/recommendations/3").json()["arm"] is None
    assert client.get("/experiment").json() == {"mode": "off"}


def test_an_unloaded_arm_is_served_by_the_champion(serving_settings: Settings) -> None:
    with _client(serving_settings, _ab(weight=1.0)) as client:
        body = client.get("/recommendations/3").json()
    assert body["arm"] == "treatment"  # intention to treat: the assignment is kept
    assert body["model"]["ranker"] == "7" and "arm_unavailable" in body["degraded"]


def _canary_settings(**ab) -> Settings:
    return Settings(serving={"k_max": 50, "n_candidates": 100},
                    ab={"mode": "canary", "canary_weight": 0.3, "canary_window": 100,
                        "canary_min_requests": 30, "canary_max_error_rate": 0.05, **ab})


def test_a_canary_with_injected_errors_is_rolled_back(serving_settings: Settings) -> None:
    settings = _canary_settings()
    exp = build_experiment(settings.ab)
    exp.arm("treatment").recommender = FlakyRecommender(_recommender(FakeRanker()), rate=0.2)
    with _client(settings, exp) as client:
        arms = [client.get(f"/recommendations/{u % 50}").json()["arm"] for u in range(400)]
        metrics = client.get("/metrics").text
        described = client.get("/experiment").json()
    treatment = exp.arm("treatment")
    assert treatment.weight == 0.0
    [event] = exp.events
    assert event.kind == "rollback" and event.arm == "treatment" and "error rate" in event.reason
    assert described["events"][0]["reason"] == event.reason
    assert 'recstack_canary_rollbacks_total{arm="treatment"} 1.0' in metrics
    assert 'recstack_arm_weight{arm="treatment"} 0.0' in metrics
    # After the rollback every user is served the control.
    cut = max(i for i, a in enumerate(arms) if a == "treatment")
    assert cut < 300 and set(arms[cut + 1:]) == {"control"}


def test_a_degraded_canary_counts_errors_and_a_healthy_one_stays(serving_settings) -> None:
    broken = _canary_settings()
    exp = build_experiment(broken.ab)
    exp.arm("treatment").recommender = _recommender(BrokenRanker())  # ranker_unavailable
    with _client(broken, exp) as client:
        for u in range(300):
            client.get(f"/recommendations/{u % 50}")
    assert exp.arm("treatment").weight == 0.0

    healthy = build_experiment(broken.ab)
    healthy.arm("treatment").recommender = _recommender(ReversedRanker())
    with _client(broken, healthy) as client:
        arms = [client.get(f"/recommendations/{u % 50}").json()["arm"] for u in range(300)]
    assert healthy.arm("treatment").weight == pytest.approx(0.3) and not healthy.events
    assert arms.count("treatment") > 30


def test_a_canary_breaking_the_latency_slo_is_rolled_back() -> None:
    exp = _ab(0.5)
    exp.add_canary_guard("treatment", window=50, min_requests=20, max_error_rate=0.5,
                         p99_ms=10)
    for _ in range(19):
        exp.record("treatment", True, 0.002)
    assert exp.arm("treatment").weight == 0.5
    exp.record("treatment", True, 0.2)  # one slow request is over the p99 of 20
    assert exp.arm("treatment").weight == 0.0 and "p99 latency" in exp.events[0].reason


class RecordingRecommender:
    def __init__(self, inner: Recommender) -> None:
        self.inner = inner
        self.versions = inner.versions
        self.users: list[int] = []

    def recommend(self, user_id: int, k: int, deadline_s: float | None = None):
        self.users.append(user_id)
        return self.inner.recommend(user_id, k, deadline_s)


def test_shadow_scores_every_request_but_is_never_served() -> None:
    settings = Settings(serving={"k_max": 50, "n_candidates": 100},
                        ab={"mode": "shadow", "shadow_queue": 1000})
    exp = build_experiment(settings.ab)
    shadow = RecordingRecommender(_recommender(ReversedRanker()))
    exp.arm("treatment").recommender = shadow
    with _client(settings, exp) as client:
        bodies = [client.get(f"/recommendations/{u}", params={"k": 5}).json() for u in range(30)]
        exp.shadow.drain()
        metrics = client.get("/metrics").text
    assert {b["arm"] for b in bodies} == {"control"}
    assert {b["model"]["ranker"] for b in bodies} == {"7"}  # never the shadow's "8"
    assert sorted(shadow.users) == list(range(30))
    assert 'recstack_shadow_requests_total{outcome="scored"} 30.0' in metrics
    assert "recstack_shadow_duration_seconds_count 30.0" in metrics
    # Reversed ranker: overlap with the served top 5 is low, and measured.
    assert "recstack_shadow_overlap_ratio_count 30.0" in metrics


def test_the_shadow_queue_drops_when_full() -> None:
    outcomes: list[str] = []
    arm = Arm("treatment", "challenger", 0.0, recommender=_recommender(FakeRanker()))
    runner = ShadowRunner(arm, maxsize=2, on_result=lambda o, s, v: outcomes.append(o))
    accepted = [runner.submit(ShadowJob(u, 5, 0.1, [])) for u in range(5)]  # no worker yet
    assert accepted == [True, True, False, False, False]
    assert runner.counts["dropped"] == 3
    runner.start()
    runner.drain()
    runner.stop()
    assert outcomes.count("scored") == 2 and outcomes.count("dropped") == 3
