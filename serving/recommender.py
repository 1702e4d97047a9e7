"""The two-stage recommender: candidates, features, ranking, top k; degrades, never fails.

Each request has a deadline and each stage a budget (``Budgets``). A stage that fails, or that
finishes after its budget or the deadline, is skipped and its reason goes to ``degraded``:

- candidates unavailable/late -> the in-process popular list (``candidates_unavailable`` /
  ``candidates_late``);
- user features unavailable/late -> ranked with NaN user features (``user_features_*``);
- ranker unavailable/late -> candidate order (``ranker_unavailable`` / ``ranker_late``);
- no time left before a stage -> that stage is not started (``deadline_exceeded``);
- the user's seen history unavailable (a seen policy is on, ``settings.seen``) -> served
  without leaving seen items out (``seen_unavailable``).

With a seen reader, the items the user has seen are left out of every list (candidates,
cold start and the popular fallback alike); stage 1 is asked for as many more candidates as
the history holds, so the ranker still gets ``n_candidates``.

Features the store answered without (a flushed or lost Redis, not a new user: a new user is the
cold-start path and never reaches ranking) are named too: ``user_features_missing`` (a user the
candidate model knows, no user values), ``item_features_missing`` / ``item_features_partial``
(none, or under ``item_features_min_share``, of the candidates have item values). A ranker is
never asked to score rows without a single feature value, and a constant score list is never
served as a ranking: both fall back to candidate order (``ranker_no_features`` /
``ranker_constant_scores``).

In-process stages cannot be interrupted, so "late" means their result is not used; remote
stages (split mode) get the budget as their HTTP timeout. Every stage's duration is returned with
the result so the caller can record metrics; the recommender knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from recstack.schemas import (
    CANDIDATE_SCORE_FEATURE,
    CROSS_FEATURES,
    FEATURE_VIEW_FEATURES,
    ITEM_FEATURES,
    SOURCE_FEATURES,
    USER_FEATURES,
    cross_code,
)
from serving.errors import FeatureUnavailable
from serving.protocols import (
    Candidates,
    CandidateSource,
    ItemFeatureSource,
    Ranker,
    SeenReader,
    UserFeatureReader,
)

logger = logging.getLogger(__name__)

_NOTHING = np.empty(0, dtype=np.int64)

CANDIDATES_UNAVAILABLE = "candidates_unavailable"
CANDIDATES_LATE = "candidates_late"
RANKER_UNAVAILABLE = "ranker_unavailable"
RANKER_LATE = "ranker_late"
USER_FEATURES_UNAVAILABLE = "user_features_unavailable"
USER_FEATURES_LATE = "user_features_late"
ITEM_FEATURES_UNAVAILABLE = "item_features_unavailable"
USER_FEATURES_MISSING = "user_features_missing"
ITEM_FEATURES_MISSING = "item_features_missing"
ITEM_FEATURES_PARTIAL = "item_features_partial"
RANKER_NO_FEATURES = "ranker_no_features"
RANKER_CONSTANT_SCORES = "ranker_constant_scores"
DEADLINE_EXCEEDED = "deadline_exceeded"
SEEN_UNAVAILABLE = "seen_unavailable"
REASONS = (
    CANDIDATES_UNAVAILABLE, CANDIDATES_LATE, RANKER_UNAVAILABLE, RANKER_LATE,
    USER_FEATURES_UNAVAILABLE, USER_FEATURES_LATE, ITEM_FEATURES_UNAVAILABLE, DEADLINE_EXCEEDED,
    USER_FEATURES_MISSING, ITEM_FEATURES_MISSING, ITEM_FEATURES_PARTIAL, RANKER_NO_FEATURES,
    RANKER_CONSTANT_SCORES, SEEN_UNAVAILABLE,
)
# Under this share of a request's candidates with item values the answer says
# ``item_features_partial`` (new items wait for the next materialization; most should not).
ITEM_FEATURES_MIN_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class Budgets:
    """Seconds each stage may take; ``deadline_s`` bounds the whole request."""

    deadline_s: float = 0.1
    candidates_s: float = 0.01
    user_features_s: float = 0.005
    ranking_s: float = 0.02
    item_features_min_share: float = ITEM_FEATURES_MIN_SHARE  # see ``item_features_partial``


@dataclass(frozen=True, slots=True)
class RankedItem:
    item_id: int
    score: float
    source: str


@dataclass(slots=True)
class Recommendation:
    """What ``Recommender.recommend`` returns: the list, why it is degraded, stage timings."""

    items: list[RankedItem]
    degraded: list[str] = field(default_factory=list)
    cold_start: bool = False
    stage_seconds: dict[str, float] = field(default_factory=dict)
    n_candidates: int = 0


@dataclass(frozen=True, slots=True)
class ColumnPlan:
    """Where each booster column comes from: (source index, matrix column) pairs per part."""

    n_columns: int
    user: tuple[np.ndarray, np.ndarray]
    item: tuple[np.ndarray, np.ndarray]
    category: tuple[np.ndarray, np.ndarray]
    cand: int
    sources: dict[str, int]
    unavailable: tuple[str, ...]  # known features no part provides here: NaN columns
    crosses: tuple[tuple[int, int, int], ...] = ()  # (column, part a column, part b column)

    @property
    def needs_categories(self) -> bool:
        return len(self.category[0]) > 0

    @property
    def stored_columns(self) -> np.ndarray:
        """The matrix columns that come from the feature store (user, item, user x category):
        with all of them NaN the ranker would score on candidate score and source alone."""
        return np.concatenate([self.user[1], self.item[1], self.category[1]])


def _pairs(pairs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    src = np.array([p[0] for p in pairs], dtype=np.int64)
    dst = np.array([p[1] for p in pairs], dtype=np.int64)
    return src, dst


def _column_plan(
    names: Sequence[str],
    user_names: Sequence[str] = USER_FEATURES,
    item_names: Sequence[str] = ITEM_FEATURES,
    category_names: Sequence[str] = (),
) -> ColumnPlan:
    """Map every booster column to the part that provides it: the user vector (``user_names``
    order), the item matrix (``item_names``), the user x category rows (``category_names``),
    the candidate score, a source one-hot or a cross of two other columns. Known stored
    features that no part provides become NaN columns (as in training for a missing
    snapshot); unknown names raise ValueError."""
    user_pos = {n: i for i, n in enumerate(user_names)}
    item_pos = {n: i for i, n in enumerate(item_names)}
    cat_pos = {n: i for i, n in enumerate(category_names)}
    source_of = {feature: source for source, feature in SOURCE_FEATURES.items()}
    stored = {n for group in FEATURE_VIEW_FEATURES.values() for n in group}
    user, item, cat, sources, unavailable, cand = [], [], [], {}, [], -1
    crosses = []
    for col, name in enumerate(names):
        if name in user_pos:
            user.append((user_pos[name], col))
        elif name in item_pos:
            item.append((item_pos[name], col))
        elif name in cat_pos:
            cat.append((cat_pos[name], col))
        elif name == CANDIDATE_SCORE_FEATURE:
            cand = col
        elif name in source_of:
            sources[source_of[name]] = col
        elif name in CROSS_FEATURES:
            parts = [p for p in CROSS_FEATURES[name] if p in names]
            if len(parts) < 2:
                raise ValueError(f"ranker feature {name!r} needs the columns "
                                 f"{list(CROSS_FEATURES[name])}")
            crosses.append((col, list(names).index(parts[0]), list(names).index(parts[1])))
        elif name in stored:
            unavailable.append(name)
        else:
            raise ValueError(f"ranker feature {name!r} is not served")
    return ColumnPlan(len(names), _pairs(user), _pairs(item), _pairs(cat), cand, sources,
                      tuple(unavailable), tuple(crosses))


@dataclass(slots=True)
class Scored:
    """What a ``Scorer`` returns: one score per candidate (or None: skipped), and why."""

    scores: np.ndarray | None
    degraded: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)


class LocalScorer:
    """Stage 2 in this process: user features (one Redis read), item features (the in-process
    table), the ranker on the NumPy batch. The ranking service runs exactly this."""

    def __init__(
        self,
        ranker: Ranker | None,
        user_features: UserFeatureReader | None,
        item_features: ItemFeatureSource | None,
        user_features_budget_s: float = 0.005,
        item_features_min_share: float = ITEM_FEATURES_MIN_SHARE,
    ) -> None:
        self.ranker = ranker
        self.user_features = user_features
        self.item_features = item_features
        self.user_features_budget_s = user_features_budget_s
        self.item_features_min_share = item_features_min_share
        self.version = str(ranker.version) if ranker is not None else "none"
        self._user_names = list(getattr(user_features, "names", USER_FEATURES))
        self._category_names = list(getattr(user_features, "category_names", ()))
        self._item_names = list(getattr(item_features, "names", ITEM_FEATURES))
        self._plan = (
            _column_plan(ranker.feature_names, self._user_names, self._item_names,
                         self._category_names) if ranker is not None else None
        )
        if self._plan is not None and self._plan.unavailable:
            logger.warning("ranker v%s: features %s are not provided here; scored as missing",
                           self.version, list(self._plan.unavailable))

    def rank(self, user_id: int, cands: Candidates, budget_s: float) -> Scored:
        """Scores of ``cands`` for ``user_id``; ``scores`` None when the ranker cannot score
        (``ranker_unavailable``) or finishes after ``budget_s`` (``ranker_late``)."""
        end = time.perf_counter() + budget_s
        timings: dict[str, float] = {}
        degraded: list[str] = []

        t = time.perf_counter()
        categories = None
        if self.item_features is None:
            item_mat = np.full((len(cands), len(self._item_names)), np.nan, dtype=np.float32)
            degraded.append(ITEM_FEATURES_UNAVAILABLE)
        else:
            item_mat = self.item_features.lookup(cands.item_ids)
            if (self._plan is not None and self._plan.needs_categories
                    and hasattr(self.item_features, "categories_of")
                    and hasattr(self.user_features, "read_with_categories")):
                categories = self.item_features.categories_of(cands.item_ids)
            self._check_item_values(item_mat, degraded)
        timings["item_features"] = time.perf_counter() - t
        user_vec, cat_mat = self._user_vector(user_id, categories, end, timings, degraded)

        if self.ranker is None or self._plan is None:
            degraded.append(RANKER_UNAVAILABLE)
            return Scored(None, degraded, timings)
        if end - time.perf_counter() <= 0:
            degraded.append(DEADLINE_EXCEEDED)
            return Scored(None, degraded, timings)
        t = time.perf_counter()
        try:
            x = self._matrix(cands, user_vec, item_mat, cat_mat)
            if _no_feature_values(x, self._plan):
                # Rows of NaNs get one leaf each: a constant list dressed up as a ranking.
                degraded.append(RANKER_NO_FEATURES)
                return Scored(None, degraded, timings)
            scores = np.asarray(self.ranker.score(x))
            if scores.shape != (len(cands),):
                raise ValueError(f"ranker returned shape {scores.shape} for {len(cands)} rows")
        except Exception:  # a broken ranker must not break the response
            logger.warning("ranker failed; serving candidate order", exc_info=True)
            degraded.append(RANKER_UNAVAILABLE)
            return Scored(None, degraded, timings)
        finally:
            timings["ranking"] = time.perf_counter() - t
        if time.perf_counter() > end:
            degraded.append(RANKER_LATE)
            return Scored(None, degraded, timings)
        if _no_spread(scores):
            degraded.append(RANKER_CONSTANT_SCORES)
            return Scored(None, degraded, timings)
        return Scored(scores, degraded, timings)

    def _check_item_values(self, item_mat: np.ndarray, degraded: list[str]) -> None:
        """Name candidates without item values in the columns the ranker reads: none
        (``item_features_missing``) or under the minimum share (``item_features_partial``)."""
        if self._plan is None or not len(self._plan.item[0]) or not len(item_mat):
            return
        read = item_mat[:, self._plan.item[0]]
        share = float(np.isfinite(read).any(axis=1).mean())
        if share == 0.0:
            degraded.append(ITEM_FEATURES_MISSING)
        elif share < self.item_features_min_share:
            degraded.append(ITEM_FEATURES_PARTIAL)

    def _user_vector(
        self, user_id: int, categories: np.ndarray | None, end: float,
        timings: dict[str, float], degraded: list[str],
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(the user's features, the user x category rows of each candidate or None), NaNs
        (reason recorded) when unavailable, late or no time. One round trip either way."""
        missing = np.full(len(self._user_names), np.nan, dtype=np.float32)
        if self.user_features is None:
            degraded.append(USER_FEATURES_UNAVAILABLE)
            return missing, None
        budget = min(self.user_features_budget_s, end - time.perf_counter())
        if budget <= 0:
            degraded.append(DEADLINE_EXCEEDED)
            return missing, None
        t = time.perf_counter()
        cat_mat = None
        try:
            if categories is not None:
                wanted = np.unique(categories[categories >= 0])
                vec, rows = self.user_features.read_with_categories(  # type: ignore[attr-defined]
                    user_id, wanted.tolist())
                cat_mat = np.full((len(categories), len(self._category_names)), np.nan,
                                  dtype=np.float32)
                known = categories >= 0
                if len(wanted):
                    cat_mat[known] = rows[np.searchsorted(wanted, categories[known])]
            else:
                vec = self.user_features.read(user_id)
        except FeatureUnavailable as exc:
            logger.debug("degraded: %s", exc)
            degraded.append(USER_FEATURES_UNAVAILABLE)
            vec, cat_mat = missing, None
        timings["user_features"] = elapsed = time.perf_counter() - t
        if elapsed > budget and vec is not missing:
            degraded.append(USER_FEATURES_LATE)
            return missing, None
        if vec is not missing and len(vec) and not np.isfinite(vec).any():
            # The store answered without this user, whom the candidate model knows (a new user
            # is cold start and never ranked): the store is empty or lost, not the user new.
            degraded.append(USER_FEATURES_MISSING)
        return vec, cat_mat

    def _matrix(self, cands: Candidates, user_vec: np.ndarray, item_mat: np.ndarray,
                cat_mat: np.ndarray | None = None) -> np.ndarray:
        plan = self._plan
        assert plan is not None
        x = np.full((len(cands), plan.n_columns), np.nan, dtype=np.float32)
        src, dst = plan.user
        if len(dst):
            x[:, dst] = user_vec[src]
        src, dst = plan.item
        if len(dst):
            x[:, dst] = item_mat[:, src]
        src, dst = plan.category
        if len(dst) and cat_mat is not None:
            x[:, dst] = cat_mat[:, src]
        if plan.cand >= 0:
            x[:, plan.cand] = cands.scores
        if plan.sources:
            sources = cands.sources()
            for source, col in plan.sources.items():
                x[:, col] = sources == source
        for col, a, b in plan.crosses:
            x[:, col] = cross_code(x[:, a], x[:, b])
        return x


class Recommender:
    """Stage 1 (a ``CandidateSource``) then stage 2 (a ``Scorer``) into top-k lists.

    In-process mode composes ``LocalScorer(ranker, user_features, item_features)``; split mode
    passes HTTP clients of the candidate and ranking services (``serving.remote``): the same
    deadline, budget and fallback logic runs in both. ``popular`` (item ids, most popular first)
    is the in-process fallback when candidates fail.
    """

    def __init__(
        self,
        candidates: CandidateSource,
        ranker: Ranker | None,
        user_features: UserFeatureReader | None,
        item_features: ItemFeatureSource | None,
        n_candidates: int = 500,
        deadline_s: float = 0.1,
        budgets: Budgets | None = None,
        popular: np.ndarray | None = None,
        scorer: Scorer | None = None,
        seen: SeenReader | None = None,
    ) -> None:
        self.candidate_source = candidates
        self.seen = seen
        self.n_candidates = n_candidates
        self.budgets = budgets or Budgets(deadline_s=deadline_s)
        self.deadline_s = self.budgets.deadline_s
        self.scorer: Scorer = scorer or LocalScorer(
            ranker, user_features, item_features, self.budgets.user_features_s,
            self.budgets.item_features_min_share,
        )
        self.popular = (
            np.asarray(popular, dtype=np.int64) if popular is not None
            else np.asarray(getattr(candidates, "popular", np.empty(0)), dtype=np.int64)
        )

    @property
    def versions(self) -> dict[str, str]:
        return {
            "candidates": str(self.candidate_source.version),
            "ranker": str(self.scorer.version),
        }

    def recommend(self, user_id: int, k: int, deadline_s: float | None = None) -> Recommendation:
        """Top ``k`` items for ``user_id`` within ``deadline_s`` (default: the budgets')."""
        b = self.budgets
        start = time.perf_counter()
        end = start + (b.deadline_s if deadline_s is None else deadline_s)
        timings: dict[str, float] = {}
        degraded: list[str] = []

        seen = self._seen_items(user_id, timings, degraded)
        n = self.n_candidates
        cands = self._candidates(user_id, min(b.candidates_s, end - start), timings, degraded,
                                 n + len(seen))
        if cands is None:
            cands = _popular_candidates(self.popular, n + len(seen)).without(seen, n)
            return Recommendation(_in_order(cands, k), degraded, False, timings, len(cands))
        cands = cands.without(seen, n)
        if cands.cold_start or len(cands) == 0:
            return Recommendation(_in_order(cands, k), degraded, cands.cold_start, timings,
                                  len(cands))

        budget = min(b.ranking_s, end - time.perf_counter())
        if budget <= 0:
            degraded.append(DEADLINE_EXCEEDED)
            return Recommendation(_in_order(cands, k), degraded, False, timings, len(cands))
        t = time.perf_counter()
        try:
            scored = self.scorer.rank(user_id, cands, budget)
        except Exception as exc:  # the remote scorer failed or timed out
            logger.debug("ranking unavailable: %s", exc)
            timings["ranking"] = time.perf_counter() - t
            late = isinstance(exc, TimeoutError)
            degraded.append(RANKER_LATE if late else RANKER_UNAVAILABLE)
            return Recommendation(_in_order(cands, k), degraded, False, timings, len(cands))
        timings.update(scored.stage_seconds)
        degraded.extend(scored.degraded)
        if scored.scores is None:
            return Recommendation(_in_order(cands, k), degraded, False, timings, len(cands))
        scores = scored.scores
        top = _top_k(scores, k)
        ids = cands.item_ids
        items = [RankedItem(int(ids[i]), float(scores[i]), cands.source(i)) for i in top.tolist()]
        return Recommendation(items, degraded, False, timings, len(cands))

    def _seen_items(self, user_id: int, timings: dict[str, float],
                    degraded: list[str]) -> np.ndarray:
        """The items to leave out (none without a reader, or when it fails: said so)."""
        if self.seen is None:
            return _NOTHING
        t = time.perf_counter()
        try:
            return self.seen.seen(user_id)
        except Exception as exc:  # the store did not answer: serve, unfiltered, and say so
            logger.debug("seen history unavailable: %s", exc)
            degraded.append(SEEN_UNAVAILABLE)
            return _NOTHING
        finally:
            timings["seen"] = time.perf_counter() - t

    def _candidates(
        self, user_id: int, budget: float, timings: dict[str, float], degraded: list[str],
        n: int,
    ) -> Candidates | None:
        """Stage 1, or None (reason recorded) when it failed or came back late."""
        if budget <= 0:
            degraded.append(DEADLINE_EXCEEDED)
            return None
        t = time.perf_counter()
        try:
            if getattr(self.candidate_source, "remote", False):
                cands = self.candidate_source.candidates(  # type: ignore[call-arg]
                    user_id, n, timeout_s=budget
                )
            else:
                cands = self.candidate_source.candidates(user_id, n)
        except Exception as exc:
            logger.debug("candidates unavailable: %s", exc)
            timings["candidates"] = time.perf_counter() - t
            degraded.append(CANDIDATES_LATE if isinstance(exc, TimeoutError)
                            else CANDIDATES_UNAVAILABLE)
            return None
        timings["candidates"] = elapsed = time.perf_counter() - t
        if elapsed > budget:
            degraded.append(CANDIDATES_LATE)
            return None
        return cands


class Scorer(Protocol):
    """Stage 2: scores for the candidates of one user within ``budget_s``."""

    version: str

    def rank(self, user_id: int, cands: Candidates, budget_s: float) -> Scored: ...


def _popular_candidates(popular: np.ndarray, n: int) -> Candidates:
    ids = popular[:n]
    return Candidates(ids, np.full(len(ids), np.nan, np.float32), n_ann=0)


def _no_feature_values(x: np.ndarray, plan: ColumnPlan) -> bool:
    """No row has a single value in a column from the feature store (a ranker reading none of
    them, candidate score only, is not judged)."""
    cols = plan.stored_columns
    return bool(len(cols)) and not np.isfinite(x[:, cols]).any()


def _no_spread(scores: np.ndarray) -> bool:
    """Two or more candidates and at most one distinct finite score: nothing to rank by."""
    if len(scores) < 2:
        return False
    finite = scores[np.isfinite(scores)]
    return len(finite) < 2 or float(finite.max()) == float(finite.min())


def _top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest scores, best first."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def _in_order(cands: Candidates, k: int) -> list[RankedItem]:
    """The first ``k`` candidates as they are; scores made finite and non-increasing.

    Unknown scores (cold start, popular items without an embedding) become a rank-based score
    below every known one, so clients can always sort and compare.
    """
    n = min(k, len(cands))
    scores = cands.scores[:n].astype(np.float64)
    finite = np.isfinite(scores)
    if not finite.all():
        floor = float(scores[finite].min()) if finite.any() else 1.0
        rank_scores = floor - (np.arange(n) + 1) / (n + 1)
        scores = np.where(finite, scores, rank_scores)
    scores = np.minimum.accumulate(scores) if n else scores
    return [
        RankedItem(int(cands.item_ids[i]), float(scores[i]), cands.source(i)) for i in range(n)
    ]
