"""The ground-truth click model over a world's latent state.

:class:`GroundTruth` holds the click model (logits, position bias, freshness, fatigue) and
declares the latent arrays and knobs it reads; :class:`simulator.world.World` is the dataclass
that stores them and inherits the model. The policies (:mod:`simulator.policy`) are written
against :class:`GroundTruth`, so they need not import the world, while the world imports the
logging policy to calibrate its bias against it: the imports point one way.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

US = 1_000_000
DAY_US = 86_400 * US
_CHUNK = 1 << 20  # rows per vectorised block in logits (bounds peak memory)


def epoch_us(when: dt.datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware datetime."""
    return int(round(when.timestamp() * US))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


class GroundTruth:
    """P(click) from the latent state declared below (stored by a subclass, e.g. ``World``)."""

    category_centroids: np.ndarray  # float32 [n_categories, dim], unit norm
    category_boost: np.ndarray  # float32 [n_categories], additive logit
    item_category: np.ndarray  # int32 [n_items]
    item_quality: np.ndarray  # float32 [n_items], additive logit
    item_embedding: np.ndarray  # float32 [n_items, dim], unit norm
    item_created_us: np.ndarray  # int64 [n_items], UTC microseconds since the epoch
    user_taste: np.ndarray  # float32 [n_users, dim], unit norm
    user_bias: np.ndarray  # float32 [n_users], additive logit
    bias: float  # global logit offset
    affinity_scale: float  # logits per unit of cosine(taste, item)
    position_exponent: float  # examination probability (1 + position) ** -position_exponent
    freshness_boost: float
    freshness_days: float
    fatigue: float  # logit lost per recent impression of the same item to the same user

    @property
    def n_users(self) -> int:
        return int(self.user_taste.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_embedding.shape[0])

    def freshness(self, item_ids: np.ndarray, at_us: np.ndarray | int) -> np.ndarray:
        """Logit bonus of items at time ``at_us``: ``freshness_boost * exp(-age / freshness_days)``."""
        items = np.asarray(item_ids, dtype=np.int64)
        age_days = (np.asarray(at_us, np.int64) - self.item_created_us[items]) / DAY_US
        return self.freshness_boost * np.exp(-np.maximum(age_days, 0.0) / self.freshness_days)

    def logits(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        at_us: np.ndarray | int | None = None,
        seen: np.ndarray | None = None,
    ) -> np.ndarray:
        """Click logit without the position effect, for aligned 1-d id arrays.

        ``at_us`` (epoch µs, scalar or aligned) adds the freshness of each item at that time;
        ``seen`` (aligned counts of recent impressions of that item to that user) subtracts
        ``fatigue`` per impression. Without them the logit is the timeless affinity.
        """
        users, items = self._check_ids(user_ids, item_ids)
        at = None if at_us is None else np.broadcast_to(np.asarray(at_us, np.int64), users.shape)
        seen_ = None if seen is None else np.broadcast_to(np.asarray(seen), users.shape)
        out = np.empty(users.shape[0], dtype=np.float64)
        for lo in range(0, users.shape[0], _CHUNK):
            part = slice(lo, lo + _CHUNK)
            u, i = users[part], items[part]
            affinity = np.einsum("nd,nd->n", self.user_taste[u], self.item_embedding[i])
            out[part] = self.affinity_scale * affinity + self.item_quality[i]
            out[part] += self.user_bias[u] + self.bias + self.category_boost[self.item_category[i]]
            if at is not None:
                out[part] += self.freshness(i, at[part])
            if seen_ is not None:
                out[part] -= self.fatigue * seen_[part]
        return out

    def user_item_logits(self, user_id: int, at: dt.datetime | None = None) -> np.ndarray:
        """Click logits of one user for every item (no position, no fatigue), float64 [n_items].

        ``at`` adds each item's freshness at that time.
        """
        if not 0 <= int(user_id) < self.n_users:
            raise ValueError(f"unknown user_id {user_id} (world has {self.n_users} users)")
        affinity = self.item_embedding @ self.user_taste[int(user_id)]
        out = (
            self.affinity_scale * affinity.astype(np.float64)
            + self.item_quality
            + self.category_boost[self.item_category]
            + self.user_bias[int(user_id)]
            + self.bias
        )
        if at is not None:
            out += self.freshness(np.arange(self.n_items), epoch_us(at))
        return out

    def position_bias(self, positions: np.ndarray) -> np.ndarray:
        """Probability that a user examines the slot at ``positions`` (0 = top)."""
        positions = np.asarray(positions)
        if positions.size and positions.min() < 0:
            raise ValueError("positions must be >= 0")
        return (1.0 + positions) ** -self.position_exponent

    def click_probability(
        self,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        positions: np.ndarray,
        at_us: np.ndarray | int | None = None,
        seen: np.ndarray | None = None,
    ) -> np.ndarray:
        """Ground-truth P(click) = sigmoid(affinity + quality + biases - fatigue) x position bias.

        Arguments broadcast against each other; the result has their broadcast shape. See
        :meth:`logits` for ``at_us`` (freshness) and ``seen`` (fatigue).
        """
        extra = [np.asarray(x) for x in (at_us, seen) if x is not None]
        u, i, p, *rest = np.broadcast_arrays(
            np.asarray(user_ids), np.asarray(item_ids), np.asarray(positions), *extra
        )
        at = rest.pop(0).ravel() if at_us is not None else None
        seen_ = rest.pop(0).ravel() if seen is not None else None
        logit = self.logits(u.ravel(), i.ravel(), at_us=at, seen=seen_)
        prob = sigmoid(logit) * self.position_bias(p.ravel())
        return prob.reshape(u.shape)

    def _check_ids(
        self, user_ids: np.ndarray, item_ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        users = np.asarray(user_ids, dtype=np.int64).ravel()
        items = np.asarray(item_ids, dtype=np.int64).ravel()
        if users.shape != items.shape:
            raise ValueError(
                f"user_ids and item_ids differ in length: {users.shape} vs {items.shape}"
            )
        if users.size:
            if users.min() < 0 or users.max() >= self.n_users:
                raise ValueError(f"user ids must be in [0, {self.n_users})")
            if items.min() < 0 or items.max() >= self.n_items:
                raise ValueError(f"item ids must be in [0, {self.n_items})")
        return users, items
