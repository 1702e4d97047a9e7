"""Policies that choose what a user is shown: the historical logging policy, the oracle, random.

The logging policy stands for the production system that ran before recstack: it knows item
popularity and a noisy estimate of each user's favourite categories, and explores a little. Its
lists give a learned model signal to learn from, and exposure bias to cope with (what it never
shows is never clicked). The oracle and random policies bound what any recommender can reach,
so online CTR can be reported as a fraction of the oracle's.

Policies read a world through :class:`~simulator.groundtruth.GroundTruth` (which
:class:`~simulator.world.World` inherits), so this module does not import the world: the world
imports it, to calibrate its bias against the logging policy.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import numpy as np

from simulator.groundtruth import GroundTruth
from simulator.streams import STREAM_POLICY

logger = logging.getLogger(__name__)

MODEL_VERSION = "logging-policy"
# Share of list slots drawn from each source: popular, favourite categories, exploration.
DEFAULT_MIX = (0.35, 0.45, 0.20)
_OVERSAMPLE = 3  # draws per slot before de-duplication; short rows are refilled exactly


@dataclass
class LoggingPolicy:
    """The previous production system: popularity + favourite categories + random exploration."""

    popularity: np.ndarray  # float64 [n_items] > 0, its (noisy) popularity estimate
    category_pref: np.ndarray  # float64 [n_users, n_categories], rows sum to 1, its taste estimate
    item_category: np.ndarray  # int [n_items]
    list_size: int
    mix: tuple[float, float, float] = DEFAULT_MIX
    model_version: str = MODEL_VERSION

    @classmethod
    def from_world(cls, world: GroundTruth, list_size: int, seed: int) -> LoggingPolicy:
        """The logging policy for ``world``; its estimates are noisy views of the ground truth."""
        if list_size < 1:
            raise ValueError(f"list_size must be >= 1, got {list_size}")
        rng = np.random.default_rng([seed, STREAM_POLICY])
        # Popular = good items, seen through noise (a heavy-tailed click-count estimate).
        popularity = np.exp(1.5 * world.item_quality + rng.normal(0.0, 0.5, size=world.n_items))
        # Category preferences: the true affinity to each category, blurred.
        cat_affinity = world.affinity_scale * (world.user_taste @ world.category_centroids.T)
        noisy = cat_affinity + rng.normal(0.0, 1.0, size=cat_affinity.shape)
        pref = np.exp(noisy - noisy.max(axis=1, keepdims=True))
        pref /= pref.sum(axis=1, keepdims=True)
        return cls(
            popularity=popularity.astype(np.float64),
            category_pref=pref.astype(np.float64),
            item_category=world.item_category.astype(np.int64),
            list_size=list_size,
        )

    def recommend(
        self, rng: np.random.Generator, user_ids: np.ndarray, available: np.ndarray
    ) -> np.ndarray:
        """Lists for a batch of sessions: int64 [len(user_ids), list_size], distinct per row.

        ``available`` is a boolean mask over items (released items). Each slot is drawn from
        the source mixture, duplicates are dropped, and the list is ordered by the policy's own
        noisy score, so its favourites sit on top (position bias confounds with its choice).
        """
        user_ids = np.asarray(user_ids, dtype=np.int64)
        avail_idx = np.flatnonzero(available)
        k = self.list_size
        if avail_idx.size < k:
            raise ValueError(f"only {avail_idx.size} items available, lists need {k}")
        n = user_ids.shape[0]
        if n == 0:
            return np.empty((0, k), dtype=np.int64)
        sampler = _Sources(self, avail_idx)
        m = _OVERSAMPLE * k
        source = rng.choice(3, size=(n, m), p=np.asarray(self.mix) / sum(self.mix))
        popular = sampler.popular(rng, (n, m))
        favourite = sampler.favourite(rng, user_ids, m)
        uniform = sampler.uniform(rng, (n, m))
        draws = np.where(source == 0, popular, np.where(source == 1, favourite, uniform))
        lists = np.empty((n, k), dtype=np.int64)
        keep = _first_occurrences(draws)
        rank = np.cumsum(keep, axis=1)
        full = rank[:, -1] >= k
        lists[full] = draws[full][(keep & (rank <= k))[full]].reshape(-1, k)
        short = np.flatnonzero(~full)
        if short.size:  # tiny catalogues: sample those rows exactly, without replacement
            lists[short] = _gumbel_topk(rng, sampler.log_weights(user_ids[short]), k, avail_idx)

        score = sampler.log_weight_of(user_ids, lists) + rng.gumbel(size=lists.shape)
        order = np.argsort(-score, axis=1, kind="stable")
        return np.take_along_axis(lists, order, axis=1)


class _Sources:
    """Vectorised samplers of the three sources, restricted to the available items."""

    def __init__(self, policy: LoggingPolicy, avail_idx: np.ndarray) -> None:
        self.policy = policy
        self.avail_idx = avail_idx
        n_cat = policy.category_pref.shape[1]
        pop = policy.popularity[avail_idx]
        self.pop_p = np.zeros(policy.popularity.shape[0])
        self.pop_p[avail_idx] = pop / pop.sum()
        self.pop_cdf = np.cumsum(pop) / pop.sum()
        cats = policy.item_category[avail_idx]
        order = np.argsort(cats, kind="stable")
        self.by_category = avail_idx[order]
        self.cat_count = np.bincount(cats, minlength=n_cat)
        self.cat_start = np.concatenate([[0], np.cumsum(self.cat_count)[:-1]])
        self.has_items = self.cat_count > 0

    def popular(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        pick = np.searchsorted(self.pop_cdf, rng.random(shape), side="right")
        return self.avail_idx[np.minimum(pick, self.avail_idx.size - 1)]

    def uniform(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        return self.avail_idx[rng.integers(0, self.avail_idx.size, size=shape)]

    def favourite(self, rng: np.random.Generator, user_ids: np.ndarray, m: int) -> np.ndarray:
        """A category from the user's estimated preferences, then a uniform item in it."""
        pref = self._category_pref(user_ids)
        n, n_cat = pref.shape
        cdf = np.cumsum(pref, axis=1)
        cdf[:, -1] = 1.0
        # Row-wise inverse CDF in one searchsorted: shift row r's CDF (and draws) by r.
        offsets = np.arange(n, dtype=np.float64)[:, None]
        flat = (cdf + offsets).ravel()
        u = rng.random((n, m)) + offsets
        cat = np.searchsorted(flat, u.ravel(), side="right").reshape(n, m)
        cat -= np.arange(n, dtype=np.int64)[:, None] * n_cat
        cat = np.clip(cat, 0, n_cat - 1)
        # Float round-off at a CDF's top can land on an empty category: use the row's favourite.
        cat = np.where(self.has_items[cat], cat, np.argmax(pref, axis=1)[:, None])
        slot = np.floor(rng.random((n, m)) * self.cat_count[cat]).astype(np.int64)
        return self.by_category[self.cat_start[cat] + slot]

    def _category_pref(self, user_ids: np.ndarray) -> np.ndarray:
        pref = self.policy.category_pref[user_ids] * self.has_items[None, :]
        return pref / pref.sum(axis=1, keepdims=True)

    def log_weights(self, user_ids: np.ndarray) -> np.ndarray:
        """log P(item | user) of the mixture over available items, [len(user_ids), n_avail]."""
        items = np.broadcast_to(self.avail_idx, (user_ids.shape[0], self.avail_idx.size))
        return self.log_weight_of(user_ids, items)

    def log_weight_of(self, user_ids: np.ndarray, items: np.ndarray) -> np.ndarray:
        a, b, c = np.asarray(self.policy.mix) / sum(self.policy.mix)
        cats = self.policy.item_category[items]
        pref = self._category_pref(user_ids)
        fav = np.take_along_axis(pref, cats, axis=1) / np.maximum(self.cat_count[cats], 1)
        return np.log(a * self.pop_p[items] + b * fav + c / self.avail_idx.size)


def _first_occurrences(draws: np.ndarray) -> np.ndarray:
    """Boolean mask [n, m]: True where a row's value appears for the first time."""
    order = np.argsort(draws, axis=1, kind="stable")
    ranked = np.take_along_axis(draws, order, axis=1)
    repeat = np.zeros_like(draws, dtype=bool)
    # Stable sort keeps equal values in row order, so every later copy follows its first.
    np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    return ~repeat


def _gumbel_topk(
    rng: np.random.Generator, log_w: np.ndarray, k: int, ids: np.ndarray
) -> np.ndarray:
    """k distinct ids per row, sampled without replacement proportionally to exp(log_w)."""
    keys = log_w + rng.gumbel(size=log_w.shape)
    top = np.argpartition(-keys, k - 1, axis=1)[:, :k]
    return ids[top]


def oracle_topk(
    world: GroundTruth,
    user_id: int,
    k: int,
    available: np.ndarray | None = None,
    at: dt.datetime | None = None,
) -> np.ndarray:
    """The k items with the highest true click probability for ``user_id``, best first (int64).

    Sorting by the logit maximises expected clicks because the position bias only decreases.
    ``at`` includes each item's freshness at that time.
    """
    logits = world.user_item_logits(user_id, at=at)
    if available is not None:
        logits = np.where(available, logits, -np.inf)
    k = _check_k(k, world.n_items if available is None else int(np.count_nonzero(available)))
    top = np.argpartition(-logits, k - 1)[:k]
    return top[np.argsort(-logits[top], kind="stable")].astype(np.int64)


def random_topk(
    rng: np.random.Generator, world: GroundTruth, k: int, available: np.ndarray | None = None
) -> np.ndarray:
    """k distinct items drawn uniformly (the floor any recommender should beat), int64."""
    ids = np.arange(world.n_items) if available is None else np.flatnonzero(available)
    k = _check_k(k, ids.size)
    return rng.choice(ids, size=k, replace=False).astype(np.int64)


def expected_ctr(world: GroundTruth, user_ids: np.ndarray, lists: np.ndarray) -> float:
    """Mean true click probability of showing ``lists[r]`` (positions 0..k-1) to ``user_ids[r]``."""
    lists = np.asarray(lists)
    if lists.ndim != 2 or lists.shape[0] != np.asarray(user_ids).shape[0]:
        raise ValueError("lists must be [len(user_ids), k]")
    positions = np.arange(lists.shape[1])[None, :]
    return float(world.click_probability(np.asarray(user_ids)[:, None], lists, positions).mean())


def _check_k(k: int, n: int) -> int:
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    return int(k)
