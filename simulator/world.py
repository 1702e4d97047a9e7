"""The simulated world: a catalogue, a population of users, and the ground-truth click model.

Ids are dense: item ``i`` and user ``u`` are row ``i`` / ``u`` of the arrays below, so the ids
in the lake index the world directly. Serving and training never see this module's latent
state; only the simulator and the load tests (which play simulated users) do.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from recstack.clock import day_start
from recstack.settings import SimSettings

logger = logging.getLogger(__name__)

EMBEDDING_DIM = 16
AFFINITY_SCALE = 4.0  # logits per unit of cosine(taste, item): the signal a model can learn
POSITION_EXPONENT = 0.7  # examination probability (1 + position) ** -0.7
TARGET_CTR = 0.05  # overall CTR of the logging policy that World.generate calibrates to
NEW_ITEM_FRACTION = 0.1  # items released during the simulated days (cold start, freshness)
COUNTRIES = ("us", "in", "br", "de", "gb", "fr")
COUNTRY_SHARE = (0.35, 0.2, 0.15, 0.1, 0.1, 0.1)
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_SHARE = (0.6, 0.3, 0.1)

_US = 1_000_000
_DAY_US = 86_400 * _US
_CHUNK = 1 << 20  # rows per vectorised block in click_probability (bounds peak memory)
_FORMAT_VERSION = 1
_ARRAYS_FILE = "world.npz"
_META_FILE = "world.json"

# Independent random streams derived from the seed, so that e.g. changing the number of
# simulated days does not change the world.
STREAM_WORLD = 0
STREAM_POLICY = 1
STREAM_DAYS = 2
STREAM_CALIBRATION = 3


def epoch_us(when: dt.datetime) -> int:
    """Microseconds since the Unix epoch of a timezone-aware datetime."""
    return int(round(when.timestamp() * _US))


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class World:
    """Latent state of the simulated world (arrays indexed by id) plus the click model's knobs."""

    seed: int
    start_date: dt.date
    n_days: int
    category_centroids: np.ndarray  # float32 [n_categories, dim], unit norm
    item_category: np.ndarray  # int32 [n_items]
    item_quality: np.ndarray  # float32 [n_items], additive logit
    item_embedding: np.ndarray  # float32 [n_items, dim], unit norm
    item_created_us: np.ndarray  # int64 [n_items], UTC microseconds since the epoch
    user_taste: np.ndarray  # float32 [n_users, dim], unit norm
    user_favourites: np.ndarray  # int32 [n_users, 3], favourite categories, -1 = none
    user_activity: np.ndarray  # float32 [n_users], expected sessions per day
    user_country: np.ndarray  # int8 [n_users], index into COUNTRIES
    user_device: np.ndarray  # int8 [n_users], index into DEVICES
    user_bias: np.ndarray  # float32 [n_users], additive logit (some users click more)
    bias: float = 0.0  # global logit offset, calibrated to TARGET_CTR
    affinity_scale: float = AFFINITY_SCALE
    position_exponent: float = POSITION_EXPONENT

    @property
    def n_users(self) -> int:
        return int(self.user_taste.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_embedding.shape[0])

    @property
    def n_categories(self) -> int:
        return int(self.category_centroids.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_embedding.shape[1])

    @property
    def item_created_at(self) -> np.ndarray:
        """Release times as ``datetime64[us]`` (UTC)."""
        return self.item_created_us.astype("datetime64[us]")

    # --- generation -----------------------------------------------------------------------

    @classmethod
    def generate(cls, sim: SimSettings, target_ctr: float = TARGET_CTR) -> World:
        """A new world drawn from ``sim.seed`` (same seed -> same world).

        Items get a category, a latent quality and embedding, and a release time (most before
        ``sim.start_date``, ``NEW_ITEM_FRACTION`` during the simulated days). Users get a taste
        near 1-3 favourite categories, a lognormal activity around
        ``sim.sessions_per_user_per_day`` and a segment (country, device). The global bias is
        then calibrated so the logging policy's CTR is about ``target_ctr``.
        """
        if not 0.0 < target_ctr < 0.5:
            raise ValueError(f"target_ctr must be in (0, 0.5), got {target_ctr}")
        rng = np.random.default_rng([sim.seed, STREAM_WORLD])
        dim, n_cat = EMBEDDING_DIM, sim.n_categories

        centroids = _normalize(rng.standard_normal((n_cat, dim)))
        # Some categories are bigger and more liked than others (Zipf-like shares).
        cat_share = 1.0 / np.arange(1, n_cat + 1) ** 0.6
        cat_share = rng.permutation(cat_share / cat_share.sum())

        item_category = rng.choice(n_cat, size=sim.n_items, p=cat_share)
        item_noise = rng.standard_normal((sim.n_items, dim)) * (0.7 / np.sqrt(dim))
        item_embedding = _normalize(centroids[item_category] + item_noise)
        item_quality = rng.normal(0.0, 0.6, size=sim.n_items)
        item_created_us = _release_times(rng, sim)

        user_favourites = _favourite_categories(rng, sim.n_users, cat_share)
        weights = rng.gamma(1.0, size=user_favourites.shape) * (user_favourites >= 0)
        weights /= weights.sum(axis=1, keepdims=True)
        fav_centroids = centroids[np.maximum(user_favourites, 0)]  # [n_users, 3, dim]
        taste = np.einsum("uf,ufd->ud", weights, fav_centroids)
        taste += rng.standard_normal((sim.n_users, dim)) * (0.5 / np.sqrt(dim))
        user_taste = _normalize(taste)

        sigma = 0.75  # lognormal spread; mean stays at sessions_per_user_per_day
        user_activity = sim.sessions_per_user_per_day * np.exp(
            sigma * rng.standard_normal(sim.n_users) - sigma**2 / 2
        )
        user_country = rng.choice(len(COUNTRIES), size=sim.n_users, p=COUNTRY_SHARE)
        user_device = rng.choice(len(DEVICES), size=sim.n_users, p=DEVICE_SHARE)
        country_offset = rng.normal(0.0, 0.15, size=len(COUNTRIES))
        user_bias = country_offset[user_country] + rng.normal(0.0, 0.3, size=sim.n_users)

        world = cls(
            seed=sim.seed,
            start_date=sim.start_date,
            n_days=sim.days,
            category_centroids=centroids.astype(np.float32),
            item_category=item_category.astype(np.int32),
            item_quality=item_quality.astype(np.float32),
            item_embedding=item_embedding.astype(np.float32),
            item_created_us=item_created_us,
            user_taste=user_taste.astype(np.float32),
            user_favourites=user_favourites.astype(np.int32),
            user_activity=user_activity.astype(np.float32),
            user_country=user_country.astype(np.int8),
            user_device=user_device.astype(np.int8),
            user_bias=user_bias.astype(np.float32),
        )
        world.bias = world._calibrated_bias(sim, target_ctr)
        logger.info(
            "world seed=%d: %d users, %d items, %d categories, bias=%.3f",
            sim.seed, world.n_users, world.n_items, world.n_categories, world.bias,
        )
        return world

    def _calibrated_bias(self, sim: SimSettings, target_ctr: float) -> float:
        """The global bias at which the logging policy's expected CTR is ``target_ctr``."""
        # Imported here because the logging policy is defined over a World; calibrating
        # against it (rather than random pairs) is what makes the lake's CTR land on target.
        from simulator.policy import LoggingPolicy

        rng = np.random.default_rng([sim.seed, STREAM_CALIBRATION])
        policy = LoggingPolicy.from_world(self, sim.list_size, sim.seed)
        n_sessions = 4000
        weight = self.user_activity / self.user_activity.sum()
        users = rng.choice(self.n_users, size=n_sessions, p=weight)
        lists = policy.recommend(rng, users, self.available_items(day_start(self.start_date)))
        positions = np.broadcast_to(np.arange(lists.shape[1]), lists.shape)
        # Without the current bias, so calibrating a world twice gives the same answer.
        logits = self.logits(np.repeat(users, lists.shape[1]), lists.ravel()) - self.bias
        examine = (1.0 + positions.ravel()) ** -self.position_exponent

        lo, hi = -20.0, 20.0  # expected CTR is increasing in the bias: bisect
        for _ in range(60):
            mid = (lo + hi) / 2
            if float(np.mean(_sigmoid(logits + mid) * examine)) < target_ctr:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    # --- ground truth ---------------------------------------------------------------------

    def available_items(self, at: dt.datetime) -> np.ndarray:
        """Boolean mask [n_items]: items released strictly before ``at``."""
        return self.item_created_us < epoch_us(at)

    def logits(self, user_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
        """Click logit without the position effect, for aligned 1-d id arrays."""
        users, items = self._check_ids(user_ids, item_ids)
        out = np.empty(users.shape[0], dtype=np.float64)
        for lo in range(0, users.shape[0], _CHUNK):
            u, i = users[lo : lo + _CHUNK], items[lo : lo + _CHUNK]
            affinity = np.einsum("nd,nd->n", self.user_taste[u], self.item_embedding[i])
            out[lo : lo + _CHUNK] = self.affinity_scale * affinity + self.item_quality[i]
            out[lo : lo + _CHUNK] += self.user_bias[u] + self.bias
        return out

    def user_item_logits(self, user_id: int) -> np.ndarray:
        """Click logits of one user for every item (position effect excluded), float64 [n_items]."""
        if not 0 <= int(user_id) < self.n_users:
            raise ValueError(f"unknown user_id {user_id} (world has {self.n_users} users)")
        affinity = self.item_embedding @ self.user_taste[int(user_id)]
        return (
            self.affinity_scale * affinity.astype(np.float64)
            + self.item_quality
            + self.user_bias[int(user_id)]
            + self.bias
        )

    def position_bias(self, positions: np.ndarray) -> np.ndarray:
        """Probability that a user examines the slot at ``positions`` (0 = top)."""
        positions = np.asarray(positions)
        if positions.size and positions.min() < 0:
            raise ValueError("positions must be >= 0")
        return (1.0 + positions) ** -self.position_exponent

    def click_probability(
        self, user_ids: np.ndarray, item_ids: np.ndarray, positions: np.ndarray
    ) -> np.ndarray:
        """Ground-truth P(click) = sigmoid(affinity + quality + biases) x position bias.

        Arguments broadcast against each other; the result has their broadcast shape.
        """
        u, i, p = np.broadcast_arrays(
            np.asarray(user_ids), np.asarray(item_ids), np.asarray(positions)
        )
        prob = _sigmoid(self.logits(u.ravel(), i.ravel())) * self.position_bias(p.ravel())
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

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: Path) -> Path:
        """Write the world into directory ``path`` (``world.npz`` + ``world.json``); returns it."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        arrays = {k: v for k, v in values.items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in values.items() if k not in arrays}
        meta["start_date"] = self.start_date.isoformat()
        meta["format_version"] = _FORMAT_VERSION
        meta["countries"], meta["devices"] = list(COUNTRIES), list(DEVICES)
        meta["n_users"], meta["n_items"] = self.n_users, self.n_items
        # Write to temporaries then rename, so a reader never loads half a world.
        tmp_npz = path / f".{_ARRAYS_FILE}.tmp.npz"
        np.savez_compressed(tmp_npz, **arrays)
        tmp_npz.replace(path / _ARRAYS_FILE)
        tmp_json = path / f".{_META_FILE}.tmp"
        tmp_json.write_text(json.dumps(meta, indent=2, sort_keys=True))
        tmp_json.replace(path / _META_FILE)
        return path

    @classmethod
    def load(cls, path: Path) -> World:
        """Read a world written by :meth:`save` from directory ``path``."""
        path = Path(path)
        meta_file, arrays_file = path / _META_FILE, path / _ARRAYS_FILE
        if not meta_file.exists() or not arrays_file.exists():
            raise FileNotFoundError(
                f"no simulated world in {path} (expected {_META_FILE} and {_ARRAYS_FILE}; "
                "run `recstack simulate` first)"
            )
        meta = json.loads(meta_file.read_text())
        if meta.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{meta_file}: unsupported world format {meta.get('format_version')}")
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in meta.items() if k in names}
        kwargs["start_date"] = dt.date.fromisoformat(meta["start_date"])
        with np.load(arrays_file) as npz:
            kwargs.update({k: npz[k] for k in npz.files if k in names})
        return cls(**kwargs)


def _release_times(rng: np.random.Generator, sim: SimSettings) -> np.ndarray:
    """Item release times (int64 epoch µs): a back catalogue plus items released during the run."""
    start_us = epoch_us(day_start(sim.start_date))
    offsets = -rng.uniform(1.0, 365.0, size=sim.n_items) * _DAY_US
    n_new = int(round(NEW_ITEM_FRACTION * sim.n_items))
    if n_new and sim.n_items > sim.list_size + n_new:  # keep enough items for a full first list
        new = rng.choice(sim.n_items, size=n_new, replace=False)
        offsets[new] = rng.uniform(0.0, sim.days, size=n_new) * _DAY_US
    return (start_us + offsets).astype(np.int64)


def _favourite_categories(
    rng: np.random.Generator, n_users: int, cat_share: np.ndarray
) -> np.ndarray:
    """[n_users, 3] distinct favourite categories (1-3 per user, -1 pads), biased to big ones."""
    n_cat = cat_share.shape[0]
    # Gumbel top-k samples distinct categories with probabilities proportional to cat_share.
    keys = np.log(cat_share)[None, :] + rng.gumbel(size=(n_users, n_cat))
    top = np.argsort(-keys, axis=1)[:, :3]
    if n_cat < 3:
        top = np.pad(top, ((0, 0), (0, 3 - n_cat)), constant_values=-1)
    n_fav = np.minimum(rng.integers(1, 4, size=n_users), n_cat)
    top[np.arange(3)[None, :] >= n_fav[:, None]] = -1
    return top
